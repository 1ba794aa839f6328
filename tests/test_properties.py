"""Property tests of the public API (hypothesis): for any shapes, dtypes, strides and activations the C++ backend
agrees with the NumPy reference, repeats its own bits, never writes what it must not, and turns NaN input into a
PyrgdError naming the argument."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyrgd import ops
from pyrgd.errors import PyrgdError

pytest.importorskip("pyrgd._cpu", reason="the C++ extension pyrgd._cpu is not built")

ACTIVATIONS = ["relu", "leaky_relu(0.1)", "smooth_leaky_relu(0.3)", "softplus", "tanh", "erf", "identity"]
TOL = {np.float64: 1e-10, np.float32: 2e-4}
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw):
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    N = draw(st.integers(1, 40))
    d = draw(st.integers(1, 9))
    n1 = draw(st.integers(1, 150))
    n2 = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2 ** 16))
    act = draw(st.sampled_from(ACTIVATIONS))
    a1 = draw(st.floats(0.25, 2.0))
    strided = draw(st.booleans())
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, 2 * d if strided else d)).astype(dtype)
    if strided:  # a non-contiguous view: the functions copy read-only inputs
        X = X[:, ::2]
    W1 = (rng.standard_normal((d, n1)) / np.sqrt(d)).astype(dtype)
    W2 = (rng.standard_normal((n1, n2)) / np.sqrt(n1)).astype(dtype)
    G = rng.standard_normal((N, n2)).astype(dtype)
    return X, W1, W2, G, act, a1, dtype


def _close(a, b, dtype):
    scale = max(1.0, float(np.abs(b).max()))
    return float(np.abs(np.asarray(a, np.float64) - b).max()) <= TOL[dtype] * scale


@SETTINGS
@given(problems())
def test_forward_matches_the_reference_and_repeats_its_bits(p):
    X, W1, W2, _, act, a1, dtype = p
    H = ops.wide_forward(X, W1, W2, activation=act, a1=a1, backend="cpu")
    ref = ops.wide_forward(X.astype(np.float64), W1.astype(np.float64), W2.astype(np.float64), activation=act,
                           a1=a1, backend="reference")
    assert H.dtype == dtype and H.shape == ref.shape and _close(H, ref, dtype)
    assert np.array_equal(H, ops.wide_forward(X, W1, W2, activation=act, a1=a1, backend="cpu"))


@SETTINGS
@given(problems(), st.floats(1e-4, 1e-1))
def test_step_matches_the_reference_and_leaves_inputs_alone(p, lr):
    X, W1, W2, G, act, a1, dtype = p
    X0, G0 = X.copy(), G.copy()
    A1, A2 = W1.copy(), W2.copy()
    res = ops.wide_step(X, A1, A2, G, lr, activation=act, a1=a1, next_forward=True, backend="cpu")
    R1, R2 = W1.astype(np.float64), W2.astype(np.float64)
    ref = ops.wide_step(X.astype(np.float64), R1, R2, G.astype(np.float64), lr, activation=act, a1=a1,
                        next_forward=True, backend="reference")
    assert _close(A1, R1, dtype) and _close(A2, R2, dtype) and _close(res.H_next, ref.H_next, dtype)
    assert res.grad_sq_w1 == pytest.approx(ref.grad_sq_w1, rel=1e-3 if dtype == np.float32 else 1e-9, abs=1e-12)
    assert np.array_equal(X, X0) and np.array_equal(G, G0)


@SETTINGS
@given(problems())
def test_gram_is_symmetric_and_matches_the_reference(p):
    X, W1, _, _, act, a1, dtype = p
    K = ops.wide_gram(X, W1, activation=act, a1=a1, backend="cpu")
    ref = ops.wide_gram(X.astype(np.float64), W1.astype(np.float64), activation=act, a1=a1, backend="reference")
    assert K.shape == (X.shape[0],) * 2 and np.array_equal(K, K.T) and _close(K, ref, dtype)


@SETTINGS
@given(problems(), st.sampled_from(["X", "W1", "W2", "G"]), st.sampled_from([np.nan, np.inf, -np.inf]))
def test_non_finite_input_is_refused_and_nothing_written(p, name, bad):
    X, W1, W2, G, act, a1, _ = p
    arrays = {"X": X.copy(), "W1": W1.copy(), "W2": W2.copy(), "G": G.copy()}
    arrays[name].flat[arrays[name].size // 2] = bad
    before = {k: v.copy() for k, v in arrays.items()}
    with pytest.raises(PyrgdError, match=f"^{name}: contains NaN or infinite values"):
        ops.wide_step(arrays["X"], arrays["W1"], arrays["W2"], arrays["G"], 0.01, activation=act, a1=a1,
                      backend="cpu")
    for k in arrays:
        assert np.array_equal(arrays[k], before[k], equal_nan=True)


@SETTINGS
@given(problems(), st.sampled_from(["rows", "neurons"]))
def test_engine_gradients_match_the_reference_engine(p, method):
    X, W1, W2, G, act, a1, dtype = p
    X = np.ascontiguousarray(X)
    Y = G  # targets of the right shape
    W = [W1.copy(), W2.copy()]
    got = ops.step_engine(X, Y, W, activation=act, multipliers=[a1], backend="cpu", method=method).gradients()
    W64 = [w.astype(np.float64) for w in (W1, W2)]
    ref = ops.step_engine(X.astype(np.float64), Y.astype(np.float64), W64, activation=act, multipliers=[a1],
                          backend="reference").gradients()
    for g, r in zip(got, ref):
        assert g.dtype == dtype and _close(g, r, dtype)
