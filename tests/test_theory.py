"""Tests of pyrgd.theory against independent computations: scipy quadrature, Monte Carlo, closed forms written out
here, finite-width Grams, explicit Jacobians, and the certificate formulas recomputed by hand."""
import math
import pathlib
import re
import warnings

import numpy as np
import pytest
import scipy.integrate as si
import scipy.stats

from pyrgd import PyramidalNet
from pyrgd.activations import parse_activation, sigma_and_derivative
from pyrgd.backends import reference
from pyrgd.errors import PyrgdError
from pyrgd.ops import wide_gram
from pyrgd.tail import tail_backward, tail_forward
from pyrgd import theory
from pyrgd.theory.gaussian import sigma_numba

from conftest import ALL_ACTIVATIONS, cpu_available

SMOOTH = ["softplus", "tanh", "erf", "smooth_leaky_relu(0.2)"]
BACKENDS = ["reference"] + (["cpu"] if cpu_available() else [])


def unit_rows(rng, N, d):
    X = rng.standard_normal((N, d))
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def arccos_kernels(K):
    """Independent arc-cosine formulas (docs/theory.md section 4.4), written out pair by pair."""
    N = K.shape[0]
    E, D = np.zeros((N, N)), np.zeros((N, N))
    for i in range(N):
        for j in range(N):
            r = math.sqrt(K[i, i] * K[j, j])
            c = min(1.0, max(-1.0, K[i, j] / r))
            t = math.acos(c)
            E[i, j] = r * (math.sin(t) + (math.pi - t) * c) / (2 * math.pi)
            D[i, j] = (math.pi - t) / (2 * math.pi)
    return E, D


def dblquad_expectation(f, A):
    """E_{(u,v)~N(0,A)}[f(u) f(v)] by scipy's adaptive 2-D quadrature over the whitened variables."""
    l11 = math.sqrt(A[0][0])
    l21 = A[0][1] / l11
    l22 = math.sqrt(max(A[1][1] - l21 * l21, 0.0))

    def g(z2, z1):
        return f(l11 * z1) * f(l21 * z1 + l22 * z2) * math.exp(-(z1 * z1 + z2 * z2) / 2) / (2 * math.pi)

    return si.dblquad(g, -11, 11, -11, 11, epsabs=1e-12, epsrel=1e-12)[0]


SCALAR = {
    "softplus": (lambda x: math.log1p(math.exp(-abs(x))) + max(x, 0.0), lambda x: 1 / (1 + math.exp(-x))),
    "tanh": (math.tanh, lambda x: 1 - math.tanh(x) ** 2),
    "erf": (math.erf, lambda x: 2 / math.sqrt(math.pi) * math.exp(-x * x)),
}


# ------------------------------------------------------------------------------------------------ activations, 1-D
@pytest.mark.parametrize("spec", ALL_ACTIVATIONS)
def test_numba_activations_agree_with_pyrgd_activations(spec):
    act = parse_activation(spec)
    x = np.concatenate([np.linspace(-60, 60, 4001), [0.0, -0.0, 1e-300, -1e-300, 700.0, -700.0]])
    s, ds = sigma_and_derivative(act, x)
    # same formulas; numpy's and libm's tanh/exp may differ in the last bit (1 - tanh^2 then cancels)
    np.testing.assert_allclose(sigma_numba(act, x), s, rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(sigma_numba(act, x, derivative=True), ds, rtol=1e-14, atol=1e-15)


def test_gauss_hermite_moments():
    z, w = theory.gauss_hermite(40)
    assert abs(w.sum() - 1) < 1e-14
    for k in range(0, 40):  # E z^{2k} = (2k-1)!!, exact for 2k <= 79
        want = float(math.prod(range(2 * k - 1, 0, -2)))
        assert abs(np.dot(w, z ** (2 * k)) / want - 1) < 1e-10
    # the first inexact moment: E z^{2n} - rule(z^{2n}) = ||He_n||^2 = n! for n nodes
    assert math.prod(range(79, 0, -2)) - np.dot(w, z ** 80) == pytest.approx(math.factorial(40), rel=1e-3)


def test_c_sigma_known_values():
    assert theory.c_sigma("relu") == pytest.approx(2.0, rel=1e-13)
    assert theory.c_sigma("identity") == pytest.approx(1.0, rel=1e-13)
    assert theory.c_sigma("leaky_relu(0.1)") == pytest.approx(2 / 1.01, rel=1e-13)
    # E[erf(z)^2] = (2/pi) arcsin(2/3)
    assert theory.c_sigma("erf") == pytest.approx(math.pi / (2 * math.asin(2 / 3)), rel=1e-12)
    for name in ("tanh", "softplus"):
        f = SCALAR[name][0]
        m2 = si.quad(lambda z: f(z) ** 2 * math.exp(-z * z / 2) / math.sqrt(2 * math.pi), -np.inf, np.inf,
                     epsabs=1e-14, epsrel=1e-13)[0]
        assert theory.c_sigma(name) == pytest.approx(1 / m2, rel=1e-10)


# ------------------------------------------------------------------------------------------------ 2-D expectations
def test_relu_closed_form_matches_written_out_arccos_and_mc(rng):
    X = rng.standard_normal((7, 4)) * rng.uniform(0.5, 2, (7, 1))
    K = X @ X.T
    E, D = theory.relu_closed_form(K)
    E2, D2 = arccos_kernels(K)
    np.testing.assert_allclose(E, E2, atol=1e-12)
    np.testing.assert_allclose(D, D2, atol=1e-12)
    # and against Monte Carlo on the network side: u = X w with w ~ N(0, I)
    W = rng.standard_normal((4, 400_000))
    Z = X @ W
    np.testing.assert_allclose(E, np.maximum(Z, 0) @ np.maximum(Z, 0).T / W.shape[1], atol=0.03 * E.max())
    np.testing.assert_allclose(D, (Z > 0) @ (Z > 0).T.astype(float) / W.shape[1], atol=0.01)


@pytest.mark.parametrize("gamma", [0.1, 0.5])
def test_leaky_relu_closed_form_against_dblquad_and_orthant_probability(gamma):
    A = [[1.3, -0.4], [-0.4, 0.8]]
    f = lambda x: x if x > 0 else gamma * x  # noqa: E731
    K = np.array(A)
    got = theory.gaussian_gram(K, f"leaky_relu({gamma})")[0, 1]
    gotd = theory.gaussian_gram(K, f"leaky_relu({gamma})", derivative=True)[0, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert got == pytest.approx(dblquad_expectation(f, A), abs=1e-7)
    # sigma' = gamma + (1 - gamma) 1{x > 0}: expand, with P(u > 0, v > 0) = the bivariate normal CDF at 0
    p11 = scipy.stats.multivariate_normal(mean=[0, 0], cov=A).cdf([0, 0])
    want = gamma ** 2 + gamma * (1 - gamma) * (0.5 + 0.5) + (1 - gamma) ** 2 * p11
    assert gotd == pytest.approx(want, abs=1e-7)


def test_tensor_quadrature_of_relu_converges_to_the_arccos_kernel(rng):
    X = unit_rows(rng, 12, 5)
    K = X @ X.T
    E, D = arccos_kernels(K)
    errs = []
    for order in (16, 64, 200):
        Eq = theory.gaussian_gram(K, "relu", method="tensor", order=order)
        Dq = theory.gaussian_gram(K, "relu", derivative=True, method="tensor", order=order)
        errs.append((np.abs(Eq - E).max(), np.abs(Dq - D).max()))
    assert errs[1][0] < 5e-3 and errs[1][1] < 5e-2  # the documented accuracy at order 64
    assert errs[2][0] < errs[1][0] < errs[0][0]
    assert errs[2][1] < errs[0][1]
    # the diagonal (rank-1 covariance) is exact by the symmetry of the nodes
    assert np.allclose(np.diag(theory.gaussian_gram(K, "relu", method="tensor", order=16)), 0.5, atol=1e-13)


@pytest.mark.parametrize("name", ["softplus", "tanh", "erf"])
@pytest.mark.parametrize("derivative", [False, True])
def test_smooth_quadratures_against_dblquad(name, derivative):
    f = SCALAR[name][1 if derivative else 0]
    for A in ([[1.0, 0.3], [0.3, 1.0]], [[2.5, -1.2], [-1.2, 0.9]], [[1.0, 0.999999], [0.999999, 1.0]]):
        ref = dblquad_expectation(f, A)
        K = np.array(A)
        series = theory.gaussian_gram(K, name, derivative=derivative, method="series")[0, 1]
        tensor = theory.gaussian_gram(K, name, derivative=derivative, method="tensor", order=100)[0, 1]
        single = theory.gaussian_pair_expectation(A, name, derivative=derivative, order=100)
        assert series == pytest.approx(ref, abs=1e-10)
        assert tensor == pytest.approx(ref, abs=1e-5)
        assert single == pytest.approx(tensor, abs=1e-14)


@pytest.mark.parametrize("spec", SMOOTH)
def test_series_against_monte_carlo(spec, rng):
    act = parse_activation(spec)
    X = rng.standard_normal((6, 3)) * 0.8
    K = X @ X.T
    m = 200_000
    Z = X @ rng.standard_normal((3, m))
    for derivative in (False, True):
        S, dS = sigma_and_derivative(act, Z)
        F = dS if derivative else S
        mc = F @ F.T / m
        se = np.sqrt(np.var(F[:, None, :] * F[None, :, :], axis=2) / m)
        q = theory.gaussian_gram(K, act, derivative=derivative)
        assert np.all(np.abs(q - mc) < 5 * se + 1e-12)


@pytest.mark.parametrize("spec", ["softplus", "tanh", "relu"])
def test_degenerate_covariances(spec):
    act = parse_activation(spec)
    f0 = float(act.sigma(np.zeros(1))[0])
    e1 = theory.gaussian_expectation_1d(act, 2.0, power=1, order=200)
    e2 = theory.gaussian_expectation_1d(act, 2.0, power=2, order=200)
    # rows: x, x again (i != j but collinear), a nearly collinear copy, and the zero vector (variance 0)
    K = np.array([[2.0, 2.0, 2.0 * (1 - 1e-13), 0.0],
                  [2.0, 2.0, 2.0 * (1 - 1e-13), 0.0],
                  [2.0 * (1 - 1e-13), 2.0 * (1 - 1e-13), 2.0, 0.0],
                  [0.0, 0.0, 0.0, 0.0]])
    for method in ("tensor", "series") if spec != "relu" else ("tensor", "closed_form"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            E = theory.gaussian_gram(K, act, method=method, order=None)
        assert np.all(np.isfinite(E))
        tol = 1e-10 if method != "tensor" else (1e-3 if spec == "relu" else 1e-5)
        assert E[0, 0] == pytest.approx(e2, abs=tol)
        assert E[0, 1] == pytest.approx(e2, abs=tol)  # u = v
        assert E[0, 2] == pytest.approx(e2, abs=max(tol, 1e-6))
        assert E[0, 3] == pytest.approx(f0 * e1, abs=1e-10)  # u = 0: E = sigma(0) E[sigma(v)]
        assert E[3, 3] == pytest.approx(f0 * f0, abs=1e-14)


def test_series_warns_where_it_cannot_converge(rng):
    X = unit_rows(rng, 5, 3)
    with pytest.warns(RuntimeWarning, match="has not converged"):
        theory.gaussian_gram(X @ X.T, "relu", derivative=True, method="series", order=512)


# ------------------------------------------------------------------------------------------------ Du et al. 2019
def du_relu_by_hand(X, H, last):
    """The recursion of docs/theory.md section 4.4 for relu, written out with the arc-cosine formulas (c_sigma = 2)."""
    Ks = [X @ X.T]
    for _ in range(1, H):
        Ks.append(2 * arccos_kernels(Ks[-1])[0])
    cov = Ks[-2] if (last == "paper" and H >= 2) else Ks[-1]
    Ks.append(2 * Ks[-1] * arccos_kernels(cov)[1])
    return Ks


@pytest.mark.parametrize("H", [1, 2, 3])
@pytest.mark.parametrize("last", ["paper", "natural"])
def test_du_recursion_relu_against_closed_form_by_hand(H, last, rng):
    X = unit_rows(rng, 9, 4)
    r = theory.du_gram(X, H, "relu", last_layer_cov=last)
    want = du_relu_by_hand(X, H, last)
    assert len(r.K) == H + 1 and r.c_sigma == pytest.approx(2.0)
    for a, b in zip(r.K, want):
        np.testing.assert_allclose(a, b, atol=1e-12)
    assert r.lambda_0 == pytest.approx(np.linalg.eigvalsh(want[-1])[0], abs=1e-12)
    assert theory.du_lambda0(X, H, "relu", last_layer_cov=last) == pytest.approx(r.lambda_0, abs=1e-13)
    # unit-norm inputs keep K^(h)_ii = 1 (the role of c_sigma)
    for K in r.K[:-1]:
        np.testing.assert_allclose(np.diag(K), 1.0, atol=1e-12)


def test_du_paper_and_natural_readings_differ_from_H2(rng):
    X = unit_rows(rng, 6, 3)
    assert np.allclose(theory.du_gram(X, 1, "relu").K_H, theory.du_gram(X, 1, "relu", last_layer_cov="natural").K_H)
    assert theory.du_gram(X, 1, "relu").notes  # the undefined A^(0) is reported
    a = theory.du_gram(X, 2, "relu", last_layer_cov="paper").K_H
    b = theory.du_gram(X, 2, "relu", last_layer_cov="natural").K_H
    assert np.abs(a - b).max() > 1e-3


def test_du_default_reading_is_the_natural_one(rng):
    """The default covariance of the last line is A^(H) (built from K^(H-1)): the reading finite-width nets reach."""
    X = unit_rows(rng, 7, 3)
    r = theory.du_gram(X, 3, "softplus")
    assert r.last_layer_cov == "natural"
    np.testing.assert_array_equal(r.K_H, theory.du_gram(X, 3, "softplus", last_layer_cov="natural").K_H)
    assert theory.du_lambda0(X, 3, "softplus") == theory.du_lambda0(X, 3, "softplus", last_layer_cov="natural")
    assert theory.du_lambda0(X, 3, "softplus") != theory.du_lambda0(X, 3, "softplus", last_layer_cov="paper")


@pytest.mark.parametrize("spec", ["tanh", "softplus"])
def test_du_recursion_series_agrees_with_tensor(spec, rng):
    X = unit_rows(rng, 10, 3)
    a = theory.du_gram(X, 3, spec)
    b = theory.du_gram(X, 3, spec, method="tensor", order=120)
    assert a.method == "series" and b.method == "tensor"
    np.testing.assert_allclose(a.K_H, b.K_H, atol=1e-6)


@pytest.mark.parametrize("spec", ALL_ACTIVATIONS)
def test_du_recursion_for_every_activation_against_the_direct_2d_rule(spec, rng):
    """The default method (closed form or Hermite series) against the direct 2-D Gauss-Hermite rule at 200 nodes
    per dimension, for every activation; c_sigma keeps K^(h)_ii = 1 on unit-norm data (h < H)."""
    X = unit_rows(rng, 8, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no series that failed to converge
        a = theory.du_gram(X, 3, spec)
    b = theory.du_gram(X, 3, spec, method="tensor", order=200)
    # the 2-D rule converges only algebraically for the kinked ones (relu: 1.1e-2 off under the printed reading's
    # covariance, 2.2e-2 under the natural one, whose correlations are nearer 1)
    kinked = parse_activation(spec).name in ("relu", "leaky_relu")
    np.testing.assert_allclose(a.K_H, b.K_H, atol=3e-2 if kinked else 1e-9)
    for K in a.K[:-1]:
        np.testing.assert_allclose(np.diag(K), 1.0, atol=1e-12)
    if spec == "identity":  # every layer is linear: K^(h) = X X^T and sigma' = 1
        np.testing.assert_allclose(a.K_H, X @ X.T, atol=1e-14)


@pytest.mark.parametrize("spec", ["relu", "tanh"])
def test_finite_width_gram_approaches_K1_like_inverse_sqrt_m(spec, rng):
    """(c_sigma / m) sigma(X W) sigma(X W)^T with W_ij ~ N(0, 1) (Du's first layer) -> K^(1) with error ~ m^{-1/2}."""
    X = unit_rows(rng, 16, 5)
    K1 = theory.du_gram(X, 2, spec).K[1]
    cs = theory.c_sigma(spec)
    errs = {}
    for m in (500, 8000):
        e = []
        for seed in range(6):
            W = np.random.default_rng(100 + seed).standard_normal((5, m))
            G = wide_gram(X, W, activation=spec, a1=math.sqrt(cs / m), backend="reference")
            e.append(np.sqrt(np.mean((G - K1) ** 2)))
        errs[m] = np.mean(e)
    assert 2.5 < errs[500] / errs[8000] < 6.5  # 16x the width: about 4x smaller


def test_finite_width_last_layer_gram_approaches_the_natural_K_H(rng):
    """Du et al.'s net at width m, H = 2: the Gram of the last hidden layer's gradients,
    G = (F_1 F_1^T) (.) (B_2 B_2^T) with F_1 = a sigma(X W_1), B_2 = a sigma'(F_1 W_2) (.) w_3^T, a = sqrt(c_sigma/m),
    written out here, approaches K^(2) (sigma' part included) with error ~ m^{-1/2} under the natural reading of
    the last line of Def. 5.1, and stays away from the reading as printed (they differ by ~10% for softplus)."""
    spec = "softplus"
    act = parse_activation(spec)
    X = unit_rows(rng, 16, 5)
    cs = theory.c_sigma(spec)
    K_nat = theory.du_gram(X, 2, spec, last_layer_cov="natural").K_H
    K_pap = theory.du_gram(X, 2, spec, last_layer_cov="paper").K_H
    assert np.linalg.norm(K_nat - K_pap) > 0.05 * np.linalg.norm(K_nat)
    err_nat, err_pap = {}, {}
    for m in (128, 2048):
        en, ep = [], []
        for seed in range(6):
            g = np.random.default_rng(100 + seed)
            W1, W2, w3 = g.standard_normal((5, m)), g.standard_normal((m, m)), g.standard_normal(m)
            a = math.sqrt(cs / m)
            F1 = a * sigma_and_derivative(act, X @ W1)[0]
            B2 = a * sigma_and_derivative(act, F1 @ W2)[1] * w3
            G = (F1 @ F1.T) * (B2 @ B2.T)
            en.append(np.linalg.norm(G - K_nat) / np.linalg.norm(K_nat))
            ep.append(np.linalg.norm(G - K_pap) / np.linalg.norm(K_pap))
        err_nat[m], err_pap[m] = np.mean(en), np.mean(ep)
    assert 2.5 < err_nat[128] / err_nat[2048] < 6.5  # 16x the width: about 4x smaller
    assert err_pap[2048] > 2 * err_nat[2048]


# ------------------------------------------------------------------------------------------------ lambda_*
@pytest.mark.parametrize("spec", ["relu", "tanh"])
def test_lambda_star_mc_converges_like_inverse_sqrt_m(spec, rng):
    X = rng.standard_normal((14, 6))
    exact = theory.lambda_star(X, spec)
    # the quadrature value, entry by entry: (u, v) ~ N(0, [[x_i.x_i, x_i.x_j], [., x_j.x_j]] / d)
    A = [[X[2] @ X[2] / 6, X[2] @ X[5] / 6], [X[2] @ X[5] / 6, X[5] @ X[5] / 6]]
    assert exact.gram[2, 5] == pytest.approx(
        theory.gaussian_pair_expectation(A, spec, order=200), abs=2e-3 if spec == "relu" else 1e-12)
    errs = {}
    for m in (400, 6400):
        errs[m] = np.mean([np.sqrt(np.mean((theory.lambda_star_mc(X, spec, n_samples=m, seed=s, chunk=1000,
                                                                   backend="reference").gram - exact.gram) ** 2))
                           for s in range(6)])
    assert 2.5 < errs[400] / errs[6400] < 6.5
    big = theory.lambda_star_mc(X, spec, n_samples=100_000, seed=1, chunk=25_000, backend="reference")
    assert big.n_samples == 100_000 and big.w_var == pytest.approx(1 / 6)
    assert big.value == pytest.approx(exact.value, abs=0.05 * exact.value + 1e-3)


def test_lambda_star_mc_is_independent_of_the_chunk_size(rng):
    X = rng.standard_normal((5, 3))
    a = theory.lambda_star_mc(X, "tanh", n_samples=1000, seed=3, chunk=7, backend="reference")
    b = theory.lambda_star_mc(X, "tanh", n_samples=1000, seed=3, chunk=1000, backend="reference")
    np.testing.assert_allclose(a.gram, b.gram, rtol=1e-12)
    c = theory.lambda_star_mc(X, "tanh", n_samples=1000, seed=3, chunk=1000, w_var=0.5, backend="reference")
    Z = X @ (np.random.default_rng(3).standard_normal((1000, 3)).T * math.sqrt(0.5))
    np.testing.assert_allclose(c.gram, np.tanh(Z) @ np.tanh(Z).T / 1000, rtol=1e-12)


# ------------------------------------------------------------------------------------------------ Nguyen 2021
def nguyen_by_hand(X, W, Y, C, eta):
    """docs/theory.md section 4.2 written out for L = 2, relu, from the explicit F_1."""
    F1 = np.maximum(X @ W[0], 0)
    alpha = np.linalg.svd(F1, compute_uv=False)[-1]
    lb = [np.linalg.norm(W[0], 2) + C[0], np.linalg.norm(W[1], 2) + C[1]]
    r = np.linalg.norm(F1 @ W[1] - Y)
    nX = np.linalg.norm(X)
    initW = (alpha ** 2, 16 * nX * max(lb[0] * lb[1] / (lb[0] * C[0]), lb[0] * lb[1] / (lb[1] * C[1])) * r)
    initF = (alpha ** 3, 32 * nX ** 2 * lb[1] * (lb[0] ** 2 / lb[0] ** 2) * r)
    initS = (alpha ** 2, 16 * nX ** 2 * lb[1] ** 2 * (lb[0] ** 2 / lb[0] ** 2))
    eta_max = min(8 / alpha ** 2, 1 / (nX ** 2 * (lb[0] * lb[1]) ** 2) * lb[0] ** -2 / (lb[0] ** -2 + lb[1] ** -2) ** 2)
    return alpha, lb, {"initW": initW, "initF": initF, "initS": initS}, eta_max, 1 - eta * alpha ** 2 / 8


@pytest.mark.parametrize("backend", BACKENDS)
def test_nguyen2021_certificate_recomputed_by_hand(backend, rng):
    N, d = 6, 3
    X = rng.standard_normal((N, d))
    Y = rng.standard_normal((N, 2))
    net = PyramidalNet(d, [40, 2], activation="relu", seed=4)
    C = (0.7, 1.3)
    cert = theory.nguyen2021_certificate(net, X, Y, C=C, eta=1e-4, backend=backend)
    alpha, lb, conds, eta_max, rate = nguyen_by_hand(X, net.weights, Y, C, 1e-4)
    assert cert.applies and cert.reasons == []
    assert cert.alpha_0 == pytest.approx(alpha, rel=1e-7)
    np.testing.assert_allclose(cert.lbar, lb, rtol=1e-10)
    for name, (lhs, rhs) in conds.items():
        c = cert.conditions[name]
        assert c.lhs == pytest.approx(lhs, rel=1e-6) and c.rhs == pytest.approx(rhs, rel=1e-10)
        assert c.margin == pytest.approx(lhs / rhs, rel=1e-6) and c.holds == (lhs >= rhs)
    assert cert.eta_max == pytest.approx(eta_max, rel=1e-6)
    assert cert.rate_factor == pytest.approx(rate, rel=1e-12)
    assert cert.eta_ok == (1e-4 < eta_max)
    assert cert.loss_0 == pytest.approx(0.5 * np.linalg.norm(net.forward(X, backend="reference") - Y) ** 2)
    assert cert.holds == (cert.eta_ok and all(h for _, h in ((n, c.holds) for n, c in cert.conditions.items())))
    d_ = cert.as_dict()
    assert d_["conditions"]["initS"]["rhs"] == pytest.approx(conds["initS"][1])


def test_nguyen2021_holds_for_the_width_N_construction(rng):
    """Sec. 3.1: W_L^0 = 0 and a large beta on the other layer (C_l = 1): every condition holds and the rate is < 1."""
    N, d = 5, 4
    X = rng.standard_normal((N, d))
    net = PyramidalNet(d, [20, 1], activation="relu", init="zero_scaled", zero_layer=2, beta=1000.0, seed=2)
    Y = 1e-2 * rng.standard_normal((N, 1))
    cert = theory.nguyen2021_certificate(net, X, Y)
    alpha, lb, conds, eta_max, rate = nguyen_by_hand(X, net.weights, Y, (1.0, 1.0), 0.0)
    assert all(lhs >= rhs for lhs, rhs in conds.values())  # the hand computation agrees that it holds
    assert cert.applies and cert.holds and all(c.holds for c in cert.conditions.values())
    assert cert.eta is None and cert.eta_ok is None and cert.notes
    assert cert.rate_factor == pytest.approx(1 - eta_max * alpha ** 2 / 8, rel=1e-6)
    assert 0 <= cert.rate_factor < 1
    bad = theory.nguyen2021_certificate(net, X, Y, C=1e-3, eta=2 * cert.eta_max)
    assert bad.eta_ok is False and not bad.holds


def test_nguyen2021_does_not_apply_outside_its_assumptions(rng):
    X = rng.standard_normal((6, 3))
    Y = rng.standard_normal((6, 1))
    tanh = theory.nguyen2021_certificate(PyramidalNet(3, [20, 1], activation="tanh"), X, Y)
    assert not tanh.applies and not tanh.holds and "relu" in tanh.reasons[0]
    assert tanh.alpha_0 > 0  # evaluated anyway
    deep = theory.nguyen2021_certificate(PyramidalNet(3, [20, 4, 1], activation="relu"), X, Y)
    assert not deep.applies and any("n_2 = 4" in r for r in deep.reasons) and deep.alpha_0 == 0.0
    scaled = theory.nguyen2021_certificate(PyramidalNet(3, [20, 1], multipliers=[0.5]), X, Y)
    assert not scaled.applies and any("a_l = 1" in r for r in scaled.reasons)
    # a wide last hidden layer (non-pyramidal tail): the theorem applies with F_{L-1} from the tail
    wide = PyramidalNet(3, [8, 10, 1], activation="relu", allow_non_pyramidal=True, seed=1)
    cert = theory.nguyen2021_certificate(wide, X, Y)
    F2 = np.maximum(np.maximum(X @ wide.weights[0], 0) @ wide.weights[1], 0)
    assert cert.applies and cert.alpha_0 == pytest.approx(np.linalg.svd(F2, compute_uv=False)[-1], rel=1e-10)


# ------------------------------------------------------------------------------------------------ Nguyen & Mondelli
def test_nm2020_quantities_without_verdict(rng):
    X = rng.standard_normal((7, 3))
    net = PyramidalNet(3, [30, 5, 4, 2], activation="leaky_relu(0.2)", multipliers=[1.0, 0.7, 1.5], seed=3)
    q = theory.nm2020_quantities(net, X)
    F1 = sigma_and_derivative(net.activation, X @ net.weights[0], derivative=False)[0]
    s = lambda W: np.linalg.svd(W, compute_uv=False)  # noqa: E731
    assert q.lambda_F == pytest.approx(s(F1)[-1], rel=1e-7)
    assert set(q.lambda_l) == {3, 4}
    for l in (3, 4):
        assert q.lambda_l[l] == pytest.approx(s(net.weights[l - 1])[-1], rel=1e-10)
    for l in (1, 2, 3, 4):
        assert q.norms[l] == pytest.approx(s(net.weights[l - 1])[0], rel=1e-10)
    mu = (s(F1)[-1] * 0.2 * 0.7 * s(net.weights[2])[-1] * 0.2 * 1.5 * s(net.weights[3])[-1]) ** 2
    assert q.mu == pytest.approx(mu, rel=1e-6) and q.gamma == 0.2
    d = q.as_dict()
    assert not {"holds", "applies", "verdict"} & set(d) and "no verdict" in d["note"]


# ------------------------------------------------------------------------------------------------ PL certificate
def explicit_grad_W2(net, X, Y):
    """dPhi/dW_2 from the reference forward and the tail's backward (independent of the certificate code)."""
    W, act, mult = net.weights, net.activation, net.multipliers
    cache = tail_forward(reference.forward(X, W[0], W[1], act, mult[0]), W, act, mult)
    loss, G, _ = tail_backward(cache, Y, W, act, mult)
    return reference.gradients(X, W[0], W[1], G, act, mult[0])[1], float(loss)


def test_pl_certificate_is_tight_for_two_layers_when_the_residual_is_the_smallest_singular_vector(rng):
    """L = 2: ||grad_{W_2} Phi|| = ||F_1^T D|| >= sigma_min(F_1) ||D|| with equality when D is F_1's left singular
    vector of sigma_min. Choosing Y so that the residual is that vector checks mu_0 = sigma_min(F_1)^2 exactly."""
    N, d = 10, 4
    X = rng.standard_normal((N, d))
    net = PyramidalNet(d, [60, 1], activation="tanh", multipliers=[0.7], seed=3)
    F1 = 0.7 * np.tanh(X @ net.weights[0])
    U, S, _ = np.linalg.svd(F1, full_matrices=False)
    Y = F1 @ net.weights[1] - 3.0 * U[:, -1:]  # residual D = 3 u_min
    c = theory.pl_certificate(net, X, lr=0.01, backend="reference")
    assert c.available and c.reason is None and c.tail_sigma_min == {}
    assert c.mu == pytest.approx(S[-1] ** 2, rel=1e-8)
    g2, loss = explicit_grad_W2(net, X, Y)
    assert np.linalg.norm(g2) == pytest.approx(math.sqrt(2 * c.mu * loss), rel=1e-7)
    assert c.certified_factor == pytest.approx(1 - 0.01 * c.mu, rel=1e-14)


def test_pl_certificate_is_tight_through_an_identity_tail(rng):
    """L = 3, identity (gamma = 1, sigma' = 1), n_L = 1: D_2 = a_2 D_3 W_3^T, so ||grad_{W_2} Phi|| =
    a_2 ||F_1^T D_3|| ||W_3|| = sigma_min(F_1) a_2 sigma_min(W_3) ||D_3|| when D_3 is F_1's left singular vector of
    sigma_min: the bound of docs/theory.md section 4.1 is an equality, which checks the tail factor
    gamma a_{l-1} sigma_min(W_l)."""
    N, d = 6, 8  # d >= N so that the linear F_1 = a_1 X W_1 has full row rank
    X = rng.standard_normal((N, d))
    net = PyramidalNet(d, [40, 5, 1], activation="identity", multipliers=[0.7, 1.3], seed=5)
    F1 = 0.7 * X @ net.weights[0]
    U, S, _ = np.linalg.svd(F1, full_matrices=False)
    Y = net.forward(X, backend="reference") - 2.0 * U[:, -1:]
    c = theory.pl_certificate(net, X, backend="reference")
    w3 = np.linalg.norm(net.weights[2])
    assert c.gamma == 1.0 and c.tail_sigma_min[3] == pytest.approx(w3, rel=1e-12)
    assert c.mu == pytest.approx((S[-1] * 1.3 * w3) ** 2, rel=1e-8)
    g2, loss = explicit_grad_W2(net, X, Y)
    assert np.linalg.norm(g2) == pytest.approx(math.sqrt(2 * c.mu * loss), rel=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pl_certificate_along_a_trajectory_bounds_every_step(backend, rng):
    """A deep pyramidal net trained step by step at a small lr: at every step the PL inequality holds for the
    explicit gradient, the loss contracts at least by the certified factor 1 - lr mu_k, and pl_trajectory pairs the
    tracker's certificates with the steps they bound (the same numbers as pl_certificate at those weights)."""
    import pyrgd

    N, d = 12, 5
    X = rng.standard_normal((N, d))
    Y = rng.standard_normal((N, 1))
    net = PyramidalNet(d, [200, 6, 3, 1], activation="smooth_leaky_relu(0.3)", multipliers=[1.0, 1.2, 0.9], seed=2)
    start = net.copy()
    lr = 1e-3
    certs = []
    for k in range(8):
        c = theory.pl_certificate(net, X, lr=lr, backend=backend)
        g2, loss = explicit_grad_W2(net, X, Y)
        assert c.available and c.mu > 0 and set(c.tail_sigma_min) == {3, 4}
        assert np.linalg.norm(g2) >= math.sqrt(2 * c.mu * loss) * (1 - 1e-9)
        r = pyrgd.train(net, X, Y, lr=lr, steps=1, backend=backend, track_every=0, progress=False)
        assert r.history["loss"][1] <= c.certified_factor * r.history["loss"][0] * (1 + 1e-12)
        certs.append(c)
    run = pyrgd.train(start, X, Y, lr=lr, steps=8, backend=backend, track_every=2, progress=False)
    rows = theory.pl_trajectory(run)
    assert [r["step"] for r in rows] == [0, 2, 4, 6]  # step 8 bounds no step of this run
    for r in rows:
        k = r["step"]
        assert r["mu"] == pytest.approx(certs[k].mu, rel=1e-9)
        assert r["certified_factor"] == pytest.approx(certs[k].certified_factor, rel=1e-12)
        assert r["observed_factor"] == pytest.approx(run.history["loss"][k + 1] / run.history["loss"][k], rel=1e-14)
        assert r["holds"] is True


def test_pl_certificate_unavailable_and_bad_input(rng):
    import pyrgd

    X = rng.standard_normal((6, 3))
    Y = rng.standard_normal((6, 1))
    relu_deep = PyramidalNet(3, [30, 4, 1], activation="relu", seed=0)
    c = theory.pl_certificate(relu_deep, X, lr=0.1)
    assert not c.available and math.isnan(c.mu) and c.certified_factor is None and "gamma" in c.reason
    assert theory.pl_certificate(PyramidalNet(3, [30, 1], activation="relu"), X).available  # L = 2: any activation
    assert theory.pl_certificate(PyramidalNet(3, [30, 1]), X).certified_factor is None  # no lr
    with pytest.raises(PyrgdError, match="^lr"):
        theory.pl_certificate(relu_deep, X, lr=0.0)
    with pytest.raises(PyrgdError, match="^net"):
        theory.pl_certificate("net", X)
    untracked = pyrgd.train(PyramidalNet(3, [30, 1]), X, Y, lr=0.01, steps=3, track_every=0, progress=False)
    with pytest.raises(PyrgdError, match="^result: the run recorded no certificates"):
        theory.pl_trajectory(untracked)
    with pytest.raises(PyrgdError, match="^result"):
        theory.pl_trajectory({"loss": []})
    rows = theory.pl_trajectory(pyrgd.train(relu_deep, X, Y, lr=0.01, steps=3, track_every=1, progress=False))
    assert len(rows) == 3 and all(r["holds"] is None and r["certified_factor"] is None for r in rows)


# ------------------------------------------------------------------------------------------------ empirical NTK
def explicit_ntk(net, X):
    """J J^T from one backward pass per sample: Y = F - e_i makes D_L = e_i, so the gradients are dF_L[i]/dW."""
    W, act, mult = net.weights, net.activation, net.multipliers
    H = reference.forward(X, W[0], W[1], act, mult[0])
    cache = tail_forward(H, W, act, mult)
    F = cache[-1]
    rows = []
    for i in range(X.shape[0]):
        e = np.zeros_like(F)
        e[i, 0] = 1.0
        _, G, tail_grads = tail_backward(cache, F - e, W, act, mult)
        g1, g2 = reference.gradients(X, W[0], W[1], G, act, mult[0])
        rows.append(np.concatenate([g.ravel() for g in [g1, g2] + list(tail_grads)]))
    J = np.array(rows)
    return J @ J.T


@pytest.mark.parametrize("widths,spec,mult", [
    ([12, 1], "relu", None), ([12, 1], "tanh", [1.7]), ([10, 4, 1], "leaky_relu(0.1)", [1.0, 0.6]),
    ([9, 5, 3, 1], "softplus", [0.8, 1.2, 1.1]), ([9, 5, 3, 1], "relu", None)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_empirical_ntk_against_explicit_jacobian(widths, spec, mult, backend, rng):
    X = rng.standard_normal((6, 3))
    net = PyramidalNet(3, widths, activation=spec, multipliers=mult, seed=7, init="he")
    K = theory.empirical_ntk(net, X, backend=backend)
    Kx = explicit_ntk(net, X)
    np.testing.assert_allclose(K, Kx, rtol=1e-10, atol=1e-12 * np.abs(Kx).max())
    assert theory.ntk_lambda_min(net, X, backend=backend) == pytest.approx(np.linalg.eigvalsh(Kx)[0],
                                                                          abs=1e-9 * np.abs(Kx).max())


def test_empirical_ntk_of_a_float32_net_is_computed_in_float64(rng):
    X = rng.standard_normal((5, 3))
    net64 = PyramidalNet(3, [8, 1], activation="tanh", seed=1)
    net32 = PyramidalNet(3, [8, 1], activation="tanh", seed=1, dtype="float32")
    K32 = theory.empirical_ntk(net32, X.astype(np.float32), backend="reference")
    assert K32.dtype == np.float64
    net64.weights = [w.astype(np.float64) for w in net32.weights]
    np.testing.assert_allclose(K32, explicit_ntk(net64, X.astype(np.float32).astype(np.float64)), rtol=1e-10)


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_inputs_raise_pyrgd_error_naming_the_argument(rng):
    X = unit_rows(rng, 4, 3)
    K = X @ X.T
    net = PyramidalNet(3, [8, 1])
    cases = [
        (lambda: theory.du_gram(X, 0, "relu"), "H"),
        (lambda: theory.du_gram(X[0], 2, "relu"), "X"),
        (lambda: theory.du_gram(X, 2, "swish"), "activation"),
        (lambda: theory.du_gram(X, 2, "relu", last_layer_cov="A_H"), "last_layer_cov"),
        (lambda: theory.c_sigma("sigmoid"), "activation"),
        (lambda: theory.gaussian_gram(K[:, :3], "tanh"), "K"),
        (lambda: theory.gaussian_gram(K + np.triu(np.ones((4, 4)), 1), "tanh"), "K"),
        (lambda: theory.gaussian_gram(K, "tanh", method="magic"), "method"),
        (lambda: theory.gaussian_gram(K, "tanh", method="closed_form"), "method"),
        (lambda: theory.gaussian_gram(K, "tanh", derivative=1), "derivative"),
        (lambda: theory.gaussian_gram(K, "tanh", method="tensor", order=0), "order"),
        (lambda: theory.gaussian_pair_expectation([[1, 2], [2, 1]], "tanh"), "A"),
        (lambda: theory.gaussian_pair_expectation([1, 2, 3], "tanh"), "A"),
        (lambda: theory.empirical_ntk(PyramidalNet(3, [8, 2]), X), "net"),
        (lambda: theory.empirical_ntk("net", X), "net"),
        (lambda: theory.empirical_ntk(net, X[:, :2]), "X"),
        (lambda: theory.nguyen2021_certificate(net, X, np.zeros((3, 1))), "Y"),
        (lambda: theory.nguyen2021_certificate(net, X, np.zeros((4, 1)), C=-1.0), "C"),
        (lambda: theory.nguyen2021_certificate(net, X, np.zeros((4, 1)), C=[1.0]), "C"),
        (lambda: theory.nguyen2021_certificate(net, X, np.zeros((4, 1)), eta=0.0), "eta"),
        (lambda: theory.nm2020_quantities(net, X.astype(np.int64)), "X"),
        (lambda: theory.lambda_star_mc(X, "relu", n_samples=0), "n_samples"),
        (lambda: theory.lambda_star_mc(X, "relu", chunk=-3), "chunk"),
        (lambda: theory.lambda_star(X, "relu", w_var=-1.0), "w_var"),
    ]
    for call, name in cases:
        with pytest.raises(PyrgdError, match=rf"^{name}\b"):
            call()


# ------------------------------------------------------------------------------------------------ docs/theory.md
ROOT = pathlib.Path(__file__).resolve().parents[1]
#: the numbered sections of docs/theory.md; code and docs cite them by number ("docs/theory.md section 4.1")
DOC_SECTIONS = ["1", "2", "3", "4", "4.1", "4.2", "4.3", "4.4", "4.5", "5"]
_CITATION = re.compile(r"docs/theory\.md\s+(?:sections?\s+)?(\d+(?:\.\d+)?)((?:\s*(?:,|and)\s*\d+(?:\.\d+)?)*)")


def test_theory_doc_keeps_its_section_numbers():
    """docs/theory.md has exactly the numbered sections that the citations rely on, in order, and its sources."""
    text = (ROOT / "docs" / "theory.md").read_text()
    assert re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", text, re.M) == DOC_SECTIONS
    assert "\n## Sources\n" in text
    for arxiv in ("2002.07867", "2101.09612", "1811.03804", "2012.11654"):
        assert arxiv in text, arxiv


def test_every_citation_of_the_theory_doc_names_one_of_its_sections():
    """Each "docs/theory.md section X" (or "docs/theory.md X, ...", "sections X and Y") in the repository's code and
    docs names a section that exists."""
    files = [ROOT / "README.md"] + [f for folder in ("pyrgd", "tests", "bench", "csrc", "experiments", "docs")
                                    for ext in ("py", "md", "toml", "h", "cu", "cpp")
                                    for f in (ROOT / folder).rglob(f"*.{ext}")]
    cited = 0
    for f in files:
        if not f.is_file():
            continue
        for m in _CITATION.finditer(f.read_text(errors="replace")):
            for sec in [m.group(1)] + re.findall(r"\d+(?:\.\d+)?", m.group(2)):
                assert sec in DOC_SECTIONS, f"{f.relative_to(ROOT)}: docs/theory.md section {sec} does not exist"
                cited += 1
    assert cited >= 20  # pyrgd.theory, pyrgd.certify, the experiments and the tests cite it


# ------------------------------------------------------------------------------------------------ CuPy inputs
def _cupy_or_skip():
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError
    except Exception:
        pytest.skip("no CUDA device")
    return cp


@pytest.mark.gpu
def test_cupy_inputs_give_the_numpy_results(rng):
    cp = _cupy_or_skip()
    X = rng.standard_normal((9, 4))
    net = PyramidalNet(4, [16, 5, 1], activation="tanh", multipliers=[1.2, 0.8], seed=1)
    K = theory.empirical_ntk(net, cp.asarray(X))
    assert isinstance(K, cp.ndarray)
    np.testing.assert_allclose(K.get(), explicit_ntk(net, X), rtol=1e-10)
    a = theory.lambda_star_mc(cp.asarray(X), "relu", n_samples=3000, seed=2, chunk=1000)
    b = theory.lambda_star_mc(X, "relu", n_samples=3000, seed=2, chunk=1000, backend="reference")
    np.testing.assert_allclose(a.gram, b.gram, rtol=1e-10)
    q_gpu = theory.nm2020_quantities(net, cp.asarray(X))
    q_cpu = theory.nm2020_quantities(net, X, backend="reference")
    assert q_gpu.lambda_F == pytest.approx(q_cpu.lambda_F, rel=1e-8)
    assert q_gpu.norms == pytest.approx(q_cpu.norms, rel=1e-10)
    net2 = PyramidalNet(4, [16, 1], activation="relu", seed=5)
    Y = rng.standard_normal((9, 1))
    c_gpu = theory.nguyen2021_certificate(net2, cp.asarray(X), cp.asarray(Y))
    c_cpu = theory.nguyen2021_certificate(net2, X, Y, backend="reference")
    assert theory.pl_certificate(net2, cp.asarray(X), lr=0.01).mu == pytest.approx(
        theory.pl_certificate(net2, X, lr=0.01, backend="reference").mu, rel=1e-8)
    assert c_gpu.alpha_0 == pytest.approx(c_cpu.alpha_0, rel=1e-8)
    for name in ("initW", "initF", "initS"):
        assert c_gpu.conditions[name].rhs == pytest.approx(c_cpu.conditions[name].rhs, rel=1e-10)
