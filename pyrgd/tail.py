"""The pyramidal tail (layers 2..L) on NumPy or CuPy arrays: small dense products, run by the array library's BLAS.

Notation of docs/theory.md section 1. The wide layer's output H = Z_2 (N, n_2) comes from a kernel; the tail computes
F_2 = a_2 sigma(Z_2), Z_3 = F_2 W_3, ..., F_L = F_{L-1} W_L, the loss Phi = 1/2 ||F_L - Y||_F^2, and backwards
D_L = F_L - Y, dPhi/dW_l = F_{l-1}^T D_l (l >= 3), D_l = a_l (D_{l+1} W_{l+1}^T) (.) sigma'(Z_l) down to D_2,
which is the G = dPhi/dZ_2 that the wide layer's step consumes. With L = 2 the tail is empty: F_L = H, G = H - Y.
"""
from __future__ import annotations

from .activations import sigma_and_derivative


def tail_forward(H, weights, act, multipliers):
    """Forward pass from Z_2 = H. Returns [Z_2, F_2, Z_3, F_3, ..., Z_L] (the last entry is F_L = Z_L).

    weights: [W_1, ..., W_L] (only W_3.. are used); multipliers: [a_1, ..., a_{L-1}].
    """
    L = len(weights)
    cache = [H]
    Z = H
    for l in range(2, L):  # hidden tail layers l = 2..L-1
        F, _ = sigma_and_derivative(act, Z, derivative=False)
        F *= multipliers[l - 1]
        Z = F @ weights[l]  # W_{l+1}
        cache += [F, Z]
    return cache


def tail_backward(cache, Y, weights, act, multipliers):
    """Loss and gradients from a forward cache.

    Returns (loss, G, grads) with loss = 1/2 ||F_L - Y||^2 as a 0-d array (not yet moved to the host), G = dPhi/dZ_2
    (N, n_2), and grads = [dPhi/dW_3, ..., dPhi/dW_L] at the current weights.
    """
    L = len(weights)
    D = cache[-1] - Y
    loss = 0.5 * (D * D).sum()
    grads = []
    for l in range(L, 2, -1):  # W_l for l = L..3; F_{l-1} = cache[2(l-2)-1], Z_{l-1} = cache[2(l-3)]
        F_prev = cache[2 * (l - 2) - 1]
        Z_prev = cache[2 * (l - 3)]
        grads.append(F_prev.T @ D)
        _, dS = sigma_and_derivative(act, Z_prev, value=False)
        D = multipliers[l - 2] * (D @ weights[l - 1].T) * dS
    grads.reverse()
    return loss, D, grads


def tail_step(H, Y, tail_weights, act, tail_multipliers, out=None):
    """Loss and gradients of the tail from H = Z_2 with the array library: (loss, G, grads) as :func:`tail_backward`
    returns them, the loss as a float. tail_weights: [W_3, ..., W_L]; tail_multipliers: [a_2, ..., a_{L-1}];
    ``out`` is unused (the signature of every backend's ``tail``: the cpu backend writes G into it).
    """
    weights = [None, None] + list(tail_weights)
    mult = [None] + list(tail_multipliers)
    loss, G, grads = tail_backward(tail_forward(H, weights, act, mult), Y, weights, act, mult)
    return float(loss), G, grads
