"""pyrgd.spectrum: lambda_min of the wide layer's Gram three ways (exact, certified lower bound, matrix-free
estimate), and that the estimate is never used as a certificate."""
import numpy as np
import pytest

from pyrgd import spectrum
from pyrgd.activations import parse_activation

pytest.importorskip("pyrgd._cpu", reason="the C++ extension pyrgd._cpu is not built")


def _wide(N, d, n1, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((N, d)) / np.sqrt(d)).astype(dtype)
    W1 = rng.standard_normal((d, n1)).astype(dtype)
    return X, W1


def _dense_lambda_min(X, W1, act, a1):
    from pyrgd.activations import sigma_and_derivative

    S, _ = sigma_and_derivative(act, X.astype(np.float64) @ W1.astype(np.float64), derivative=False)
    F = a1 * S
    return np.linalg.eigvalsh(F @ F.T)[0]


def test_gram_matvec_is_k_times_v():
    X, W1 = _wide(50, 6, 300)
    act = parse_activation("tanh")
    V = np.random.default_rng(1).standard_normal((50, 3))
    from pyrgd.activations import sigma_and_derivative

    F = 0.7 * sigma_and_derivative(act, X @ W1, derivative=False)[0]
    got = spectrum.gram_matvec(X, W1, act, 0.7, V, block_bytes=50 * 8 * 2 * 37)  # blocks of 37 neurons
    assert np.allclose(got, F @ (F.T @ V), rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("act_name", ["erf", "tanh", "smooth_leaky_relu(0.2)"])
def test_matrix_free_estimate_agrees_with_eigvalsh(act_name):
    """On a well-conditioned Gram (d comparable to N), LOBPCG's estimate matches eigvalsh to 1e-6, and it is never
    below it (a Rayleigh quotient bounds lambda_min from above)."""
    X, W1 = _wide(120, 60, 500, seed=2)
    act = parse_activation(act_name)
    exact = _dense_lambda_min(X, W1, act, 1.0)
    est = spectrum.LambdaMinEstimator(120, k=8, iters=200, tol=1e-10)
    r = est.estimate(X, W1, act, 1.0)
    assert r["lambda_min"] >= exact * (1 - 1e-9)
    assert r["lambda_min"] == pytest.approx(exact, rel=1e-6)
    assert abs(spectrum.exact_lambda_min(X, W1, act, 1.0, "cpu") - exact) <= 1e-9 * exact


def test_estimate_warm_start_improves_and_stays_above():
    """Few iterations: an estimate above lambda_min; calling again continues from the last block and gets closer."""
    X, W1 = _wide(200, 40, 600, seed=3)
    act = parse_activation("erf")
    exact = _dense_lambda_min(X, W1, act, 1.0)
    est = spectrum.LambdaMinEstimator(200, k=4)
    first = est.estimate(X, W1, act, 1.0, iters=3)["lambda_min"]
    second = est.estimate(X, W1, act, 1.0, iters=30)["lambda_min"]
    assert exact <= second <= first
    assert est.products >= 30


def test_certified_lower_bound_holds_and_fails_above():
    X, W1 = _wide(150, 20, 400, seed=4, dtype=np.float32)
    act = parse_activation("smooth_leaky_relu(0.2)")
    exact = _dense_lambda_min(X, W1, act, 1.3)
    b = spectrum.certified_lower_bound(X, W1, act, 1.3, 0.9 * exact)
    assert b is not None and 0 < b <= exact and b > 0.89 * exact
    assert spectrum.certified_lower_bound(X, W1, act, 1.3, 1.1 * exact) is None


def test_memory_formulas():
    assert spectrum.exact_memory_bytes(1000, 4) == 1000 * 1000 * (4 + 16)
    assert spectrum.certified_memory_bytes(1000) == 16 * 1000 * 1000
    assert spectrum.estimator_bytes(1000, 16) == 64 * 1000 * 16
