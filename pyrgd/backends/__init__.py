"""Backends of the wide-layer operations: ``reference`` (NumPy, the oracle), ``cpu`` (C++), ``cuda`` (CuPy).

Each backend module offers the same three functions on already validated arrays (C-contiguous, native byte order,
one floating dtype, finite; see :mod:`pyrgd.ops` for the checks and the public signatures):

``forward(X, W1, W2, act, a1) -> H``
    H = a1 sigma(X W1) W2, shape (N, n2).
``step(X, W1, W2, G, lr, act, a1, next_forward) -> StepResult``
    one GD step of the wide layer given G = dPhi/dZ_2, W1 and W2 updated in place; with next_forward the
    forward pass of the updated weights is accumulated in the same sweep and returned as ``H_next``.
``gram(X, W1, act, a1, W2=None, B2=None) -> K``
    K = F1 F1^T with F1 = a1 sigma(X W1) when B2 is None; else K = B1 B1^T with
    B1 = a1 (B2 W2^T) (.) sigma'(X W1) (the layer-1 factor of the empirical NTK, THEORY section 5). Shape (N, N).
"""
from typing import NamedTuple


class StepResult(NamedTuple):
    """What one wide-layer step returns.

    H_next: a1 sigma(X W1') W2' with the updated weights (N x n2), or None when not asked for.
    grad_sq_w1, grad_sq_w2: squared Frobenius norms of dPhi/dW1 and dPhi/dW2 at the weights before the update.
    """

    H_next: object
    grad_sq_w1: float
    grad_sq_w2: float


BACKENDS = ("reference", "cpu", "cuda")
