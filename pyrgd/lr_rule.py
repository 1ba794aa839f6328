"""The step-size rule of ``lr="auto"``: a fraction of 1/lambda_max of the empirical NTK at initialization.

lambda_max of J J^T (J = dF_L/dtheta over every layer, shape (N n_L, P)) comes from a power iteration whose
J^T u is one backward pass through the wide layer's kernels and whose J v is a central difference of two forward
passes (docs/theory.md section 1 has the notation).
"""
from __future__ import annotations

import math

import numpy as np

from . import ops
from .errors import PyrgdError
from .tail import tail_backward, tail_forward

#: ``lr="auto"`` takes this fraction of 1/lambda_max(NTK at init). GD on the linearized model is stable below
#: 2/lambda_max; the NTK's top eigenvalue often grows by 2x or more early in training ("progressive sharpening"),
#: and 1/lambda_max was seen to catapult or diverge, so the rule keeps a factor 4 from the linear stability edge.
AUTO_LR_FRACTION = 0.5
#: how ``lr="auto"`` chooses the step size (also stored in the summary)
AUTO_LR_RULE = ("0.5/lambda_max of the empirical NTK J J^T at initialization (power iteration with central "
                "differences)")


def full_forward(X, W, act, mult, backend):
    """[Z_2, F_2, Z_3, ..., F_L] of the whole network (:func:`pyrgd.tail.tail_forward`), Z_2 from the kernels."""
    H = ops.wide_forward(X, W[0], W[1], activation=act, a1=mult[0], backend=backend)
    return tail_forward(H, W, act, mult)


def estimate_lambda_max(X, weights, act, multipliers, backend, iters=20, seed=0) -> float:
    """Largest eigenvalue of the empirical NTK J J^T (J = dF_L/dtheta, all layers) by power iteration.

    J^T u is one backward pass (the wide layer's step with G seeded by u, applied to a copy with lr = -1); J v is a
    central difference of two forward passes. Runs in float64 whatever the network's dtype.
    """
    xp = np if isinstance(X, np.ndarray) else __import__("cupy")
    X = X.astype(xp.float64)
    W = [w.astype(xp.float64) for w in weights]
    cache = full_forward(X, W, act, multipliers, backend)
    F = cache[-1]
    rng = np.random.default_rng(seed)
    u = xp.asarray(rng.standard_normal(F.shape))
    u /= xp.linalg.norm(u)
    lam = 0.0
    theta_norm = math.sqrt(sum(float((w * w).sum()) for w in W))
    for _ in range(iters):
        _, G, tail_grads = tail_backward(cache, F - u, W, act, multipliers)  # D_L = u
        W1, W2 = W[0].copy(), W[1].copy()
        ops.wide_step(X, W1, W2, G, -1.0, activation=act, a1=multipliers[0], backend=backend)
        v = [W1 - W[0], W2 - W[1]] + list(tail_grads)  # v = J^T u
        vnorm = math.sqrt(sum(float((a * a).sum()) for a in v))
        if vnorm == 0.0:
            return 0.0
        eps = 1e-6 * max(theta_norm, 1.0) / vnorm
        Fp = full_forward(X, [w + eps * a for w, a in zip(W, v)], act, multipliers, backend)[-1]
        Fm = full_forward(X, [w - eps * a for w, a in zip(W, v)], act, multipliers, backend)[-1]
        Ju = (Fp - Fm) / (2 * eps)  # J J^T u
        lam = float((u * Ju).sum())
        n = float(xp.linalg.norm(Ju))
        if n == 0.0:
            return 0.0
        u = Ju / n
    return lam


def auto_lr(X, weights, act, multipliers, backend) -> float:
    """The step size of ``lr="auto"``: AUTO_LR_FRACTION / lambda_max; PyrgdError where lambda_max is not a positive
    finite number."""
    lam = estimate_lambda_max(X, weights, act, multipliers, backend)
    if not (lam > 0 and math.isfinite(lam)):
        raise PyrgdError(f"lr: 'auto' could not estimate the curvature (lambda_max of the NTK is {lam!r}); "
                         "give lr explicitly")
    return AUTO_LR_FRACTION / lam
