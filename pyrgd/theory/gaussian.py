"""Gaussian expectations of activations by Gauss-Hermite quadrature, evaluated in numba.

All formulas here are [derived] (standard quadrature; no paper constant is involved):

- 1-D: E_{z~N(0,1)}[h(z)] ~= sum_a w_a h(z_a) with the probabilists' Gauss-Hermite rule
  (``numpy.polynomial.hermite_e.hermegauss``, weight exp(-z^2/2)) and the weights divided by sqrt(2 pi), so that
  they sum to 1. Exact for polynomials of degree <= 2*order - 1.
- 2-D: for (u, v) ~ N(0, A), A = [[A11, A12], [A12, A22]] positive semi-definite, write A = L L^T with
  L = [[l11, 0], [l21, l22]] (a Cholesky factorization that tolerates rank 1: l11 = sqrt(A11),
  l21 = A12 / l11, l22 = sqrt(max(A22 - l21^2, 0)); l11 = 0 gives u = 0 and v = sqrt(A22) z2). Then u = l11 z1,
  v = l21 z1 + l22 z2 with z1, z2 iid N(0, 1) and
      E[f(u) g(v)] ~= sum_a w_a f(l11 z_a) sum_b w_b g(l21 z_a + l22 z_b)        (tensor rule, order^2 terms)
  When l22 = 0 (i == j, or collinear points) the inner sum collapses to g(l21 z_a) (order terms).
  Node pairs with w_a w_b below 1e-30 are skipped (their share is below double precision for any activation of
  at most linear growth); nodes where f vanishes (half of them for relu) are skipped.

Accuracy: smooth activations (softplus, tanh, erf, smooth_leaky_relu, identity) converge geometrically in the
order (64 nodes reach ~1e-12 at unit variances); the kinked ones (relu, leaky_relu) converge only algebraically,
since the kink of g(v) runs across the tensor grid: about 1e-4 absolute at order 64 for E[relu(u) relu(v)] and
somewhat worse for E[relu'(u) relu'(v)] (a step function). Use ``pyrgd.theory.relu_closed_form`` where exactness
matters for ReLU.

The activations inside the kernels are numba re-implementations of :mod:`pyrgd.activations` (same formulas, same
integer codes, relu'(0) = 0); a test checks that they agree on a grid.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from .._validate import check_positive_int, check_scalar
from ..activations import ACTIVATION_CODES, Activation, parse_activation
from ..errors import PyrgdError

__all__ = ["DEFAULT_ORDER", "gauss_hermite", "sigma_numba", "gaussian_expectation_1d", "gaussian_pair_expectation",
           "gaussian_gram"]

#: default number of Gauss-Hermite nodes per dimension
DEFAULT_ORDER = 64
_MAX_ORDER = 400
_PAIR_WEIGHT_CUTOFF = 1e-30

_RELU, _LEAKY, _SLRELU, _SOFTPLUS, _TANH, _ERF, _IDENTITY = (ACTIVATION_CODES[k] for k in (
    "relu", "leaky_relu", "smooth_leaky_relu", "softplus", "tanh", "erf", "identity"))
_LN2 = math.log(2.0)
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


# --------------------------------------------------------------------------------------------- activations in numba
@njit(cache=True)
def _act(code, gamma, x, deriv):
    """sigma(x) (deriv == 0) or sigma'(x) (deriv == 1) of the activation with integer ``code`` (float64)."""
    if code == 0:  # relu, relu'(0) = 0
        if deriv == 0:
            return x if x > 0.0 else 0.0
        return 1.0 if x > 0.0 else 0.0
    if code == 1:  # leaky_relu
        if deriv == 0:
            return x if x > 0.0 else gamma * x
        return 1.0 if x > 0.0 else gamma
    if code == 2 or code == 3:  # smooth_leaky_relu, softplus
        e = math.exp(-abs(x))
        if deriv == 0:
            sp = (x if x > 0.0 else 0.0) + math.log1p(e)
            if code == 3:
                return sp
            return gamma * x + (1.0 - gamma) * (sp - 0.6931471805599453)
        r = 1.0 / (1.0 + e)
        lg = r if x >= 0.0 else e * r
        if code == 3:
            return lg
        return gamma + (1.0 - gamma) * lg
    if code == 4:  # tanh
        t = math.tanh(x)
        if deriv == 0:
            return t
        return 1.0 - t * t
    if code == 5:  # erf
        if deriv == 0:
            return math.erf(x)
        return 1.1283791670955126 * math.exp(-x * x)
    # identity
    if deriv == 0:
        return x
    return 1.0


@njit(cache=True)
def _act_array(code, gamma, x, deriv):
    out = np.empty_like(x)
    for k in range(x.shape[0]):
        out[k] = _act(code, gamma, x[k], deriv)
    return out


def sigma_numba(act, x, derivative=False) -> np.ndarray:
    """sigma(x) or sigma'(x) of ``act`` evaluated by the numba kernels' own activation code (float64, 1-D x).

    For checking the kernels' activations against :mod:`pyrgd.activations`; not a fast path.
    """
    act = parse_activation(act)
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float64).ravel())
    return _act_array(act.code, float(act.gamma), x, 1 if derivative else 0)


# --------------------------------------------------------------------------------------------- nodes
_NODE_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def gauss_hermite(order: int = DEFAULT_ORDER) -> tuple[np.ndarray, np.ndarray]:
    """Nodes z (order,) and probability weights w (order,), sum(w) = 1, with sum_a w_a h(z_a) ~= E_{z~N(0,1)}[h(z)].

    [derived] numpy's probabilists' Gauss-Hermite rule (weight exp(-z^2/2)) divided by sqrt(2 pi).
    """
    order = check_positive_int("order", order)
    if order > _MAX_ORDER:
        raise PyrgdError(f"order: expected at most {_MAX_ORDER} quadrature nodes, got {order}")
    if order not in _NODE_CACHE:
        z, w = np.polynomial.hermite_e.hermegauss(order)
        w = w / math.sqrt(2.0 * math.pi)
        w = w / w.sum()  # remove the last rounding of the normalization
        _NODE_CACHE[order] = (np.ascontiguousarray(z), np.ascontiguousarray(w))
    z, w = _NODE_CACHE[order]
    return z.copy(), w.copy()


def _inner_ranges(w):
    """For each outer node a, the range [lo[a], hi[a]) of inner nodes b with w_a w_b >= the cutoff."""
    n = w.shape[0]
    lo = np.zeros(n, dtype=np.int64)
    hi = np.zeros(n, dtype=np.int64)
    for a in range(n):
        keep = np.nonzero(w[a] * w >= _PAIR_WEIGHT_CUTOFF)[0]
        if keep.size:
            lo[a], hi[a] = keep[0], keep[-1] + 1
    return lo, hi


# --------------------------------------------------------------------------------------------- kernels
@njit(cache=True)
def _pair(fw_row, l11, a12, a22, code, gamma, deriv, z, w, lo, hi, rank_tol):
    """E[f(u) g(v)] for (u, v) ~ N(0, [[l11^2, a12], [a12, a22]]), f = g = sigma or sigma'.

    fw_row[a] = w_a * f(l11 z_a) is precomputed by the caller (it depends on the row only).
    """
    n = z.shape[0]
    if a22 < 0.0:
        a22 = 0.0
    if l11 <= 0.0:  # u == 0: E = f(0) E[g(sqrt(a22) z)]
        f0 = _act(code, gamma, 0.0, deriv)
        if f0 == 0.0:
            return 0.0
        s = math.sqrt(a22)
        acc = 0.0
        for b in range(n):
            acc += w[b] * _act(code, gamma, s * z[b], deriv)
        return f0 * acc
    l21 = a12 / l11
    rem = a22 - l21 * l21
    if rem <= rank_tol * a22:  # rank 1 (up to rounding): v = l21 z1
        acc = 0.0
        for a in range(n):
            fa = fw_row[a]
            if fa != 0.0:
                acc += fa * _act(code, gamma, l21 * z[a], deriv)
        return acc
    l22 = math.sqrt(rem)
    acc = 0.0
    for a in range(n):
        fa = fw_row[a]
        if fa == 0.0:
            continue
        c = l21 * z[a]
        inner = 0.0
        for b in range(lo[a], hi[a]):
            inner += w[b] * _act(code, gamma, c + l22 * z[b], deriv)
        acc += fa * inner
    return acc


@njit(cache=True)
def _row_table(K, code, gamma, deriv, z, w):
    N = K.shape[0]
    n = z.shape[0]
    s = np.empty(N)
    fw = np.empty((N, n))
    for i in range(N):
        kii = K[i, i]
        s[i] = math.sqrt(kii) if kii > 0.0 else 0.0
        for a in range(n):
            fw[i, a] = w[a] * _act(code, gamma, s[i] * z[a], deriv)
    return s, fw


@njit(parallel=True, cache=True)
def _gram_kernel(K, code, gamma, deriv, z, w, lo, hi, rank_tol, out):
    """out[i, j] = E_{(u,v) ~ N(0, [[K_ii, K_ij], [K_ij, K_jj]])}[f(u) f(v)] for j >= i, mirrored to j < i.

    Rows i and N-1-i go to the same parallel iteration, so that every iteration owns N+1 pairs (load balance of
    the upper triangle).
    """
    N = K.shape[0]
    s, fw = _row_table(K, code, gamma, deriv, z, w)
    half = (N + 1) // 2
    for p in prange(half):
        pi = np.int64(p)  # the prange index may be unsigned; int64 arithmetic keeps indices integral
        for r in range(2):
            i = pi if r == 0 else N - 1 - pi
            if r == 1 and i == pi:
                continue
            for j in range(i, N):
                v = _pair(fw[i], s[i], K[i, j], K[j, j], code, gamma, deriv, z, w, lo, hi, rank_tol)
                out[i, j] = v
                out[j, i] = v


@njit(cache=True)
def _one_pair(a11, a12, a22, code, gamma, deriv, z, w, lo, hi, rank_tol):
    l11 = math.sqrt(a11) if a11 > 0.0 else 0.0
    n = z.shape[0]
    fw = np.empty(n)
    for a in range(n):
        fw[a] = w[a] * _act(code, gamma, l11 * z[a], deriv)
    return _pair(fw, l11, a12, a22, code, gamma, deriv, z, w, lo, hi, rank_tol)


_RANK_TOL = 1e-14


# --------------------------------------------------------------------------------------------- public API
def _which(derivative) -> int:
    if not isinstance(derivative, (bool, np.bool_)):
        raise PyrgdError(f"derivative: expected True (sigma') or False (sigma), got {derivative!r}")
    return 1 if derivative else 0


def gaussian_expectation_1d(act, var: float = 1.0, *, derivative: bool = False, power: int = 2,
                            order: int = 2 * DEFAULT_ORDER) -> float:
    """E_{z~N(0, var)}[f(z)^power] with f = sigma (or sigma' when ``derivative``), by 1-D Gauss-Hermite. [derived]

    With symmetric nodes the rule is exact for relu and leaky_relu with power 2 (the integrand is a quadratic on
    each half-line, and the rule integrates z^2 on the half-lines exactly by symmetry).
    """
    act = parse_activation(act)
    var = check_scalar("var", var, nonnegative=True)
    power = check_positive_int("power", power)
    z, w = gauss_hermite(order)
    vals = _act_array(act.code, float(act.gamma), z * math.sqrt(var), _which(derivative))
    return float(np.dot(w, vals ** power))


def gaussian_pair_expectation(A, act, *, derivative: bool = False, order: int = DEFAULT_ORDER) -> float:
    """E_{(u,v) ~ N(0, A)}[f(u) f(v)] for one 2x2 covariance A, f = sigma or sigma'. [derived] (module docstring)

    A: array-like (2, 2), symmetric positive semi-definite (rank 1 allowed).
    """
    A = np.asarray(A, dtype=np.float64) if not isinstance(A, np.ndarray) else A.astype(np.float64)
    if A.shape != (2, 2):
        raise PyrgdError(f"A: expected a 2x2 covariance matrix, got shape {A.shape}")
    if not np.all(np.isfinite(A)):
        raise PyrgdError("A: contains NaN or infinite values")
    if abs(A[0, 1] - A[1, 0]) > 1e-12 * max(1.0, abs(A[0, 1])):
        raise PyrgdError(f"A: expected a symmetric matrix, got {A.tolist()}")
    if A[0, 0] < 0 or A[1, 1] < 0 or A[0, 1] ** 2 > A[0, 0] * A[1, 1] * (1 + 1e-10) + 1e-300:
        raise PyrgdError(f"A: expected a positive semi-definite covariance, got {A.tolist()}")
    act = parse_activation(act)
    z, w = gauss_hermite(order)
    lo, hi = _inner_ranges(w)
    return float(_one_pair(float(A[0, 0]), float(A[0, 1]), float(A[1, 1]), act.code, float(act.gamma),
                           _which(derivative), z, w, lo, hi, _RANK_TOL))


def gaussian_gram(K, act, *, derivative: bool = False, order: int = DEFAULT_ORDER) -> np.ndarray:
    """E (N, N) with E_ij = E_{(u,v) ~ N(0, [[K_ii, K_ij], [K_ji, K_jj]])}[f(u) f(v)], f = sigma or sigma'.

    [derived] 2-D Gauss-Hermite per pair (module docstring), in numba, parallel over the rows (prange), one
    evaluation per unordered pair (E is symmetric). K: (N, N) symmetric positive semi-definite float array (its
    upper triangle is read). Cost: about N^2/2 * order^2 / 2 activation evaluations (fewer for relu).
    """
    K = _check_gram("K", K)
    act = parse_activation(act)
    z, w = gauss_hermite(order)
    lo, hi = _inner_ranges(w)
    out = np.empty_like(K)
    _gram_kernel(K, act.code, float(act.gamma), _which(derivative), z, w, lo, hi, _RANK_TOL, out)
    return out


def _check_gram(name, K) -> np.ndarray:
    if not isinstance(K, np.ndarray):
        raise PyrgdError(f"{name}: expected a numpy.ndarray (N, N), got {type(K).__name__}")
    if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape[0] == 0:
        raise PyrgdError(f"{name}: expected a non-empty square (N, N) matrix, got shape {K.shape}")
    if K.dtype.kind not in "fiu":
        raise PyrgdError(f"{name}: expected a real matrix, got dtype {K.dtype}")
    K = np.ascontiguousarray(K, dtype=np.float64)
    if not np.all(np.isfinite(K)):
        raise PyrgdError(f"{name}: contains NaN or infinite values")
    scale = max(float(np.max(np.abs(K))), 1e-300)
    if float(np.max(np.abs(K - K.T))) > 1e-10 * scale:
        raise PyrgdError(f"{name}: expected a symmetric matrix")
    if np.any(np.diag(K) < -1e-12 * scale):
        raise PyrgdError(f"{name}: expected a positive semi-definite matrix (its diagonal has negative entries)")
    return K


def _as_activation(act) -> Activation:
    return parse_activation(act)
