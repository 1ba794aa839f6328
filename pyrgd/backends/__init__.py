"""Backends of pyrgd: ``reference`` (NumPy, the oracle), ``cpu`` (C++), ``cuda`` (CuPy). One door per concern:
:mod:`pyrgd.ops` validates the arguments and picks the backend; every backend module offers the same functions on
already validated arrays (C-contiguous, native byte order, one floating dtype, finite):

``available() -> (ok, why)``
    whether the backend can run here, and a one-line description or the reason it cannot.
``array_namespace() -> module``
    the array library of the backend's arrays (NumPy or CuPy).
``forward(X, W1, W2, act, a1, out=None) -> H``
    H = a1 sigma(X W1) W2, shape (N, n2) (written into ``out`` when given, already validated).
``step(X, W1, W2, G, lr, act, a1, next_forward, out=None) -> StepResult``
    one GD step of the wide layer given G = dPhi/dZ_2, W1 and W2 updated in place; with next_forward the
    forward pass of the updated weights is returned as ``H_next`` (written into ``out`` when given; it may be G).
``wide_grad(X, W1, W2, G, act, a1, input_grad=False, out=None) -> (dW1, dW2) or (dW1, dW2, dX)``
    the wide layer's gradients given G = dPhi/dZ_2, nothing updated: dW1 = X^T D (d, n1), dW2 = (a1 sigma(X W1))^T G
    (n1, n2) and, with input_grad, dX = D W1^T (N, d), where D = a1 (G W2^T) (.) sigma'(X W1); written into ``out``
    (a tuple of those arrays, already validated) when given.
``gram(X, W1, act, a1, W2=None, B2=None) -> K``
    K = F1 F1^T with F1 = a1 sigma(X W1) when B2 is None; else K = B1 B1^T with
    B1 = a1 (B2 W2^T) (.) sigma'(X W1) (the layer-1 factor of the empirical NTK, docs/theory.md section 5).
``tail(H, Y, tail_weights, act, tail_multipliers, out=None) -> (loss, G, grads)``
    the pyramidal tail (layers 2..L) from H = Z_2: the loss as a float, G = dPhi/dZ_2 and [dPhi/dW_3, ...].
``network_gradients(X, Y, W, act, mult) -> [dPhi/dW_1, ..., dPhi/dW_L]``
    every gradient at the current weights, nothing updated.
``plan_step(N, d, widths, dtype, act, method="auto") -> {"method", "kept", "bytes"}``
    the method ``engine`` would take and the step's own memory besides X, Y and the weights, before allocating.
``METHODS``, ``engine(X, Y, W, act, mult, method="auto", allreduce=None) -> StepEngine``
    the GD step methods of the backend and its step engine (:mod:`pyrgd.backends.engine`), what
    :func:`pyrgd.train` runs.
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

#: the names every backend module defines (tests/test_backend_contract.py checks them)
CONTRACT = ("name", "available", "array_namespace", "forward", "step", "wide_grad", "gram", "tail",
            "network_gradients", "METHODS", "engine", "plan_step")
