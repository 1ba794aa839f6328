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
from .tail import tail_forward

#: ``lr="auto"`` takes this fraction of 1/lambda_max(NTK at init). GD on the linearized model is stable below
#: 2/lambda_max; the NTK's top eigenvalue often grows by 2x or more early in training ("progressive sharpening"),
#: and 1/lambda_max was seen to catapult or diverge, so the rule keeps a factor 4 from the linear stability edge.
AUTO_LR_FRACTION = 0.5
#: how ``lr="auto"`` chooses the step size (also stored in the summary)
AUTO_LR_RULE = ("0.5/lambda_max of the empirical NTK J J^T at initialization (power iteration with central "
                "differences, to a relative change of 1e-3)")


def full_forward(X, W, act, mult, backend):
    """[Z_2, F_2, Z_3, ..., F_L] of the whole network (:func:`pyrgd.tail.tail_forward`), Z_2 from the kernels."""
    H = ops.wide_forward(X, W[0], W[1], activation=act, a1=mult[0], backend=backend)
    return tail_forward(H, W, act, mult)


def estimate_lambda_max(X, weights, act, multipliers, backend, iters=20, seed=0, rtol=1e-3) -> float:
    """Largest eigenvalue of the empirical NTK J J^T (J = dF_L/dtheta, all layers) by power iteration: at most
    ``iters`` iterations, fewer once two successive Rayleigh quotients agree to ``rtol`` (0: all ``iters``).

    J^T u is the gradient of 1/2 ||F_L - (F_L - u)||^2, one call of the backend's ``network_gradients``; J v is a
    central difference of two forward passes, with a relative step of 1e-6 in float64 and 3e-4 in float32 (about
    the square root of the dtype's resolution). Runs in the network's dtype through the kernels: X is not copied,
    and the weights only as the perturbed copies each iteration needs.
    """
    xp = np if isinstance(X, np.ndarray) else __import__("cupy")
    be = ops.get_backend(backend)
    W = list(weights)
    mult = [float(a) for a in multipliers]
    rel = 1e-6 if X.dtype == np.float64 else 3e-4
    F = full_forward(X, W, act, mult, backend)[-1]
    rng = np.random.default_rng(seed)
    u = xp.asarray(rng.standard_normal(F.shape), dtype=X.dtype)
    u /= xp.linalg.norm(u)
    lam = 0.0
    theta_norm = math.sqrt(sum(float((w * w).sum()) for w in W))
    for _ in range(iters):
        v = be.network_gradients(X, xp.ascontiguousarray(F - u), W, act, mult)  # J^T u
        vnorm = math.sqrt(sum(float((a * a).sum()) for a in v))
        if vnorm == 0.0:
            return 0.0
        eps = rel * max(theta_norm, 1.0) / vnorm
        Fp = full_forward(X, [w + eps * a for w, a in zip(W, v)], act, mult, backend)[-1]
        Fm = full_forward(X, [w - eps * a for w, a in zip(W, v)], act, mult, backend)[-1]
        Ju = (Fp - Fm) / (2 * eps)  # J J^T u
        prev, lam = lam, float((u * Ju).sum())
        if rtol and abs(lam - prev) <= rtol * abs(lam):
            return lam
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
