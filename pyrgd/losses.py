"""User losses of :func:`pyrgd.train`: ``loss=fn`` with ``fn(F_L, Y) -> (loss, dloss/dF_L)``.

``F_L`` (N, n_L) is the network's output at the current weights and ``Y`` the targets, both arrays of the run's
dtype and device (NumPy; CuPy with the cuda backend; F_L read-only where the array library allows). ``fn`` returns
the loss (a real number) and its gradient with respect to F_L (an array of shape (N, n_L)). Without ``loss`` the
run minimizes the squared loss 1/2 ||F_L - Y||_F^2 in the backends' fused kernels (:func:`squared` is the same loss
written as a user loss, for checks).

:class:`UserLossEngine` is the step engine of such a run, on any backend: the wide layer's forward pass (the
backend's kernel), the tail's forward pass, ``fn``, the tail's backward pass from dloss/dF_L (:mod:`pyrgd.tail`)
and the wide layer's gradients for the resulting G = dPhi/dZ_2
(:func:`pyrgd.backends.engine.wide_layer_gradients`).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .backends.engine import StepEngine, wide_layer_gradients
from .errors import PyrgdError
from .tail import tail_backward, tail_forward

__all__ = ["UserLossEngine", "squared", "softmax_cross_entropy", "loss_name"]


def squared(F, Y):
    """The default loss as a user loss: (1/2 ||F - Y||_F^2, F - Y)."""
    D = F - Y
    return float((D * D).sum()) * 0.5, D


def softmax_cross_entropy(F, Y):
    """Cross-entropy of the row-wise softmax of F (N, n_L) against target distributions Y (rows of non-negative
    numbers summing to 1, e.g. one-hot), summed over the rows: (sum_i -Y_i . log softmax(F_i), softmax(F) - Y)."""
    xp = np if isinstance(F, np.ndarray) else __import__("cupy")
    Z = F - F.max(axis=1, keepdims=True)
    logsum = xp.log(xp.exp(Z).sum(axis=1, keepdims=True))
    logp = Z - logsum
    return float(-(Y * logp).sum()), xp.exp(logp) - Y


def loss_name(fn) -> str:
    """'user:<name of fn>' (what a run's summary and checkpoint record)."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return f"user:{name}"


class UserLossEngine(StepEngine):
    """The step engine of a run with a user loss ``fn`` on backend module ``be``; see the module docstring.

    :meth:`evaluate` runs the forward passes and ``fn`` and the backward pass of the tail (keeping G and the tail's
    gradients); :meth:`gradients` adds the wide layer's; :meth:`update` is W <- W - lr dPhi/dW with them. Holds the
    tail's forward cache (N x n_l arrays) and, without a fused ``wide_grad`` in the backend, blocks of N x n_1.
    """

    method = "user_loss"

    def __init__(self, be, X, Y, W, act, mult, fn):
        super().__init__(X, Y, W, act, mult)
        if not callable(fn):
            raise PyrgdError(f"loss: expected a function fn(F_L, Y) -> (loss, dloss/dF_L), got {fn!r}")
        self._be, self.backend, self.fn = be, be.name, fn
        self._G = self._tail_grads = None
        self._zeros = None

    def _evaluate(self) -> float:
        X, W, act, mult = self.X, self.W, self.act, self.mult
        H = self._be.forward(X, W[0], W[1], act, mult[0])
        cache = tail_forward(H, W, act, mult)
        F = cache[-1]
        given = F.view()
        if isinstance(given, np.ndarray):
            given.flags.writeable = False
        out = self.fn(given, self.Y)
        loss, dF = self._check(out, F)
        if not math.isfinite(loss):
            self._G = self._tail_grads = None
            return loss
        if self._zeros is None:
            self._zeros = (np if isinstance(F, np.ndarray) else __import__("cupy")).zeros_like(F)
        # the tail's backward pass from D_L = dloss/dF_L: tail_backward starts from D_L = F_L - Y, so F_L := dF
        # and Y := 0 give D_L = dF exactly (its loss output is not used)
        _, self._G, self._tail_grads = tail_backward(cache[:-1] + [dF], self._zeros, W, act, mult)
        return loss

    def _check(self, out, F):
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise PyrgdError(f"loss: the function must return (loss, dloss/dF_L), got {type(out).__name__}")
        loss, dF = out
        if hasattr(loss, "item") and getattr(loss, "size", 1) == 1:
            loss = loss.item()
        if isinstance(loss, bool) or not isinstance(loss, numbers.Real):
            raise PyrgdError(f"loss: the function's loss must be a real number, got {type(loss).__name__}")
        xp = np if isinstance(F, np.ndarray) else __import__("cupy")
        if not (isinstance(dF, np.ndarray) or (xp is not np and isinstance(dF, xp.ndarray))):
            raise PyrgdError(f"loss: the function's gradient must be a {xp.__name__} array shaped like F_L "
                             f"{tuple(F.shape)}, got {type(dF).__name__}")
        if tuple(dF.shape) != tuple(F.shape):
            raise PyrgdError(f"loss: the function's gradient has shape {tuple(dF.shape)}, expected F_L's "
                             f"{tuple(F.shape)}")
        if isinstance(dF, np.ndarray) and xp is not np:
            raise PyrgdError("loss: the function's gradient must be a cupy array on the cuda backend, got numpy")
        if dF.dtype.kind != "f":
            raise PyrgdError(f"loss: the function's gradient must be a float array, got dtype {dF.dtype}")
        return float(loss), xp.ascontiguousarray(dF, dtype=F.dtype)

    def _grads(self) -> list:
        if self._G is None:
            raise PyrgdError("gradients: the loss is not finite at the current weights")
        gW1, gW2 = wide_layer_gradients(self._be, self.X, self.W[0], self.W[1], self._G, self.act, self.mult[0])
        return [gW1, gW2] + list(self._tail_grads)

    def gradients(self) -> list:
        if not self._evaluated:
            self.evaluate()
        return self._grads()

    def _update(self, lr: float) -> list[float]:
        grads = self._grads()
        sq = [float((g * g).sum()) for g in grads]
        lr_t = self.W[0].dtype.type(lr)
        for w, g in zip(self.W, grads):
            w -= lr_t * g
        self._G = self._tail_grads = None
        return sq

    def _after_apply(self) -> None:
        self._G = self._tail_grads = None
