"""One full-batch GD step of the whole network, in the two halves that :func:`pyrgd.train.train` runs (the
benchmark's fused candidate runs the same two functions).

1. :func:`loss_and_gradient`: from H = Z_2 (the wide layer's output), the tail's forward and backward pass: the loss
   Phi, G = dPhi/dZ_2 and the tail's gradients.
2. :func:`apply_step`: the wide layer's fused step (W_1, W_2 updated in place, H of the updated weights computed in
   the same call) and the tail's update.

Memory on the cpu backend: the tail is one streamed C++ pass that writes G into a buffer the caller hands back (the
previous step's H, free by then), and the wide step writes the next H over G, so that a run holds exactly two
N x n_2 arrays and nothing else of N rows but X, Y and the hidden tail layers' chunks.
"""
from __future__ import annotations

import numpy as np

from . import ops
from ._validate import array_module
from .tail import tail_step


def loss_and_gradient(H, Y, W, act, mult, backend, out=None):
    """(loss as a float, G, [dPhi/dW_3, ..., dPhi/dW_L]) at the current weights, from H = Z_2.

    W: [W_1, ..., W_L]; mult: [a_1, ..., a_{L-1}]; ``out``: a spare (N, n_2) buffer for G (cpu backend; it must not
    be H), e.g. the H of the step before.
    """
    loss, G, tail_grads = tail_step(H, Y, W, act, mult, backend, out=out)
    return float(loss), G, tail_grads


def apply_step(X, W, G, tail_grads, lr, act, mult, backend):
    """One GD step from the gradient of :func:`loss_and_gradient`; W updated in place.

    Returns (H_next, grad_sq) with H_next = Z_2 of the updated weights (on the cpu backend written over G) and
    grad_sq the L squared Frobenius norms ||dPhi/dW_l||^2 at the weights before the update, as floats.
    """
    res = ops.wide_step(X, W[0], W[1], G, lr, activation=act, a1=mult[0], next_forward=True, backend=backend,
                        out=G if backend == "cpu" else None)
    tail_sq = [(g * g).sum() for g in tail_grads]
    for l, g in enumerate(tail_grads, start=3):
        W[l - 1] -= lr * g
    sq = [res.grad_sq_w1, res.grad_sq_w2]
    if tail_sq:
        xp = array_module(tail_sq[0]) or np
        host = np.array(tail_sq) if xp is np else xp.stack(tail_sq).get()
        sq += [float(s) for s in host]
    return res.H_next, sq
