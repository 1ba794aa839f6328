"""User losses of pyrgd.train (loss=fn): against a plain NumPy loop, the squared loss as a user loss, momentum
with a user loss, bad functions, refused arguments, certificates marked as not applying, resume."""
import json

import numpy as np
import pytest

import pyrgd
from pyrgd import losses, ops
from pyrgd.errors import PyrgdError
from pyrgd.losses import UserLossEngine

from _numpy_net import cross_entropy, reference_losses

pytest.importorskip("pyrgd._cpu", reason="the C++ extension pyrgd._cpu is not built")

BACKENDS = ["cpu", "reference"]


def _problem(dtype="float64", seed=0, n_out=3):
    rng = np.random.default_rng(seed)
    net = pyrgd.PyramidalNet(5, [160, 6, n_out], activation="tanh", seed=seed, dtype=dtype, multipliers=[1.2, 0.9])
    X = rng.standard_normal((36, 5)).astype(dtype)
    Y = np.eye(n_out, dtype=dtype)[rng.integers(0, n_out, 36)]  # one-hot
    return net, X, Y


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("update,beta,nesterov", [("gd", 0.0, False), ("momentum(0.9)", 0.9, False),
                                                  ("nesterov(0.7)", 0.7, True)])
def test_cross_entropy_matches_a_numpy_reference_loop(backend, update, beta, nesterov):
    net, X, Y = _problem()
    lr, steps = 0.02, 20
    want, W_ref = reference_losses(X, Y, net.weights, net.multipliers, lr, steps, beta=beta, nesterov=nesterov,
                                   loss=cross_entropy)
    res = pyrgd.train(net.copy(), X, Y, lr=lr, steps=steps, backend=backend, loss=losses.softmax_cross_entropy,
                      update=update, progress=False)
    assert res.status == "max_steps" and res.summary["loss"] == "user:softmax_cross_entropy"
    np.testing.assert_allclose(res.history["loss"], want, rtol=1e-10, atol=0)
    for got, ref in zip(res.net.weights, W_ref):
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)
    assert want[-1] < 0.9 * want[0]  # it learns


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("widths", [[96, 2], [96, 8, 4, 2]])
def test_the_squared_loss_as_a_user_loss_gives_the_default_run(backend, widths):
    rng = np.random.default_rng(1)
    net = pyrgd.PyramidalNet(4, widths, activation="smooth_leaky_relu(0.2)", seed=1)
    X, Y = rng.standard_normal((30, 4)), rng.standard_normal((30, widths[-1]))
    kw = dict(lr=5e-3, steps=15, backend=backend, progress=False, track_every=0)
    default = pyrgd.train(net.copy(), X, Y, **kw)
    user = pyrgd.train(net.copy(), X, Y, loss=losses.squared, **kw)
    np.testing.assert_allclose(user.history["loss"], default.history["loss"], rtol=1e-11)
    for key in ("grad_norm_1", "grad_norm_2"):
        np.testing.assert_allclose(user.history[key][:-1], default.history[key][:-1], rtol=1e-10)
    assert user.summary["method"] == "user_loss" and default.summary["loss"] == "squared"


def test_user_loss_engine_gradients_match_the_reference_gradients():
    rng = np.random.default_rng(2)
    net = pyrgd.PyramidalNet(4, [64, 5, 2], activation="softplus", seed=2)
    X, Y = rng.standard_normal((20, 4)), rng.standard_normal((20, 2))
    W = [w.copy() for w in net.weights]
    eng = UserLossEngine(ops.get_backend("cpu"), X, Y, W, net.activation, net.multipliers, losses.squared)
    got = eng.gradients()  # evaluates first
    want = ops.step_engine(X, Y, [w.copy() for w in W], activation="softplus", backend="reference").gradients()
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-13)


def _bad(kind):
    def fn(F, Y):
        if kind == "tuple":
            return 1.0
        if kind == "shape":
            return 1.0, (F - Y)[:, :1]
        if kind == "loss":
            return "x", F - Y
        if kind == "list":
            return 1.0, (F - Y).tolist()
        if kind == "write":
            F[0, 0] = 1.0
        return 1.0, F - Y
    return fn


@pytest.mark.parametrize("kind,match", [("tuple", r"loss: the function must return \(loss, dloss/dF_L\)"),
                                        ("shape", r"loss: the function's gradient has shape \(36, 1\), expected"),
                                        ("loss", "loss: the function's loss must be a real number"),
                                        ("list", "loss: the function's gradient must be a numpy array")])
def test_bad_user_losses(kind, match):
    net, X, Y = _problem()
    with pytest.raises(PyrgdError, match=match):
        pyrgd.train(net, X, Y, lr=0.01, steps=2, loss=_bad(kind), progress=False)


def test_the_output_given_to_the_loss_is_read_only():
    net, X, Y = _problem()
    with pytest.raises(ValueError, match="read-only"):
        pyrgd.train(net, X, Y, lr=0.01, steps=2, loss=_bad("write"), progress=False)


def test_refused_arguments_with_a_user_loss():
    net, X, Y = _problem()
    with pytest.raises(PyrgdError, match="lr: 'auto' is chosen for the squared loss; give a positive number"):
        pyrgd.train(net, X, Y, loss=losses.softmax_cross_entropy, progress=False)
    with pytest.raises(PyrgdError, match="method: 'rows' is a GD step method of the squared loss"):
        pyrgd.train(net, X, Y, lr=0.01, method="rows", loss=losses.softmax_cross_entropy, progress=False)
    with pytest.raises(PyrgdError, match="loss: expected None .* or a function"):
        pyrgd.train(net, X, Y, lr=0.01, loss="cross_entropy", progress=False)


def test_a_non_finite_user_loss_diverges_keeping_the_last_finite_weights():
    net, X, Y = _problem()
    calls = []

    def fn(F, Y):
        calls.append(1)
        loss, dF = losses.softmax_cross_entropy(F, Y)
        return (float("nan") if len(calls) == 4 else loss), dF

    res = pyrgd.train(net.copy(), X, Y, lr=0.01, steps=10, loss=fn, progress=False)
    assert res.status == "diverged" and len(res.history["loss"]) == 4
    ref = pyrgd.train(net.copy(), X, Y, lr=0.01, steps=2, loss=losses.softmax_cross_entropy, progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(res.net.weights, ref.net.weights))  # the weights of step 2


def test_certificates_are_marked_as_not_applying(tmp_path):
    net, X, Y = _problem()
    res = pyrgd.train(net, X, Y, lr=0.01, steps=4, loss=losses.softmax_cross_entropy, progress=False, track_every=2,
                      out=tmp_path / "r")
    assert res.certificates["step"] == [0, 2, 4] and all(np.isnan(res.certificates["certified_factor"]))
    s = json.load(open(tmp_path / "r" / "summary.json"))
    assert s["loss"] == "user:softmax_cross_entropy" and s["tracking"]["certificates_apply"] is False
    assert "the loss is user:softmax_cross_entropy" in s["tracking"]["why_not"]


def test_resume_with_a_user_loss_and_momentum_is_bit_identical(tmp_path):
    net, X, Y = _problem()
    kw = dict(lr=0.02, progress=False, loss=losses.softmax_cross_entropy, update="momentum")
    full = pyrgd.train(net.copy(), X, Y, steps=8, **kw)
    pyrgd.train(net.copy(), X, Y, steps=3, out=tmp_path / "r", checkpoint_every=1, **kw)
    again = pyrgd.train(net.copy(), X, Y, steps=8, resume=tmp_path / "r", **kw)
    assert again.history["loss"] == full.history["loss"]
    assert all(np.array_equal(a, b) for a, b in zip(again.net.weights, full.net.weights))
    with pytest.raises(PyrgdError, match="loss: checkpoint 'user:softmax_cross_entropy', now 'squared'"):
        pyrgd.train(net.copy(), X, Y, steps=8, lr=0.02, update="momentum", progress=False, resume=tmp_path / "r")


@pytest.mark.gpu
def test_a_user_loss_on_the_gpu_gets_cupy_arrays_and_matches_the_numpy_loop():
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception:  # driver missing or broken
        pytest.skip("no CUDA device")
    net, X, Y = _problem()
    kinds = set()

    def fn(F, T):
        kinds.add((type(F).__module__.split(".")[0], type(T).__module__.split(".")[0]))
        return losses.softmax_cross_entropy(F, T)

    want, _ = reference_losses(X, Y, net.weights, net.multipliers, 0.02, 12, beta=0.9, loss=cross_entropy)
    res = pyrgd.train(net, X, Y, lr=0.02, steps=12, backend="cuda", loss=fn, update="momentum", progress=False)
    assert kinds == {("cupy", "cupy")}
    np.testing.assert_allclose(res.history["loss"], want, rtol=1e-10, atol=0)
