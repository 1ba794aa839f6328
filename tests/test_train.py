"""The trainer: geometric convergence, stop rules, determinism, the auto step size, tracking, bad input."""
import math
import signal

import numpy as np
import pytest

import pyrgd
from pyrgd import PyramidalNet, PyrgdError
from pyrgd.backends import reference as R
from pyrgd.tail import tail_backward
from pyrgd.lr_rule import estimate_lambda_max
from pyrgd.lr_rule import full_forward as _full_forward

BACKENDS = ["reference", "cpu"]


def problem(N=32, d=16, widths=(512, 8, 1), act="smooth_leaky_relu(0.2)", dtype="float64", seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, d)).astype(dtype)
    Y = rng.standard_normal((N, widths[-1])).astype(dtype)
    return PyramidalNet(d, list(widths), activation=act, seed=seed, dtype=dtype), X, Y


@pytest.mark.parametrize("backend", BACKENDS)
def test_converges_geometrically_in_float64(backend):
    net, X, Y = problem()
    r = pyrgd.train(net, X, Y, steps=3000, rel_tol=1e-10, track_every=100, backend=backend, progress=False)
    assert r.status == "converged", r.message
    loss = np.array(r.history["loss"])
    assert loss[-1] <= 1e-10 * loss[0]
    # geometric: after the first quarter, every window of 20 steps contracts by a comparable factor
    k = len(loss)
    logs = np.log(loss[k // 4:])
    slopes = [(logs[i + 20] - logs[i]) / 20 for i in range(0, len(logs) - 20, 20)]
    assert max(slopes) < 0 and max(slopes) / min(slopes) > 0.2
    assert r.summary["median_factor"] < 1
    assert r.summary["backend"] == backend


def test_cpu_and_reference_trajectories_agree():
    net, X, Y = problem(N=16, widths=(200, 6, 2))
    a = pyrgd.train(net.copy(), X, Y, lr=0.01, steps=60, backend="reference", track_every=0, progress=False)
    b = pyrgd.train(net.copy(), X, Y, lr=0.01, steps=60, backend="cpu", track_every=0, progress=False)
    assert np.allclose(a.history["loss"], b.history["loss"], rtol=1e-10, atol=0)
    for wa, wb in zip(a.net.weights, b.net.weights):
        assert np.allclose(wa, wb, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeat_runs_are_bit_identical(backend):
    net, X, Y = problem(N=16, widths=(200, 6, 1), dtype="float32")
    runs = [pyrgd.train(net.copy(), X, Y, lr=0.01, steps=40, backend=backend, track_every=0, progress=False)
            for _ in range(2)]
    assert runs[0].history["loss"] == runs[1].history["loss"]
    assert all(np.array_equal(a, b) for a, b in zip(runs[0].net.weights, runs[1].net.weights))


def test_trains_in_place_and_returns_host_arrays():
    net, X, Y = problem(N=8, widths=(64, 1))
    w0 = net.weights[0].copy()
    r = pyrgd.train(net, X, Y, lr=0.01, steps=5, backend="reference", track_every=0, progress=False)
    assert r.net is net and not np.array_equal(net.weights[0], w0)
    assert r.status == "max_steps" and r.summary["steps"] == 5 and len(r.history["loss"]) == 6
    assert all(len(v) == 6 for v in r.history.values())


def test_one_step_is_gradient_descent():
    net, X, Y = problem(N=8, widths=(40, 4, 2), act="tanh")
    W = [w.copy() for w in net.weights]
    cache = _full_forward(X, W, net.activation, net.multipliers, "reference")
    loss0, G, tail = tail_backward(cache, Y, W, net.activation, net.multipliers)
    g1, g2 = R.gradients(X, W[0], W[1], G, net.activation, 1.0)
    r = pyrgd.train(net, X, Y, lr=0.03, steps=1, backend="reference", track_every=0, progress=False)
    for w, g, new in zip(W, [g1, g2] + tail, r.net.weights):
        assert np.allclose(new, w - 0.03 * g, rtol=1e-13, atol=1e-15)
    assert r.history["loss"][0] == pytest.approx(float(loss0), rel=1e-14)
    assert r.history["grad_norm_3"][0] == pytest.approx(float(np.linalg.norm(tail[0])), rel=1e-12)
    assert r.history["grad_norm_1"][0] == pytest.approx(float(np.linalg.norm(g1)), rel=1e-12)


def test_stop_rules():
    net, X, Y = problem(N=8, widths=(64, 4, 1))
    r = pyrgd.train(net.copy(), X, Y, lr=1e3, steps=200, backend="reference", track_every=0, progress=False)
    assert r.status == "diverged" and "smaller lr" in r.message
    r = pyrgd.train(net.copy(), X, Y, lr=0.01, steps=10 ** 6, time_budget=0.3, backend="reference",
                    track_every=0, progress=False)
    assert r.status == "time_budget" and 0 < r.summary["steps"] < 10 ** 6
    phi0 = r.history["loss"][0]
    r = pyrgd.train(net.copy(), X, Y, lr=0.01, steps=10 ** 6, tol=0.5 * phi0, backend="reference",
                    track_every=0, progress=False)
    assert r.status == "converged" and r.history["loss"][-1] <= 0.5 * phi0 < r.history["loss"][-2]


def test_ctrl_c_stops_at_a_step_boundary_and_writes_the_run(tmp_path, monkeypatch):
    import pyrgd.backends.reference as reference

    net, X, Y = problem(N=8, widths=(64, 4, 1))
    real_step, calls = reference.step, []

    def step_then_interrupt(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            signal.raise_signal(signal.SIGINT)
        return real_step(*a, **k)

    monkeypatch.setattr(reference, "step", step_then_interrupt)
    r = pyrgd.train(net, X, Y, lr=0.01, steps=1000, backend="reference", track_every=0, progress=False,
                    out=tmp_path / "run")
    assert r.status == "interrupted" and r.summary["steps"] == 5
    assert (tmp_path / "run" / "summary.json").exists() and (tmp_path / "run" / "weights.npz").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_auto_lr_is_inverse_largest_ntk_eigenvalue():
    net, X, _ = problem(N=12, d=5, widths=(60, 4, 1), act="tanh")
    W, act, m = net.weights, net.activation, net.multipliers
    F = _full_forward(X, W, act, m, "reference")[-1]
    J = []
    for i in range(X.shape[0]):  # explicit Jacobian, one backward pass per sample
        u = np.zeros_like(F)
        u[i, 0] = 1.0
        cache = _full_forward(X, W, act, m, "reference")
        _, G, tail = tail_backward(cache, F - u, W, act, m)
        g1, g2 = R.gradients(X, W[0], W[1], G, act, 1.0)
        J.append(np.concatenate([g.ravel() for g in [g1, g2] + tail]))
    J = np.array(J)
    lam = np.linalg.eigvalsh(J @ J.T)[-1]
    assert estimate_lambda_max(X, W, act, m, "reference", iters=60, rtol=0) == pytest.approx(lam, rel=1e-4)
    r = pyrgd.train(net, X, np.zeros((12, 1)) + 1.0, steps=0, backend="reference", track_every=0, progress=False)
    assert r.lr == pytest.approx(0.5 / lam, rel=1e-2) and "lambda_max" in r.summary["lr_rule"]


def test_tracking_certificates_match_direct_computation():
    net, X, Y = problem(N=10, d=6, widths=(80, 5, 3), act="leaky_relu(0.2)")
    r = pyrgd.train(net.copy(), X, Y, lr=0.005, steps=30, backend="reference", track_every=10, progress=False)
    c = r.certificates
    assert c["step"] == [0, 10, 20, 30]
    # replay to step 10 and recompute from the weights
    r10 = pyrgd.train(net.copy(), X, Y, lr=0.005, steps=10, backend="reference", track_every=0, progress=False)
    W = r10.net.weights
    F1 = net.activation.sigma(X @ W[0])
    s_f1 = np.linalg.svd(F1, compute_uv=False)[-1]
    s_w3 = np.linalg.svd(W[2], compute_uv=False)
    assert c["sigma_min_F1"][1] == pytest.approx(s_f1, rel=1e-8)
    assert c["sigma_min_W3"][1] == pytest.approx(s_w3[-1], rel=1e-12)
    assert c["norm_W3"][1] == pytest.approx(s_w3[0], rel=1e-12)
    assert c["mu"][1] == pytest.approx((s_f1 * 0.2 * s_w3[-1]) ** 2, rel=1e-8)
    assert c["certified_factor"][1] == pytest.approx(1 - 0.005 * c["mu"][1], rel=1e-12)
    assert c["dist_W2"][1] == pytest.approx(np.linalg.norm(W[1] - net.weights[1]), rel=1e-12)
    assert c["dist_W1"][0] == 0.0


def test_pl_inequality_holds_along_the_trajectory():
    """||grad_{W2} Phi|| >= sqrt(2 mu_k Phi_k) at every tracked step (THEORY 4.1): an independent check of mu."""
    net, X, Y = problem(N=16, d=8, widths=(256, 6, 4, 2), act="smooth_leaky_relu(0.3)")
    r = pyrgd.train(net, X, Y, steps=200, backend="reference", track_every=20, progress=False)
    for k, mu in zip(r.certificates["step"], r.certificates["mu"]):
        assert mu > 0
        if k < r.summary["steps"]:
            assert r.history["grad_norm_2"][k] >= math.sqrt(2 * mu * r.history["loss"][k]) * (1 - 1e-9)


def test_envelope_and_unavailable_certificates():
    net, X, Y = problem(N=16, widths=(256, 6, 1), act="smooth_leaky_relu(0.2)")
    r = pyrgd.train(net, X, Y, steps=100, backend="reference", track_every=10, progress=False)
    env, loss = np.array(r.history["envelope"]), np.array(r.history["loss"])
    assert env[0] == loss[0] and np.all(np.isfinite(env)) and np.all(np.diff(env) <= 0)
    net, X, Y = problem(N=16, widths=(256, 6, 1), act="relu")  # no lower bound on relu' in a deep tail
    r = pyrgd.train(net, X, Y, steps=20, backend="reference", track_every=10, progress=False)
    assert all(math.isnan(m) for m in r.certificates["mu"]) and all(math.isnan(e) for e in r.history["envelope"])


def test_warns_when_first_layer_is_narrow():
    net, X, Y = problem(N=40, widths=(20, 1))
    with pytest.warns(UserWarning, match="n_1 = 20 < N = 40"):
        pyrgd.train(net, X, Y, lr=0.01, steps=1, backend="reference", track_every=0, progress=False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(X="x"), "X: expected a numpy.ndarray"),
    (dict(X=np.zeros((8, 3))), r"X: expected shape \(any, 16\)"),
    (dict(X=np.zeros((8, 16), dtype=np.float32)), "X: expected dtype float64"),
    (dict(Y=np.zeros((7, 1))), r"Y: expected shape \(8, 1\)"),
    (dict(Y=np.full((8, 1), np.nan)), "Y: contains NaN"),
    (dict(lr=-1.0), "lr: expected a positive number"),
    (dict(lr="fast"), "lr: expected a positive number or 'auto'"),
    (dict(steps=-3), "steps: expected a non-negative integer"),
    (dict(steps=2.5), "steps: expected a non-negative integer"),
    (dict(track_every=-1), "track_every: expected a non-negative integer"),
    (dict(backend="gpu"), "backend: expected one of"),
    (dict(rel_tol=-1.0), "rel_tol: expected a non-negative number"),
    (dict(net="net"), "net: expected a pyrgd.PyramidalNet"),
])
def test_bad_input(kwargs, match):
    net, X, Y = problem(N=8, widths=(64, 4, 1))
    args = dict(net=net, X=X, Y=Y, lr=0.01, steps=3, backend="reference", progress=False)
    args.update(kwargs)
    with pytest.raises(PyrgdError, match=match):
        pyrgd.train(**args)


def test_certificate_rows_pair_with_the_step_they_bound():
    """certificates["observed_factor"] at tracked step k is Phi_{k+1}/Phi_k (the step the PL certificate at k
    bounds), nan at a tracked step that no step followed; the envelope multiplies the latest certified factor."""
    net, X, Y = problem(N=16, widths=(300, 1))
    r = pyrgd.train(net, X, Y, lr=1e-3, steps=10, track_every=5, backend="cpu", progress=False)
    loss, c = r.history["loss"], r.certificates
    assert r.status == "max_steps" and loss[-1] < loss[0]
    assert c["step"] == [0, 5, 10]
    for k, obs in zip(c["step"][:2], c["observed_factor"][:2]):
        assert obs == pytest.approx(loss[k + 1] / loss[k], rel=1e-14)
    assert math.isnan(c["observed_factor"][2])
    env = r.history["envelope"]
    assert env[0] == loss[0] and env[1] == pytest.approx(loss[0] * c["certified_factor"][0], rel=1e-14)
    assert env[6] == pytest.approx(env[5] * c["certified_factor"][1], rel=1e-14)


def test_threads_option_sets_and_restores_the_thread_counts():
    """train(threads=1) runs the kernels and the BLAS on one thread (the summary says so), gives the same bits as
    two threads, and leaves both thread settings as they were; a bad count is refused with its name."""
    from threadpoolctl import threadpool_info

    from pyrgd.backends import cpu

    def blas_threads():
        return [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]

    net, X, Y = problem(N=16, widths=(200, 6, 1), dtype="float32")
    before, blas_before = cpu.get_num_threads(), blas_threads()
    runs = [pyrgd.train(net.copy(), X, Y, lr=0.01, steps=20, backend="cpu", track_every=0, progress=False,
                        threads=t) for t in (1, 2)]
    assert [r.summary["threads"] for r in runs] == [1, 2]
    assert runs[0].history["loss"] == runs[1].history["loss"]
    assert all(np.array_equal(a, b) for a, b in zip(runs[0].net.weights, runs[1].net.weights))
    assert cpu.get_num_threads() == before and blas_threads() == blas_before
    for bad in (-1, 1.5, "2"):
        with pytest.raises(PyrgdError, match="threads"):
            pyrgd.train(net.copy(), X, Y, lr=0.01, steps=1, backend="cpu", progress=False, threads=bad)


def test_method_option_chooses_the_gd_step():
    """train(method=...) runs that GDStep method (the summary says which, and how many neurons the rows method
    keeps); rows and neurons give the same trajectory; a bad method, or rows off the cpu backend, is refused."""
    net, X, Y = problem(N=16, widths=(200, 6, 1))
    runs = {m: pyrgd.train(net.copy(), X, Y, lr=0.01, steps=30, backend="cpu", track_every=0, progress=False,
                           method=m) for m in ("auto", "rows", "neurons")}
    assert [runs[m].summary["method"] for m in ("auto", "rows", "neurons")] == ["rows", "rows", "neurons"]
    assert runs["rows"].summary["kept_neurons"] == 200 and runs["neurons"].summary["kept_neurons"] is None
    assert runs["auto"].history["loss"] == runs["rows"].history["loss"]
    assert np.allclose(runs["rows"].history["loss"], runs["neurons"].history["loss"], rtol=1e-10, atol=0)
    for wa, wb in zip(runs["rows"].net.weights, runs["neurons"].net.weights):
        assert np.allclose(wa, wb, rtol=1e-10, atol=1e-13)
    with pytest.raises(PyrgdError, match="method: expected one of auto, rows, neurons, got 'columns'"):
        pyrgd.train(net.copy(), X, Y, lr=0.01, steps=1, backend="cpu", progress=False, method="columns")
    with pytest.raises(PyrgdError, match="method: 'rows' needs the cpu backend"):
        pyrgd.train(net.copy(), X, Y, lr=0.01, steps=1, backend="reference", progress=False, method="rows")


@pytest.mark.parametrize("method", ["rows", "neurons"])
def test_divergence_keeps_the_last_finite_weights(method):
    """A step size far too large: the run stops as diverged and the net holds the weights of the step before, whose
    loss (recomputed) is the last finite one of the history."""
    net, X, Y = problem(N=32, widths=(256, 8, 1), dtype="float32", act="tanh")
    r = pyrgd.train(net, X, Y, lr=50.0, steps=200, track_every=0, progress=False, method=method,
                    divergence_factor=1e3)
    assert r.status == "diverged" and "keeps the weights of step" in r.message
    k = r.summary["steps"]
    assert all(np.isfinite(w).all() for w in r.net.weights)
    F = r.net.forward(X, backend="reference")
    loss = 0.5 * float(((F.astype(np.float64) - Y) ** 2).sum())
    assert loss == pytest.approx(r.history["loss"][k - 1], rel=1e-4)


def test_divergence_under_lr_auto_says_where_the_step_came_from(monkeypatch):
    """When lr='auto' chose the step that diverged, the message says so and proposes a smaller explicit one; a
    given lr gets no such note."""
    import importlib

    train_module = importlib.import_module("pyrgd.train")
    net, X, Y = problem(N=8, widths=(64, 4, 1))
    monkeypatch.setattr(train_module, "auto_lr", lambda *args: 1e3)  # as if the rule had chosen a step too large
    r = pyrgd.train(net.copy(), X, Y, lr="auto", steps=200, backend="reference", track_every=0, progress=False)
    assert r.status == "diverged" and r.lr == 1e3
    assert "lr = 1000 came from lr='auto'" in r.message and "give lr, e.g. 250" in r.message
    r = pyrgd.train(net.copy(), X, Y, lr=1e3, steps=200, backend="reference", track_every=0, progress=False)
    assert r.status == "diverged" and "lr='auto'" not in r.message


def test_lr_must_be_representable_in_the_dtype():
    net, X, Y = problem(dtype="float32")
    with pytest.raises(PyrgdError, match="lr: 1e\\+300 is inf in the net's dtype float32"):
        pyrgd.train(net, X, Y, lr=1e300, steps=1, progress=False)
    with pytest.raises(PyrgdError, match="lr: 1e-300 is 0.0 in the net's dtype float32"):
        pyrgd.train(net, X, Y, lr=1e-300, steps=1, progress=False)


def test_progress_bar_shows_the_factor_only_once_there_is_one(capsys):
    """The bar's postfix holds the loss from step 0 and the factor Phi_k / Phi_{k-1} from step 1 (no 'factor=nan'
    shown for step 0)."""
    net, X, Y = problem(N=8, widths=(64, 4, 1))
    pyrgd.train(net.copy(), X, Y, lr=1e-3, steps=10 ** 7, time_budget=0.8, backend="reference", track_every=0,
                progress=True)
    err = capsys.readouterr().err
    assert "loss=" in err and "factor=0." in err and "factor=nan" not in err
