"""Gaussian expectations of activations, E_{(u,v) ~ N(0, A)}[f(u) f(v)] with f = sigma or sigma', in numba.

docs/theory.md section 4.4. Everything here is [derived] (standard quadrature and Mehler's formula; no paper
constant is involved), except the ReLU arc-cosine closed form, which is [paper: Du et al. 2019].

- 1-D Gauss-Hermite: E_{z~N(0,1)}[h(z)] ~= sum_a w_a h(z_a) with the probabilists' rule (the rule of
  ``numpy.polynomial.hermite_e.hermegauss``, weight exp(-z^2/2)), the weights divided by sqrt(2 pi) to sum to 1.
  Exact for polynomials of degree <= 2*order - 1.
- ``tensor`` (2-D Gauss-Hermite on a Cholesky grid): A = L L^T with L = [[l11, 0], [l21, l22]], a factorization that
  tolerates rank 1 (l11 = sqrt(A11), l21 = A12 / l11, l22 = sqrt(max(A22 - l21^2, 0)); l11 = 0 means u = 0), so
  u = l11 z1, v = l21 z1 + l22 z2 with z1, z2 iid N(0, 1) and
      E[f(u) g(v)] ~= sum_a w_a f(l11 z_a) sum_b w_b g(l21 z_a + l22 z_b)        (order^2 terms per pair).
  When l22 = 0 (i == j, collinear points) the inner sum collapses to g(l21 z_a). Node pairs with w_a w_b < 1e-30
  and nodes where f vanishes (half of them for relu) are skipped. Any activation; geometric convergence for the
  smooth ones at unit variances, only algebraic for relu and leaky_relu (the kink of g(v) runs across the grid:
  measured 2e-3 absolute error for E[relu relu] and 3e-2 for E[relu' relu'] at order 64).
- ``series`` (Mehler's formula): with s_i = sqrt(K_ii), rho = K_ij / (s_i s_j) and the orthonormal Hermite
  polynomials h_k = He_k / sqrt(k!),  E[f(s_i z) f(s_j z')] = sum_k rho^k c_k(i) c_k(j), corr(z, z') = rho,
  c_k(i) = E_z[f(s_i z) h_k(z)], the coefficients computed by 1-D Gauss-Hermite. O(terms) work per pair instead of
  O(order^2), and more accurate than ``tensor`` for the smooth activations (1e-14 against scipy dblquad for tanh
  and erf at variance 4, where ``tensor`` at order 64 is off by 7e-5).
- ``closed_form``: exact for relu, leaky_relu and identity (:func:`piecewise_linear_closed_form`).

The activations inside the kernels are numba re-implementations of :mod:`pyrgd.activations` (same formulas, same
integer codes, relu'(0) = 0); a test checks that they agree on a grid.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.special
from numba import njit, prange

from .._validate import check_positive_int, check_scalar
from ..activations import ACTIVATION_CODES, parse_activation
from ..errors import PyrgdError

__all__ = ["DEFAULT_ORDER", "METHODS", "gauss_hermite", "sigma_numba", "gaussian_expectation_1d",
           "gaussian_pair_expectation", "gaussian_gram", "piecewise_linear_closed_form", "relu_closed_form"]

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

    [derived] the probabilists' Gauss-Hermite rule (weight exp(-z^2/2): numpy's ``hermegauss`` up to 300 nodes,
    ``scipy.special.roots_hermitenorm`` beyond, where hermegauss overflows) divided by sqrt(2 pi).
    """
    order = check_positive_int("order", order)
    if order > _MAX_ORDER:
        raise PyrgdError(f"order: expected at most {_MAX_ORDER} quadrature nodes, got {order}")
    z, w = _nodes(order)
    return z.copy(), w.copy()


def _nodes(Q):
    """The cached rule of Q nodes (not copied: callers must not modify it)."""
    if Q not in _NODE_CACHE:
        if Q <= 300:  # numpy's hermegauss polishes the nodes by a Newton step: the most accurate weights
            z, w = np.polynomial.hermite_e.hermegauss(Q)
        else:  # hermegauss overflows beyond ~500 nodes; scipy computes the same rule asymptotically
            z, w = scipy.special.roots_hermitenorm(Q)
        w = w / w.sum()
        _NODE_CACHE[Q] = (np.ascontiguousarray(z), np.ascontiguousarray(w))
    return _NODE_CACHE[Q]


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


# --------------------------------------------------------------------------------------------- Hermite series
@njit(cache=True)
def _hermite_functions(z, sqw, M):
    """q[k, a] = sqrt(w_a) He_k(z_a) / sqrt(k!) for k < M, by the three-term recurrence of the normalized
    probabilists' Hermite polynomials h_{k+1} = (z h_k - sqrt(k) h_{k-1}) / sqrt(k+1), scaled by sqrt(w_a) from the
    start so that nothing overflows at the outer nodes."""
    Q = z.shape[0]
    q = np.zeros((M, Q))
    for a in range(Q):
        prev = 0.0
        cur = sqw[a]
        q[0, a] = cur
        for k in range(M - 1):
            nxt = (z[a] * cur - math.sqrt(k) * prev) / math.sqrt(k + 1.0)
            prev = cur
            cur = nxt
            q[k + 1, a] = cur
    return q


@njit(cache=True)
def _activation_table(s, code, gamma, deriv, z, scale):
    """T[i, a] = scale_a * f(s_i z_a)."""
    N = s.shape[0]
    Q = z.shape[0]
    T = np.empty((N, Q))
    for i in range(N):
        for a in range(Q):
            T[i, a] = scale[a] * _act(code, gamma, s[i] * z[a], deriv)
    return T


@njit(parallel=True, cache=True)
def _series_kernel(K, s, C, diag, out):
    """out[i, j] = sum_k rho_ij^k C[i, k] C[j, k] with rho_ij = K_ij / (s_i s_j) clipped to [-1, 1] (Mehler's
    formula); out[i, i] = diag[i]. Rows i and N-1-i share one parallel iteration (load balance)."""
    N = K.shape[0]
    M = C.shape[1]
    half = (N + 1) // 2
    for p in prange(half):
        pi = np.int64(p)
        for r in range(2):
            i = pi if r == 0 else N - 1 - pi
            if r == 1 and i == pi:
                continue
            out[i, i] = diag[i]
            for j in range(i + 1, N):
                den = s[i] * s[j]
                rho = K[i, j] / den if den > 0.0 else 0.0
                if rho > 1.0:
                    rho = 1.0
                elif rho < -1.0:
                    rho = -1.0
                acc = 0.0
                pw = 1.0
                for k in range(M):
                    acc += pw * C[i, k] * C[j, k]
                    pw *= rho
                    if abs(pw) < 1e-18:
                        break
                out[i, j] = acc
                out[j, i] = acc


# --------------------------------------------------------------------------------------------- public API
#: how :func:`gaussian_gram` computes the expectations
METHODS = ("auto", "closed_form", "series", "tensor")
#: activations with an exact closed form (piecewise linear with the kink at 0: gamma x + (1 - gamma) relu(x))
CLOSED_FORM_ACTIVATIONS = ("relu", "leaky_relu", "identity")
DEFAULT_SERIES_TERMS = 128
#: the series doubles its number of terms up to this cap until the Hermite coefficients have decayed
MAX_SERIES_TERMS = 2048
_SERIES_TAIL_TOL = 1e-12


def _which(derivative) -> int:
    if not isinstance(derivative, (bool, np.bool_)):
        raise PyrgdError(f"derivative: expected True (sigma') or False (sigma), got {derivative!r}")
    return 1 if derivative else 0


def gaussian_expectation_1d(act, var: float = 1.0, *, derivative: bool = False, power: int = 2,
                            order: int = 2 * DEFAULT_ORDER) -> float:
    """E_{z~N(0, var)}[f(z)^power] with f = sigma (or sigma' when ``derivative``), by 1-D Gauss-Hermite. [derived]

    With symmetric nodes the rule is exact for relu and leaky_relu with power 2 (on each half-line the integrand
    is c z^2, and the symmetric rule integrates z^2 1{z > 0} as half of z^2, exactly).
    """
    act = parse_activation(act)
    var = check_scalar("var", var, nonnegative=True)
    power = check_positive_int("power", power)
    z, w = gauss_hermite(order)
    vals = _act_array(act.code, float(act.gamma), z * math.sqrt(var), _which(derivative))
    return float(np.dot(w, vals ** power))


def gaussian_pair_expectation(A, act, *, derivative: bool = False, order: int = DEFAULT_ORDER) -> float:
    """E_{(u,v) ~ N(0, A)}[f(u) f(v)] for one 2x2 covariance A, f = sigma or sigma', by the tensor 2-D
    Gauss-Hermite rule with ``order`` nodes per dimension. [derived] (module docstring)

    A: array-like (2, 2), symmetric positive semi-definite (rank 1 allowed).
    """
    try:
        A = np.array(A, dtype=np.float64)
    except (TypeError, ValueError):
        raise PyrgdError(f"A: expected a 2x2 real covariance matrix, got {A!r}") from None
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


def piecewise_linear_closed_form(K, gamma: float, *, derivative: bool = False) -> np.ndarray:
    """Exact E_ij for sigma(x) = gamma x + (1 - gamma) relu(x) (relu: gamma = 0; leaky_relu; identity: gamma = 1).

    With s_i = sqrt(K_ii), cos t_ij = K_ij / (s_i s_j) (clipped to [-1, 1]):
      relu [paper: Du et al. 2019, docs/theory.md section 4.4, arc-cosine kernel]:
        R_ij = E[relu(u) relu(v)] = s_i s_j (sin t + (pi - t) cos t) / (2 pi);  P_ij = E[relu'(u) relu'(v)]
        = (pi - t) / (2 pi)  (0 when s_i s_j = 0, as relu'(0) = 0).
      general gamma [derived]: E[u relu(v)] = K_ij / 2 (the map (u, v) -> (-u, -v) splits E[uv] in two halves),
        so E[sigma(u) sigma(v)] = gamma K_ij + (1 - gamma)^2 R_ij, and with P_i = P(u_i > 0) (1/2, or 0 when s_i = 0)
        E[sigma'(u) sigma'(v)] = gamma^2 + gamma (1 - gamma)(P_i + P_j) + (1 - gamma)^2 P_ij (diagonal: P_ii = P_i).
    K: (N, N) symmetric PSD. Returns (N, N).
    """
    K = _check_gram("K", K)
    g = check_scalar("gamma", gamma)
    if not 0.0 <= g <= 1.0:
        raise PyrgdError(f"gamma: expected a slope in [0, 1], got {gamma!r}")
    s = np.sqrt(np.clip(np.diag(K), 0.0, None))
    ss = np.outer(s, s)
    pos = ss > 0
    c = np.zeros_like(K)
    np.divide(K, ss, out=c, where=pos)
    np.clip(c, -1.0, 1.0, out=c)
    np.fill_diagonal(c, np.where(s > 0, 1.0, 0.0))
    t = np.arccos(c)
    if derivative:
        P = np.where(pos, (np.pi - t) / (2 * np.pi), 0.0)
        Pi = np.where(s > 0, 0.5, 0.0)
        return g * g + g * (1 - g) * (Pi[:, None] + Pi[None, :]) + (1 - g) ** 2 * P
    R = ss * (np.sqrt(np.clip(1.0 - c * c, 0.0, None)) + (np.pi - t) * c) / (2 * np.pi)
    np.fill_diagonal(R, s * s / 2)
    return g * K + (1 - g) ** 2 * R


def relu_closed_form(K) -> tuple[np.ndarray, np.ndarray]:
    """(E[relu(u) relu(v)], E[relu'(u) relu'(v)]) for every pair, (u, v) ~ N(0, [[K_ii, K_ij], [K_ji, K_jj]]).

    [paper: Du et al. 2019 (arXiv 1811.03804v4); docs/theory.md section 4.4] the arc-cosine kernel: with
    cos t = K_ij/sqrt(K_ii K_jj), E[sigma(u)sigma(v)] = sqrt(K_ii K_jj)(sin t + (pi - t) cos t)/(2 pi) and
    E[sigma'(u)sigma'(v)] = (pi - t)/(2 pi).
    K: (N, N) symmetric PSD NumPy array. Returns two (N, N) float64 arrays. A cross-check of the quadratures.
    """
    return (piecewise_linear_closed_form(K, 0.0), piecewise_linear_closed_form(K, 0.0, derivative=True))


def gaussian_gram(K, act, *, derivative: bool = False, method: str = "auto", order: int | None = None
                  ) -> np.ndarray:
    """E (N, N) with E_ij = E_{(u,v) ~ N(0, [[K_ii, K_ij], [K_ji, K_jj]])}[f(u) f(v)], f = sigma (or sigma').

    K: (N, N) symmetric positive semi-definite (its upper triangle is read). Every method evaluates each unordered
    pair once (E is symmetric), in numba, parallel over the rows (prange). [derived] unless said otherwise.

    method:
      ``closed_form``: exact, for relu, leaky_relu and identity (:func:`piecewise_linear_closed_form`).
      ``series``: Mehler's formula E_ij = sum_{k < order} rho_ij^k c_k(i) c_k(j) with rho_ij = K_ij/sqrt(K_ii K_jj)
          and c_k(i) = E_z[f(sqrt(K_ii) z) He_k(z)] / sqrt(k!), the Hermite coefficients computed by a 1-D
          Gauss-Hermite rule of 2*order + 32 nodes; the diagonal by the 1-D rule directly. Spectrally accurate for
          the smooth activations (softplus, smooth_leaky_relu, tanh, erf) and O(order) work per pair; order =
          number of terms to start from (default 128): the number is doubled (up to 2048) until the energy of the
          last quarter of the coefficients is below 1e-12 of the total; a RuntimeWarning says when even the cap
          is not enough (relu, whose kink makes the series converge only algebraically; or very large variances
          K_ii, where sigma(sqrt(K_ii) z) is nearly a step).
      ``tensor``: the 2-D Gauss-Hermite rule on a Cholesky grid (module docstring), order = nodes per dimension
          (default 64); any activation, O(order^2) work per pair; algebraic convergence for relu/leaky_relu.
      ``auto``: closed_form where it exists, series otherwise.
    """
    K = _check_gram("K", K)
    act = parse_activation(act)
    deriv = _which(derivative)
    if not isinstance(method, str) or method not in METHODS:
        raise PyrgdError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    if method == "auto":
        method = "closed_form" if act.name in CLOSED_FORM_ACTIVATIONS else "series"
    if method == "closed_form":
        if act.name not in CLOSED_FORM_ACTIVATIONS:
            raise PyrgdError(f"method: 'closed_form' exists for {', '.join(CLOSED_FORM_ACTIVATIONS)}, not {act}; "
                             "use 'series' or 'tensor'")
        g = {"relu": 0.0, "identity": 1.0}.get(act.name, act.gamma)
        return piecewise_linear_closed_form(K, g, derivative=bool(deriv))
    if method == "tensor":
        z, w = gauss_hermite(DEFAULT_ORDER if order is None else order)
        lo, hi = _inner_ranges(w)
        out = np.empty_like(K)
        _gram_kernel(K, act.code, float(act.gamma), deriv, z, w, lo, hi, _RANK_TOL, out)
        return out
    M = DEFAULT_SERIES_TERMS if order is None else check_positive_int("order", order)
    if M > MAX_SERIES_TERMS:
        raise PyrgdError(f"order: expected at most {MAX_SERIES_TERMS} series terms, got {M}")
    s = np.sqrt(np.clip(np.diag(K), 0.0, None))
    while True:  # double the number of terms until the coefficients have decayed (or the cap is reached)
        C, diag, tail = _series_coefficients(s, act, deriv, M)
        if tail <= _SERIES_TAIL_TOL or M >= MAX_SERIES_TERMS:
            break
        M = min(2 * M, MAX_SERIES_TERMS)
    if tail > _SERIES_TAIL_TOL:
        warnings.warn(f"gaussian_gram: the Hermite series of {act}{chr(39) if deriv else ''} has not converged in "
                      f"{M} terms (tail energy {tail:.1e} of the total); use method='closed_form' or 'tensor'",
                      RuntimeWarning, stacklevel=2)
    out = np.empty_like(K)
    _series_kernel(K, s, C, diag, out)
    return out


def _series_coefficients(s, act, deriv, M):
    """(C, diag, tail): C (N, M) the normalized Hermite coefficients c_k(i) = E_z[f(s_i z) h_k(z)], diag (N,) the
    1-D values E_z[f(s_i z)^2], tail the largest share of the energy sum_k c_k(i)^2 in the last quarter of the
    terms (a proxy for the truncation error)."""
    z, w = _nodes(2 * M + 32)
    sqw = np.sqrt(w)
    T = _activation_table(s, act.code, float(act.gamma), deriv, z, sqw)  # sqrt(w_a) f(s_i z_a)
    C = np.ascontiguousarray(T @ _hermite_functions(z, sqw, M).T)
    diag = np.einsum("ia,ia->i", T, T)
    last = C[:, (3 * M) // 4:]
    tail = float((np.einsum("ik,ik->i", last, last) / np.maximum(diag, 1e-300)).max())
    return C, diag, tail


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
