"""Convergence tracking: the quantities of docs/theory.md section 4.1, measured along a GD trajectory.

Every step the trainer records the loss, the observed contraction factor Phi_{k+1}/Phi_k and the gradient norms.
Every ``track_every`` steps :func:`certificate` computes from the current weights:
  sigma_min(F_1)  from the streamed Gram F_1 F_1^T (N x N; its smallest eigenvalue, clipped at 0, square-rooted),
  sigma_min(W_l), ||W_l||_2 for the tail layers l = 3..L,
  mu = (sigma_min(F_1) prod_{l=3}^{L} gamma a_{l-1} sigma_min(W_l))^2, the PL constant of section 4.1, where
       gamma > 0 bounds sigma' from below (leaky_relu, smooth_leaky_relu, identity; for L = 2 any activation),
  the certified factor 1 - lr mu (valid while lr is below 1/(local smoothness)),
  ||W_l(k) - W_l(0)||_F for every layer.
"""
from __future__ import annotations

import math

import numpy as np



def smallest_singular_value_from_gram(K) -> float:
    """sqrt(max(lambda_min(K), 0)) for a symmetric PSD Gram matrix K = F F^T (NumPy or CuPy), in float64."""
    xp = np if isinstance(K, np.ndarray) else __import__("cupy")
    lam = xp.linalg.eigvalsh(K.astype(xp.float64, copy=False))
    return math.sqrt(max(float(lam[0]), 0.0))


def tail_singular_values(W) -> tuple[float, float]:
    """(sigma_min, ||W||_2) of a tail weight W (n_{l-1} x n_l). sigma_min is the n_l-th singular value when
    n_{l-1} >= n_l (the bound ||v W^T|| >= sigma_min ||v|| holds) and 0 otherwise."""
    Wh = np.asarray(W.get() if hasattr(W, "get") and not isinstance(W, np.ndarray) else W, dtype=np.float64)
    s = np.linalg.svd(Wh, compute_uv=False)
    smin = float(s[-1]) if Wh.shape[0] >= Wh.shape[1] else 0.0
    return smin, float(s[0])


def pl_constant(sigma_min_F1: float, tail_sigma_min: list[float], act, multipliers) -> float:
    """mu of docs/theory.md section 4.1, a Python float; nan when the tail needs a positive lower bound gamma of sigma'
    and the activation has none."""
    if not tail_sigma_min:
        return sigma_min_F1 ** 2
    gamma = act.derivative_lower_bound
    if gamma is None:
        return float("nan")
    prod = sigma_min_F1
    for i, s in enumerate(tail_sigma_min):  # layer l = 3 + i uses a_{l-1} = multipliers[l - 2]
        prod *= gamma * multipliers[i + 1] * s
    return prod * prod


def certificate(X, weights, initial_weights, act, multipliers, lr, backend, lambda_min=None) -> dict:
    """The tracked quantities at the current weights (see the module docstring).

    X (N, d) and the lists weights, initial_weights = [W_1, ..., W_L] (W_l (n_{l-1}, n_l)): arrays of one module,
    NumPy or CuPy; act: an :class:`pyrgd.activations.Activation`; multipliers: [a_1, ..., a_{L-1}]; lr: the step
    size (a float); backend: the wide layer's backend. Returns a dict of Python floats: sigma_min_F1,
    sigma_min_W{l} and norm_W{l} for l = 3..L, mu, certified_factor (nan when mu is), dist_W{l} for l = 1..L.
    lambda_min: lambda_min(F_1 F_1^T) obtained elsewhere (e.g. a matrix-free estimate): no Gram is formed.
    """
    if lambda_min is None:
        from .spectrum import exact_lambda_min

        lambda_min = exact_lambda_min(X, weights[0], act, multipliers[0], backend)
    s_f1 = math.sqrt(max(float(lambda_min), 0.0))
    row = {"sigma_min_F1": s_f1}
    smins = []
    for l in range(3, len(weights) + 1):
        smin, snorm = tail_singular_values(weights[l - 1])
        row[f"sigma_min_W{l}"] = smin
        row[f"norm_W{l}"] = snorm
        smins.append(smin)
    mu = pl_constant(s_f1, smins, act, multipliers)
    row["mu"] = mu
    row["certified_factor"] = 1.0 - lr * mu if math.isfinite(mu) else float("nan")
    for l, (w, w0) in enumerate(zip(weights, initial_weights), start=1):
        diff = w - w0
        row[f"dist_W{l}"] = float(math.sqrt(float((diff * diff).sum())))
    return row
