"""The public functional API: argument checks, copies of non-contiguous inputs, dispatch."""
import numpy as np
import pytest

import pyrgd.ops as ops
from pyrgd.backends import reference as R
from pyrgd.activations import parse_activation
from pyrgd.errors import PyrgdError

from conftest import rel_err


@pytest.fixture
def arrays(rng):
    X = rng.standard_normal((6, 3))
    W1 = rng.standard_normal((3, 10))
    W2 = rng.standard_normal((10, 2))
    G = rng.standard_normal((6, 2))
    return X, W1, W2, G


def test_forward_matches_definition(arrays):
    X, W1, W2, _ = arrays
    H = ops.wide_forward(X, W1, W2, activation="tanh", a1=0.5, backend="reference")
    assert rel_err(H, 0.5 * np.tanh(X @ W1) @ W2) < 1e-14


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_non_contiguous_inputs_are_copied_not_misread(arrays, backend):
    X, W1, W2, G = arrays
    Xf = np.asfortranarray(X)
    Xs = np.zeros((6, 6))[:, ::2]
    Xs[...] = X
    want = ops.wide_forward(X, W1, W2, activation="relu", backend="reference")
    for Xv in (Xf, Xs, X.astype(X.dtype.newbyteorder(">"))):
        assert rel_err(ops.wide_forward(Xv, W1, W2, activation="relu", backend=backend), want) < 1e-14


def test_step_rejects_non_contiguous_weights(arrays):
    X, W1, W2, G = arrays
    with pytest.raises(PyrgdError, match="W1: is updated in place but is not C-contiguous"):
        ops.wide_step(X, np.asfortranarray(W1), W2, G, 0.1, backend="reference")
    W2r = W2.copy()
    W2r.flags.writeable = False
    with pytest.raises(PyrgdError, match="W2: is updated in place but is read-only"):
        ops.wide_step(X, W1, W2r, G, 0.1, backend="reference")


def test_step_updates_in_place(arrays):
    X, W1, W2, G = arrays
    W1c, W2c = W1.copy(), W2.copy()
    ids = id(W1c), id(W2c)
    res = ops.wide_step(X, W1c, W2c, G, 0.1, activation="tanh", backend="reference")
    g1, g2 = R.gradients(X, W1, W2, G, parse_activation("tanh"), 1.0)
    assert (id(W1c), id(W2c)) == ids
    assert rel_err(W1c, W1 - 0.1 * g1) < 1e-14 and rel_err(W2c, W2 - 0.1 * g2) < 1e-14
    assert res.H_next is None


@pytest.mark.parametrize("mutate, match", [
    (lambda a: {**a, "X": a["X"][0]}, "X: expected a 2-D array"),
    (lambda a: {**a, "X": a["X"].astype(np.float32)}, "W1: expected dtype float32"),
    (lambda a: {**a, "X": a["X"].astype(np.int64)}, "X: expected dtype float32 or float64, got int64"),
    (lambda a: {**a, "X": a["X"].tolist()}, "X: expected a numpy.ndarray"),
    (lambda a: {**a, "W1": a["W1"][:2]}, r"W1: expected shape \(3, any\)"),
    (lambda a: {**a, "W2": a["W2"][:4]}, r"W2: expected shape \(10, any\)"),
    (lambda a: {**a, "G": a["G"][:, :1]}, r"G: expected shape \(6, 2\)"),
    (lambda a: {**a, "G": np.full_like(a["G"], np.nan)}, "G: contains NaN or infinite"),
    (lambda a: {**a, "X": np.where(a["X"] > 1, np.inf, a["X"])}, "X: contains NaN or infinite"),
    (lambda a: {**a, "X": a["X"][:0]}, "X: expected a non-empty array"),
    (lambda a: {**a, "lr": float("nan")}, "lr: expected a finite number"),
    (lambda a: {**a, "lr": "big"}, "lr: expected a real number"),
    (lambda a: {**a, "activation": "gelu"}, "activation: unknown activation 'gelu'"),
    (lambda a: {**a, "backend": "tpu"}, "backend: expected one of"),
    (lambda a: {**a, "backend": "cuda"}, "backend: 'cuda' needs CuPy arrays"),
    (lambda a: {**a, "a1": None}, "a1: expected a real number"),
])
def test_bad_input_names_the_argument(arrays, mutate, match):
    X, W1, W2, G = arrays
    a = mutate({"X": X, "W1": W1.copy(), "W2": W2.copy(), "G": G, "lr": 0.1, "activation": "relu",
                "backend": "reference", "a1": 1.0})
    with pytest.raises(PyrgdError, match=match):
        ops.wide_step(a["X"], a["W1"], a["W2"], a["G"], a["lr"], activation=a["activation"], a1=a["a1"],
                      backend=a["backend"])


def test_step_rejects_aliased_weights(rng):
    X = rng.standard_normal((4, 5))
    W = rng.standard_normal((5, 5))
    with pytest.raises(PyrgdError, match="must not share memory"):
        ops.wide_step(X, W, W, rng.standard_normal((4, 5)), 0.1, backend="reference")


def test_step_rejects_inputs_overlapping_weights(rng):
    buf = rng.standard_normal((5, 5))
    X, W1 = buf[:4], rng.standard_normal((5, 5))
    with pytest.raises(PyrgdError, match="G, W2: must not share memory"):
        ops.wide_step(X.copy(), W1, buf, buf[:4], 0.1, backend="reference")


def test_gram_argument_pairs(arrays):
    X, W1, W2, G = arrays
    with pytest.raises(PyrgdError, match="give both"):
        ops.wide_gram(X, W1, W2=W2, backend="reference")
    K = ops.wide_gram(X, W1, activation="tanh", W2=W2, B2=G, backend="reference")
    assert K.shape == (6, 6) and np.allclose(K, K.T)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_forward_out_is_written_and_returned(arrays, backend):
    """wide_forward(out=...) writes H into the caller's array (NaN-filled first) with the plain call's bits."""
    X, W1, W2, _ = arrays
    want = ops.wide_forward(X, W1, W2, activation="softplus", a1=0.3, backend=backend)
    out = np.full((6, 2), np.nan)
    got = ops.wide_forward(X, W1, W2, activation="softplus", a1=0.3, backend=backend, out=out)
    assert got is out and np.array_equal(out, want)


@pytest.mark.parametrize("make_out, match", [
    (lambda X, W1, W2: np.zeros((6, 3)), r"out: expected shape \(6, 2\)"),
    (lambda X, W1, W2: np.zeros((6, 2), np.float32), "out: expected dtype float64"),
    (lambda X, W1, W2: np.zeros((2, 6)).T, "out: is updated in place but is not C-contiguous"),
    (lambda X, W1, W2: W1.reshape(-1)[:12].reshape(6, 2), "out, W1: must not share memory"),
    (lambda X, W1, W2: [[0.0] * 2] * 6, "out: expected a numpy.ndarray"),
])
def test_forward_bad_out_names_it(arrays, make_out, match):
    X, W1, W2, _ = arrays
    with pytest.raises(PyrgdError, match=match):
        ops.wide_forward(X, W1, W2, out=make_out(X, W1, W2))


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # NumPy's, in the reference's products
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_check_finite_false_lets_non_finite_values_through(arrays, backend):
    """By default a NaN input is an error naming it; with check_finite=False it reaches the result (the rows and
    gradients it touches), and the other rows keep the bits of a call on finite data."""
    X, W1, W2, G = arrays
    Xn = X.copy()
    Xn[2, 1] = np.nan
    with pytest.raises(PyrgdError, match="X: contains NaN"):
        ops.wide_forward(Xn, W1, W2, backend=backend)
    H = ops.wide_forward(Xn, W1, W2, activation="tanh", backend=backend, check_finite=False)
    want = ops.wide_forward(X, W1, W2, activation="tanh", backend=backend)
    rows = np.arange(6) != 2
    assert np.isnan(H[2]).all() and np.array_equal(H[rows], want[rows])
    Gi = G.copy()
    Gi[0, 0] = np.inf
    with pytest.raises(PyrgdError, match="G: contains NaN or infinite"):
        ops.wide_grad(X, W1, W2, Gi, backend=backend)
    dW1, dW2 = ops.wide_grad(X, W1, W2, Gi, activation="tanh", backend=backend, check_finite=False)
    assert not np.isfinite(dW2[:, 0]).all() and np.isfinite(dW2[:, 1]).all()
    w1, w2 = W1.copy(), W2.copy()
    ops.wide_step(Xn, w1, w2, G, 0.1, backend=backend, check_finite=False)
    assert np.isnan(w1).any()
    assert np.isnan(ops.wide_gram(Xn, W1, backend=backend, check_finite=False)[2]).all()
    with pytest.raises(PyrgdError, match="check_finite: expected True or False, got 0"):
        ops.wide_gram(X, W1, backend=backend, check_finite=0)


@pytest.mark.parametrize("call, match", [
    (lambda X, W1, W2, G: ops.wide_forward(X, W1, W2, a1=1e39), "a1: 1e[+]39 is inf in the arrays' dtype float32"),
    (lambda X, W1, W2, G: ops.wide_step(X, W1, W2, G, 1e39), "lr: 1e[+]39 is inf in the arrays' dtype float32"),
    (lambda X, W1, W2, G: ops.wide_grad(X, W1, W2, G, activation="leaky_relu(1e-50)"),
     r"activation: the slope 1e-50 of leaky_relu is 0.0 in the arrays' dtype float32, outside \(0, 1\)"),
    (lambda X, W1, W2, G: ops.wide_gram(X, W1, activation="smooth_leaky_relu(0.99999999)"),
     r"activation: the slope 0.99999999 of smooth_leaky_relu is 1.0 in the arrays' dtype float32"),
    (lambda X, W1, W2, G: ops.step_engine(X, G[:, :1].copy(), [W1, W2[:, :1].copy()], multipliers=[1e40]),
     r"multipliers\[0\]: 1e[+]40 is inf"),
])
def test_float32_scalars_must_stay_finite_and_slopes_inside_0_1_in_float32(arrays, call, match):
    """Values checked as Python floats but used by the kernels in float32: one that overflows (a1, lr, a multiplier)
    or a slope that rounds to 0 or 1 there is refused, before any weight changes; float64 takes them."""
    X, W1, W2, G = (a.astype(np.float32) for a in arrays)
    W1_before = W1.copy()
    with pytest.raises(PyrgdError, match=match):
        call(X, W1, W2, G)
    assert np.array_equal(W1, W1_before)
    X, W1, W2, G = arrays
    assert np.isfinite(ops.wide_forward(X, W1, W2, a1=1e39, activation="leaky_relu(1e-50)")).all()


def test_activation_slope_must_be_a_number():
    with pytest.raises(PyrgdError, match=r"activation: the slope must be a number, got \[1\]"):
        parse_activation(("leaky_relu", [1]))
