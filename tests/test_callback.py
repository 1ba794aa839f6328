"""The callback of pyrgd.train: one read-only record per step, stopping by True or StopTraining (status
stopped_by_callback, run folder and checkpoint written, resumable bit for bit), other exceptions propagate."""
import json

import numpy as np
import pytest

import pyrgd
from pyrgd.checkpoint import load_checkpoint
from pyrgd.errors import PyrgdError
from pyrgd.stop_rules import StopRules

pytest.importorskip("pyrgd._cpu", reason="the C++ extension pyrgd._cpu is not built")


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    net = pyrgd.PyramidalNet(6, [128, 8, 1], activation="smooth_leaky_relu(0.2)", seed=seed)
    return net, rng.standard_normal((32, 6)), rng.standard_normal((32, 1))


@pytest.mark.parametrize("update", ["gd", "nesterov"])
def test_records_are_the_history_rows_read_only(update):
    net, X, Y = _problem()
    seen = []

    def cb(rec):
        with pytest.raises(TypeError):
            rec["loss"] = 0.0  # read-only
        seen.append(dict(rec))

    res = pyrgd.train(net, X, Y, lr=1e-3, steps=7, progress=False, callback=cb, track_every=0, update=update)
    assert res.status == "max_steps" and len(seen) == 7  # after each of the 7 steps
    for k, rec in enumerate(seen):
        assert rec["step"] == k and rec["lr"] == 1e-3
        for key, col in res.history.items():
            np.testing.assert_equal(rec[key], col[k])  # nan == nan here
        assert np.isfinite(rec["grad_norm_1"]) and rec["grad_norm_1"] > 0
    assert set(seen[0]) == set(res.history) | {"lr"}


@pytest.mark.parametrize("how", ["true", "raise"])
def test_callback_stops_the_run_and_it_is_saved(tmp_path, how):
    """Stopped after step 3: the weights of step 4 are evaluated and recorded, the run folder and the checkpoint
    are written with status stopped_by_callback."""
    net, X, Y = _problem()

    def cb(rec):
        if rec["step"] == 3:
            if how == "true":
                return True
            raise pyrgd.StopTraining("enough")
        return None

    res = pyrgd.train(net.copy(), X, Y, lr=1e-3, steps=50, progress=False, callback=cb, track_every=0,
                      out=tmp_path / "r")
    assert res.status == "stopped_by_callback" and res.summary["steps"] == 4
    assert res.message == "stopped by the callback after 4 steps" + (": enough" if how == "raise" else "")
    assert len(res.history["loss"]) == 5 and np.isnan(res.history["grad_norm_1"][-1])
    summary = json.load(open(tmp_path / "r" / "summary.json"))
    assert summary["status"] == "stopped_by_callback" and summary["steps"] == 4
    assert load_checkpoint(tmp_path / "r")[1]["step"] == 4
    F = res.net.forward(X, backend="reference")
    assert 0.5 * float(((F - Y) ** 2).sum()) == pytest.approx(res.history["loss"][-1], rel=1e-12)


@pytest.mark.parametrize("update", ["gd", "momentum"])
def test_a_run_stopped_by_its_callback_resumes_bit_for_bit(tmp_path, update):
    net, X, Y = _problem()
    kw = dict(lr=1e-3, progress=False, track_every=0, update=update)
    full = pyrgd.train(net.copy(), X, Y, steps=9, **kw)
    pyrgd.train(net.copy(), X, Y, steps=9, out=tmp_path / "r", callback=lambda r: r["step"] == 4, **kw)
    again = pyrgd.train(net.copy(), X, Y, steps=9, out=tmp_path / "r", resume=tmp_path / "r", **kw)
    assert again.status == "max_steps"
    assert again.history["loss"] == full.history["loss"]
    assert all(np.array_equal(a, b) for a, b in zip(again.net.weights, full.net.weights))


def test_only_true_stops_and_other_exceptions_propagate():
    net, X, Y = _problem()
    for said in (None, False, 1, "yes", np.False_):
        res = pyrgd.train(net.copy(), X, Y, lr=1e-3, steps=3, progress=False, track_every=0,
                          callback=lambda r, s=said: s)
        assert res.status == "max_steps"
    res = pyrgd.train(net.copy(), X, Y, lr=1e-3, steps=3, progress=False, track_every=0,
                      callback=lambda r: np.True_)
    assert res.status == "stopped_by_callback" and res.summary["steps"] == 1

    def boom(rec):
        raise ValueError("from the callback")

    with pytest.raises(ValueError, match="from the callback"):
        pyrgd.train(net.copy(), X, Y, lr=1e-3, steps=3, progress=False, callback=boom)
    with pytest.raises(PyrgdError, match="callback: expected None or a function"):
        pyrgd.train(net.copy(), X, Y, lr=1e-3, steps=3, progress=False, callback=3)


def test_the_limits_come_before_the_callback():
    """A converged or exhausted run says so even when the callback asked to stop at the same step."""
    r = StopRules(steps=10, rel_tol=1e-2)
    assert r.check(4, 0.5, 1.0, callback="") == ("stopped_by_callback", "stopped by the callback after 4 steps")
    assert r.check(4, 0.5, 1.0, callback="why") == ("stopped_by_callback", "stopped by the callback after 4 steps: why")
    assert r.check(4, 1e-3, 1.0, callback="")[0] == "converged"
    assert r.check(10, 0.5, 1.0, callback="")[0] == "max_steps"
    assert r.check(4, float("nan"), 1.0, callback="")[0] == "diverged"
    net, X, Y = _problem()
    res = pyrgd.train(net, X, Y, lr=1e-3, steps=2, progress=False, track_every=0, callback=lambda r: True)
    assert res.status == "stopped_by_callback" and res.summary["steps"] == 1
