"""The empirical NTK of a single-output network from streamed Gram blocks, and lambda_* of the wide layer.

Empirical NTK [derived: docs/theory.md section 5, notation of section 1]. Single output (n_L = 1); B_l := dF_L/dZ_l
(N, n_l), row i holding the derivative of sample i's output with respect to its own pre-activations Z_l[i, :]. Since
F_L = F_{L-1} W_L is linear, B_L = 1 (N, 1); for the hidden layers l = L-1..1, F_l = a_l sigma(Z_l) and
Z_{l+1} = F_l W_{l+1} give
    B_l = a_l (B_{l+1} W_{l+1}^T) (.) sigma'(Z_l).
dF_L[i]/dW_l = F_{l-1}[i, :]^T B_l[i, :] (an outer product), so
    K = J J^T = sum_{l=1}^{L} (F_{l-1} F_{l-1}^T) (.) (B_l B_l^T)        (N, N).
Layer 1: (X X^T) (.) B_1 B_1^T, with B_1 B_1^T = ops.wide_gram(X, W_1, W2=W_2, B2=B_2) streamed over the neurons;
layer 2: ops.wide_gram(X, W_1) (= F_1 F_1^T) (.) (B_2 B_2^T); layers >= 3 from the small tail matrices. Nothing
N x n_1 is stored (with the cpu/cuda backends).

lambda_* [derived: docs/theory.md section 4.5]: lambda_min of G = E_w[sigma(X w) sigma(X w)^T] with
w ~ N(0, w_var I_d), w_var = 1/d by default (the LeCun scaling of the wide layer's columns).
G_ij = E_{(u,v) ~ N(0, w_var [[x_i.x_i, x_i.x_j], [., x_j.x_j]])}[sigma(u) sigma(v)]: :func:`lambda_star` evaluates
it by the Gaussian quadratures of :mod:`pyrgd.theory.gaussian`, :func:`lambda_star_mc` by Monte Carlo over m columns
w, streamed in chunks through ops.wide_gram and divided by m (error O(m^{-1/2})).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .. import ops
from .._validate import array_module, check_float_array, check_positive_int, check_scalar
from ..activations import parse_activation, sigma_and_derivative
from ..errors import PyrgdError
from ..tail import tail_forward
from ._common import check_net, net_inputs, to_host
from .gaussian import gaussian_gram

__all__ = ["empirical_ntk", "ntk_lambda_min", "LambdaStar", "lambda_star", "lambda_star_mc"]


def empirical_ntk(net, X, *, backend="auto"):
    """K = J J^T (N, N), the empirical NTK of a single-output net at its current weights, from streamed blocks.

    [derived: docs/theory.md section 5; formulas in the module docstring]. net: a :class:`pyrgd.PyramidalNet` with
    n_L = 1; X (N, d), NumPy or CuPy. Returns an (N, N) float64 array on X's device.
    """
    net = check_net(net)
    if net.widths[-1] != 1:
        raise PyrgdError(f"net: the empirical NTK here is for single-output networks (n_L = 1), got n_L = "
                         f"{net.widths[-1]}")
    xp, X64, W = net_inputs(net, X)
    act, mult, L = net.activation, net.multipliers, net.L
    N = X64.shape[0]
    Hw = ops.wide_forward(X64, W[0], W[1], activation=act, a1=mult[0], backend=backend)
    cache = tail_forward(Hw, W, act, mult)  # [Z_2, F_2, Z_3, F_3, ..., Z_L]
    K = xp.zeros((N, N), dtype=xp.float64)
    B = xp.ones((N, 1), dtype=xp.float64)  # B_L
    for l in range(L, 2, -1):  # tail layers l = L..3: F_{l-1} = cache[2(l-3)+1], Z_{l-1} = cache[2(l-3)]
        F = cache[2 * (l - 3) + 1]
        K += (F @ F.T) * (B @ B.T)
        _, dS = sigma_and_derivative(act, cache[2 * (l - 3)], value=False)
        B = mult[l - 2] * (B @ W[l - 1].T) * dS  # B_{l-1} = a_{l-1} (B_l W_l^T) (.) sigma'(Z_{l-1})
    B = xp.ascontiguousarray(B)  # B_2 (N, n_2)
    K += ops.wide_gram(X64, W[0], activation=act, a1=mult[0], backend=backend) * (B @ B.T)
    K += (X64 @ X64.T) * ops.wide_gram(X64, W[0], activation=act, a1=mult[0], W2=W[1], B2=B, backend=backend)
    return K


def ntk_lambda_min(net, X, *, backend="auto") -> float:
    """lambda_min(J J^T) of :func:`empirical_ntk`, a Python float [derived: docs/theory.md section 5; the quantity
    of section 4.5]."""
    K = to_host(empirical_ntk(net, X, backend=backend))
    return float(np.linalg.eigvalsh(np.asarray(K))[0])


class LambdaStar(NamedTuple):
    """value = lambda_min(gram); gram (N, N) float64 (NumPy); n_samples (0 for the quadrature); w_var."""

    value: float
    gram: np.ndarray
    n_samples: int
    w_var: float


def _w_var(w_var, d):
    return 1.0 / d if w_var is None else check_scalar("w_var", w_var, positive=True)


def lambda_star(X, act, *, w_var=None, method="auto", order=None) -> LambdaStar:
    """lambda_* = lambda_min(E_w[sigma(X w) sigma(X w)^T]), w ~ N(0, w_var I_d) (w_var = 1/d by default), by the
    Gaussian quadratures of :func:`pyrgd.theory.gaussian.gaussian_gram` applied to w_var X X^T.
    [derived: docs/theory.md section 4.5]

    X: (N, d) NumPy float array (used in float64). Returns :class:`LambdaStar` (n_samples = 0).
    """
    X = check_float_array("X", X, 2)
    if not isinstance(X, np.ndarray):
        raise PyrgdError("X: lambda_star runs on the host; pass a numpy array")
    act = parse_activation(act)
    v = _w_var(w_var, X.shape[1])
    X64 = X.astype(np.float64, copy=False)
    G = gaussian_gram(v * (X64 @ X64.T), act, method=method, order=order)
    return LambdaStar(float(np.linalg.eigvalsh(G)[0]), G, 0, v)


def lambda_star_mc(X, act, *, n_samples: int = 100_000, seed=0, chunk: int = 4096, w_var=None,
                   backend="auto") -> LambdaStar:
    """Monte Carlo lambda_*: G_m = (1/m) sum_{k<m} sigma(X w_k) sigma(X w_k)^T, w_k iid N(0, w_var I_d), streamed in
    chunks of ``chunk`` columns through ops.wide_gram (nothing N x m is stored).
    [derived: docs/theory.md section 4.5]

    X: (N, d) NumPy or CuPy float array (computed in float64; the random columns are drawn on the host by
    numpy.random.default_rng(seed), one sample after the other, so a seed gives the same estimate for every chunk size
    and backend, up to rounding). w_var = 1/d by default.
    Returns :class:`LambdaStar` with the NumPy Gram; its entries have standard error O(m^{-1/2}).
    """
    X = check_float_array("X", X, 2)
    xp = array_module(X)
    act = parse_activation(act)
    m = check_positive_int("n_samples", n_samples)
    chunk = check_positive_int("chunk", chunk)
    d = X.shape[1]
    v = _w_var(w_var, d)
    X64 = X.astype(xp.float64, copy=False)
    rng = np.random.default_rng(seed)
    G = xp.zeros((X.shape[0],) * 2, dtype=xp.float64)
    done = 0
    while done < m:
        c = min(chunk, m - done)
        Wc = xp.asarray(np.ascontiguousarray(rng.standard_normal((c, d)).T) * math.sqrt(v))  # sample k = row k
        G += ops.wide_gram(X64, Wc, activation=act, backend=backend)
        done += c
    G = np.asarray(to_host(G)) / m
    return LambdaStar(float(np.linalg.eigvalsh(G)[0]), G, m, v)
