"""Large N without traps (pyrgd.plan, the budgeted tracker, lr='auto' without copies, chunked finiteness checks):
the planner's parts, its refusal before anything large is allocated, `pyrgd train --dry-run`, the tracker's
budget and routes, and that no estimate is labelled a certificate."""
import json
import math
import tracemalloc

import numpy as np
import pytest

import pyrgd
from pyrgd import plan as P
from pyrgd.activations import parse_activation
from pyrgd.cli import EXIT_RESOURCES, main
from pyrgd.errors import PyrgdError, ResourceError
from pyrgd.tracker import Tracker

pytest.importorskip("pyrgd._cpu", reason="the C++ extension pyrgd._cpu is not built")
ACT = parse_activation("smooth_leaky_relu(0.2)")


def test_plan_parts_add_up_and_follow_the_settings():
    p = P.plan_run(4096, 64, [4096, 64, 32, 10], "float32", ACT, "cpu", "auto", 0.01, 100, 200, timing=False)
    names = [q.name for q in p.parts]
    assert names == ["data", "weights", "step", "tracking"]  # no lr part with a given lr
    assert p.part("data").bytes == 4096 * (64 + 10) * 4
    w = (64 * 4096 + 4096 * 64 + 64 * 32 + 32 * 10) * 4
    assert p.part("weights").bytes == 3 * w  # the last finite and the initial weights (certificates are tracked)
    assert p.method == "rows" and p.part("step").bytes > w  # the gradients and the workspace
    assert p.total_bytes == sum(q.bytes for q in p.parts)
    off = P.plan_run(4096, 64, [4096, 64, 32, 10], "float32", ACT, "cpu", "neurons", "auto", 0, 200, timing=False)
    assert off.tracking_route == "off" and off.part("weights").bytes == 2 * w and off.part("tracking").bytes == 0
    assert off.part("step").bytes == 2 * 4096 * 64 * 4  # H and G (the cpu tail is one streamed pass)
    assert "lr" in [q.name for q in off.parts]


def test_tracking_route_by_memory():
    """The exact route where the N x N Gram and eigvalsh fit in the step's own memory, else the estimate."""
    small = P.plan_run(128, 64, [2048, 32, 1], "float64", ACT, "cpu", timing=False)
    assert small.tracking_route == "exact"
    big = P.plan_run(20000, 16, [20000, 8, 1], "float32", ACT, "cpu", timing=False)
    assert big.tracking_route == "estimate"
    assert big.part("tracking").bytes <= big.part("data").bytes + big.part("weights").bytes + big.part("step").bytes
    assert P.plan_run(20000, 16, [20000, 8, 1], "float32", ACT, "cpu", route="exact",
                      timing=False).tracking_route == "exact"


def test_the_plan_refuses_naming_the_part_without_allocating():
    """N = 1e10 samples would need hundreds of GiB: ResourceError names the largest part, its size, the memory
    available and the setting to change; planning allocated next to nothing."""
    tracemalloc.start()
    p = P.plan_run(10 ** 10, 16, [100, 8, 1], "float32", ACT, "cpu", "auto", "auto", timing=False)
    with pytest.raises(ResourceError) as e:
        p.check()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    msg = str(e.value)
    assert "does not fit in memory" in msg and "available" in msg and "largest part is lr" in msg
    assert "train.lr = a number" in msg and "GiB" in msg
    assert peak < 1 << 20
    assert isinstance(e.value, PyrgdError)


def test_train_refuses_a_run_that_does_not_fit(monkeypatch):
    """With 1 MiB available, train() refuses before the engine exists; the weights are untouched."""
    monkeypatch.setattr(P, "available_memory", lambda backend: (1 << 20, "host"))
    net = pyrgd.PyramidalNet(8, [4096, 8, 1], seed=0)
    X = np.random.default_rng(0).standard_normal((256, 8))
    Y = np.zeros((256, 1))
    before = [w.copy() for w in net.weights]
    with pytest.raises(ResourceError, match="the largest part is"):
        pyrgd.train(net, X, Y, lr=0.01, steps=3, progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(before, net.weights))


def test_cli_dry_run_prints_the_plan_and_exit_3_when_it_does_not_fit(capsys):
    assert main(["train", "--N", "64", "--widths", "256,8,1", "--dry-run", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["N"] == 64 and {p["name"] for p in d["parts"]} >= {"data", "weights", "step", "tracking"}
    assert main(["train", "--N", "64", "--widths", "256,8,1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("plan: N = 64") and "total" in out
    tracemalloc.start()
    rc = main(["train", "--N", str(10 ** 10), "--widths", "64,8,1", "--lr", "0.1", "--no-progress"])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert rc == EXIT_RESOURCES and peak < 8 << 20
    assert "does not fit in memory" in capsys.readouterr().err


def test_cli_track_every_zero_and_auto(tmp_path, capsys):
    """`--track-every 0` turns tracking off (as the docs say); 'auto' is the default."""
    assert main(["train", "--N", "32", "--widths", "128,4,1", "--steps", "3", "--lr", "0.01", "--track-every", "0",
                 "--no-progress", "--json", "--out", str(tmp_path / "r")]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["tracking"]["every"] == 0 and s["tracking"]["certificates"] == 0
    assert s["plan"]["tracking_route"] == "off"
    assert pyrgd.config.resolve_config()["train"]["track_every"] == "auto"


def test_estimate_route_is_never_a_certificate():
    net = pyrgd.PyramidalNet(6, [300, 8, 1], activation="smooth_leaky_relu(0.2)", seed=1)
    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((40, 6)) / 6 ** 0.5, rng.standard_normal((40, 1))
    r = pyrgd.train(net, X, Y, lr=1e-3, steps=6, track_every=2, track_route="estimate", progress=False)
    c = r.certificates
    assert c["step"] == [0, 2, 4, 6] and set(c["route"]) == {"estimate"}
    assert all(math.isnan(v) for v in c["certified_factor"])
    assert all(math.isnan(v) for v in r.history["envelope"])
    assert all(v > 0 for v in c["sigma_min_F1"]) and "certifies nothing" in r.summary["tracking"]["how"] or \
        "no factor is certified" in r.summary["tracking"]["how"]
    exact = pyrgd.train(net.copy(), X, Y, lr=1e-3, steps=0, track_every=1, track_route="exact", progress=False)
    assert exact.certificates["route"] == ["exact"] and 0 < exact.certificates["certified_factor"][0] < 1


def _tracker(every="auto", route="exact", step_flops=1e9):
    X = np.zeros((100, 4))
    W = [np.zeros((4, 200)), np.zeros((200, 2))]
    return Tracker(X, W, W, ACT, [1.0], 1e-3, "cpu", every, route=route, step_flops=step_flops, fraction=0.1)


def test_auto_tracking_stays_within_its_share_of_the_time():
    """'auto' takes a certificate only when the time spent on certificates, the next one included (the last one's
    measured cost), stays within 10% of the steps' time."""
    t = _tracker()
    t._last_cost = 1.0
    assert not t.due(0, 1.0, 0.0, 0)  # nothing earned yet
    assert not t.due(5, 1.0, 9.0, 5)  # 10% of 9 s is below 1 s
    assert t.due(5, 1.0, 10.5, 5)
    t.seconds = 1.0
    assert not t.due(9, 1.0, 15.0, 9) and t.due(12, 1.0, 20.0, 12)
    assert not t.due(12, float("nan"), 1e6, 12)  # no certificate of a diverged run
    fixed = _tracker(every=3)
    assert [k for k in range(7) if fixed.due(k, 1.0)] == [0, 3, 6]
    assert not _tracker(every=0).due(0, 1.0, 1e9, 1)


def test_auto_estimate_route_sizes_its_iterations_to_the_room():
    t = _tracker(route="estimate")
    t._last_cost = 0.01  # one K V product
    assert not t.due(3, 1.0, 0.3, 3)  # room for 3 products: below the minimum of 3 iterations + 2
    assert t.due(3, 1.0, 1.0, 3) and t._iters == 8


def test_first_estimate_runs_the_fewest_iterations():
    """Before any cost is measured the estimate route takes MIN_ESTIMATE_ITERS iterations, however much room the
    prediction leaves; afterwards the measured cost sizes them."""
    from pyrgd.tracker import MIN_ESTIMATE_ITERS

    t = _tracker(route="estimate")
    assert t.due(100, 1.0, 10.0, 100) and t._iters == MIN_ESTIMATE_ITERS
    t._last_cost = 0.01
    assert t.due(100, 1.0, 10.0, 100) and t._iters > MIN_ESTIMATE_ITERS


@pytest.mark.parametrize("rows", [None, 512])
def test_auto_lr_copies_no_x(rows):
    """lr='auto' runs in the working dtype, on all rows or on subsets: its peak allocation stays far below one copy
    of X."""
    from pyrgd.lr_rule import estimate_lambda_max

    import scipy.sparse.linalg  # noqa: F401  (imported before tracing: its import is not the rule's memory)

    rng = np.random.default_rng(0)
    X = rng.standard_normal((20000, 256)).astype(np.float32) / 16
    W = [rng.standard_normal((256, 64)).astype(np.float32) / 16, rng.standard_normal((64, 4)).astype(np.float32) / 8,
         rng.standard_normal((4, 1)).astype(np.float32) / 2]
    tracemalloc.start()
    lam = estimate_lambda_max(X, W, ACT, [1.0, 1.0], "cpu", iters=3, rows=rows)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert lam > 0 and peak < X.nbytes / 4, (peak, X.nbytes)


def test_auto_lr_float32_agrees_with_float64():
    from pyrgd.lr_rule import estimate_lambda_max

    net, X = pyrgd.PyramidalNet(16, [512, 8, 1], seed=3), np.random.default_rng(3).standard_normal((64, 16)) / 4
    lam64 = estimate_lambda_max(X, net.weights, ACT, net.multipliers, "cpu")
    lam32 = estimate_lambda_max(X.astype(np.float32), [w.astype(np.float32) for w in net.weights], ACT,
                                net.multipliers, "cpu")
    assert lam32 == pytest.approx(lam64, rel=1e-3)


@pytest.mark.parametrize("act, d, widths", [("smooth_leaky_relu(0.2)", 32, [512, 16, 4]), ("relu", 8, [256, 8, 1]),
                                             ("tanh", 4, [256, 8, 1])])
def test_auto_lr_extrapolates_from_subsamples_past_its_rows(monkeypatch, act, d, widths):
    """Past AUTO_LR_ROWS samples lambda_max comes from two nested subsets (only their rows go through the
    products), lands near the full Lanczos value and never below the larger subset's value (a lower bound)."""
    from pyrgd.backends import cpu as be
    from pyrgd.lr_rule import estimate_lambda_max

    N = 2048
    rng = np.random.default_rng(5)
    X = rng.standard_normal((N, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    net = pyrgd.PyramidalNet(d, widths, activation=act, seed=2)
    a = net.activation
    full = estimate_lambda_max(X, net.weights, a, net.multipliers, "cpu", rows=None)
    seen = []
    real = be.network_gradients
    monkeypatch.setattr(be, "network_gradients", lambda X_, *r: seen.append(X_.shape[0]) or real(X_, *r))
    est = estimate_lambda_max(X, net.weights, a, net.multipliers, "cpu", rows=256)
    assert set(seen) == {64, 256}  # the products saw the subsets only
    assert est == estimate_lambda_max(X, net.weights, a, net.multipliers, "cpu", rows=256)  # same subsets
    idx = np.sort(np.random.default_rng(0).permutation(N)[:256])
    lower = estimate_lambda_max(X[idx], net.weights, a, net.multipliers, "cpu", rows=None)
    assert est >= lower
    assert 0.85 * full <= est <= 1.25 * full, (est / full)
    scaled = lower * N / 256  # the naive rule: one subset scaled by N / |S|
    assert abs(est / full - 1) <= abs(scaled / full - 1) + 0.02


def test_finiteness_is_checked_in_chunks():
    from pyrgd._validate import FINITE_CHUNK, all_finite

    a = np.ones((3000, 700))
    tracemalloc.start()
    assert all_finite(a)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 * FINITE_CHUNK * 8 < a.nbytes / 4
    a[-1, -1] = np.inf
    assert not all_finite(a)
    a[-1, -1] = 1.0
    a[0, 0] = np.nan
    assert not all_finite(a)


class _CountingXp:
    """A NumPy stand-in for CuPy that counts the results read back to the host (bool() of a device value)."""

    class Value:
        def __init__(self, xp, a):
            self.xp, self.a = xp, a

        def all(self):
            return _CountingXp.Value(self.xp, self.a.all())

        def __bool__(self):
            self.xp.reads += 1
            return bool(self.a)

    def __init__(self):
        self.reads = 0

    def isfinite(self, a):
        return self.Value(self, np.isfinite(a))

    def stack(self, parts):
        return self.Value(self, np.stack([p.a for p in parts]))


@pytest.mark.parametrize("bad", [None, 0, 6, 7, 8, 22])
def test_device_finiteness_check_reads_back_once(bad):
    """On a GPU the chunks' results stay on the device and come back once, whichever chunk holds the bad value."""
    from pyrgd._validate import device_all_finite

    flat = np.arange(23.0)
    if bad is not None:
        flat[bad] = np.nan if bad % 2 else -np.inf
    xp = _CountingXp()
    assert device_all_finite(flat, xp, chunk=7) == (bad is None)
    assert xp.reads == 1


def test_certified_route_certifies_a_lower_bound():
    """The certified route's sigma_min(F_1) is at most the exact one, its factor a certificate at least the exact
    route's factor (a smaller mu certifies a weaker contraction)."""
    net = pyrgd.PyramidalNet(20, [400, 8, 1], activation="smooth_leaky_relu(0.2)", seed=2)
    rng = np.random.default_rng(2)
    X, Y = rng.standard_normal((60, 20)) / 20 ** 0.5, rng.standard_normal((60, 1))
    runs = {r: pyrgd.train(net.copy(), X, Y, lr=1e-3, steps=2, track_every=1, track_route=r, progress=False)
            for r in ("exact", "certified")}
    ex, ce = runs["exact"].certificates, runs["certified"].certificates
    assert ce["route"] == ["certified"] * 3
    for k in range(3):
        assert 0 < ce["sigma_min_F1"][k] <= ex["sigma_min_F1"][k] * (1 + 1e-9)
        assert ce["sigma_min_F1"][k] >= 0.5 * ex["sigma_min_F1"][k]  # within a factor 2 of lambda_min ** 0.5
        assert ex["certified_factor"][k] <= ce["certified_factor"][k] < 1
    assert "certified lower bound" in runs["certified"].summary["tracking"]["how"]


def test_first_certificate_waits_for_twice_its_predicted_cost():
    """Before any certificate has been measured its cost comes from flops at the rate the steps achieved; the
    tracker then asks for twice that much room."""
    t = _tracker(route="exact", step_flops=1e9)
    predicted = t._predicted_cost(1e10)  # 1000 steps of 1e9 flops in 100 s
    assert predicted > 0
    t.seconds = 0.1 * 100 - 1.5 * predicted  # room for 1.5 predicted costs
    assert not t.due(1000, 1.0, 100.0, 1000)
    t.seconds = 0.1 * 100 - 2.5 * predicted
    assert t.due(1000, 1.0, 100.0, 1000)
    t._last_cost = predicted  # once measured, the measured cost alone
    t.seconds = 0.1 * 100 - 1.5 * predicted
    assert t.due(1000, 1.0, 100.0, 1000)
