"""NumPy reference of the wide-layer operations: simple, float64-capable, the oracle of every other backend.

It materializes the N x n1 matrices (it is meant for checking, not for size). Works on CuPy arrays as well, which
the GPU tests use as a second oracle. Signatures as in :mod:`pyrgd.backends`.
"""
from __future__ import annotations

import numpy as np

from ..activations import sigma_and_derivative
from ..tail import tail_step as tail  # noqa: F401  (the tail of this backend: the array library's products)
from . import StepResult
from .engine import NeuronsEngine, blocked_network_gradients

#: the GD step methods of :func:`engine`
METHODS = ("neurons",)

name = "reference"


def array_namespace():
    """The array library of this backend's arrays: NumPy."""
    return np


def available() -> tuple[bool, str]:
    return True, "NumPy"


def forward(X, W1, W2, act, a1, out=None):
    S, _ = sigma_and_derivative(act, X @ W1, derivative=False)
    H = (a1 * S) @ W2
    if out is None:
        return H
    out[...] = H
    return out


def gradients(X, W1, W2, G, act, a1):
    """(dPhi/dW1, dPhi/dW2) given G = dPhi/dZ_2, at the current weights (docs/theory.md section 2)."""
    S, dS = sigma_and_derivative(act, X @ W1)
    gW2 = (a1 * S).T @ G
    D = a1 * (G @ W2.T) * dS
    gW1 = X.T @ D
    return gW1, gW2


def wide_grad(X, W1, W2, G, act, a1, input_grad=False, out=None):
    """(dW1 (d, n1), dW2 (n1, n2)) given G = dPhi/dH (N, n2), and dX = D W1^T (N, d) with ``input_grad``, where
    D = a1 (G W2^T) (.) sigma'(X W1); written into ``out`` (a tuple of those arrays) when given."""
    S, dS = sigma_and_derivative(act, X @ W1)
    D = a1 * (G @ W2.T) * dS
    res = [X.T @ D, (a1 * S).T @ G] + ([D @ W1.T] if input_grad else [])
    if out is None:
        return tuple(res)
    for o, r in zip(out, res):
        o[...] = r
    return tuple(out)


def step(X, W1, W2, G, lr, act, a1, next_forward, out=None):
    gW1, gW2 = gradients(X, W1, W2, G, act, a1)
    W1 -= lr * gW1
    W2 -= lr * gW2
    H_next = forward(X, W1, W2, act, a1) if next_forward else None
    if out is not None and H_next is not None:
        out[...] = H_next
        H_next = out
    return StepResult(H_next, float((gW1 * gW1).sum()), float((gW2 * gW2).sum()))


def gram(X, W1, act, a1, W2=None, B2=None):
    Z = X @ W1
    if B2 is None:
        S, _ = sigma_and_derivative(act, Z, derivative=False)
        F = a1 * S
    else:
        _, dS = sigma_and_derivative(act, Z, value=False)
        F = a1 * (B2 @ W2.T) * dS
    return F @ F.T


def plan_step(N, d, widths, dtype, act, method="auto") -> dict:
    """{'method': 'neurons', 'kept': None, 'bytes'}: the reference materializes X W_1, sigma, sigma' and their
    products (about four N x n_1 arrays) besides the neurons method's buffers."""
    from .engine import neurons_step_bytes

    item = np.dtype(dtype).itemsize
    N, n1 = int(N), int(widths[0])
    return {"method": "neurons", "kept": None,
            "bytes": 4 * N * n1 * item + neurons_step_bytes(N, widths, item, n2_buffers=3)}


def network_gradients(X, Y, W, act, mult):
    """[dPhi/dW_1, ..., dPhi/dW_L] at the current weights (mult: [a_1, ..., a_{L-1}])."""
    import sys

    return blocked_network_gradients(sys.modules[__name__], X, Y, W, act, mult)


def engine(X, Y, W, act, mult, method="auto", allreduce=None):
    """The step engine of this backend (:class:`pyrgd.backends.engine.NeuronsEngine`); method 'auto' or 'neurons'."""
    import sys

    return NeuronsEngine(sys.modules[__name__], X, Y, W, act, mult, allreduce=allreduce)
