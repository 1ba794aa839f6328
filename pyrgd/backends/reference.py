"""NumPy reference of the wide-layer operations: simple, float64-capable, the oracle of every other backend.

It materializes the N x n1 matrices (it is meant for checking, not for size). Works on CuPy arrays as well, which
the GPU tests use as a second oracle. Signatures as in :mod:`pyrgd.backends`.
"""
from __future__ import annotations

from ..activations import sigma_and_derivative
from . import StepResult

name = "reference"


def available() -> tuple[bool, str]:
    return True, "NumPy"


def forward(X, W1, W2, act, a1):
    S, _ = sigma_and_derivative(act, X @ W1, derivative=False)
    return (a1 * S) @ W2


def gradients(X, W1, W2, G, act, a1):
    """(dPhi/dW1, dPhi/dW2) given G = dPhi/dZ_2, at the current weights (THEORY section 2)."""
    S, dS = sigma_and_derivative(act, X @ W1)
    gW2 = (a1 * S).T @ G
    D = a1 * (G @ W2.T) * dS
    gW1 = X.T @ D
    return gW1, gW2


def step(X, W1, W2, G, lr, act, a1, next_forward):
    gW1, gW2 = gradients(X, W1, W2, G, act, a1)
    W1 -= lr * gW1
    W2 -= lr * gW2
    H_next = forward(X, W1, W2, act, a1) if next_forward else None
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
