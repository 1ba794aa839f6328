"""The step-size rule of ``lr="auto"``: a fraction of 1/lambda_max of the empirical NTK at initialization.

lambda_max of J J^T (J = dF_L/dtheta over every layer, shape (N n_L, P)) comes from Lanczos iterations whose
products J J^T u are one backward pass through the kernels and one forward difference (docs/theory.md section 1
has the notation). Past AUTO_LR_ROWS samples it is extrapolated from two nested row subsamples, so that the rule
costs a fraction of one GD step at any N (docs/guide.md, section "Configs", on ``lr = "auto"``).
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
AUTO_LR_RULE = ("0.5/lambda_max of the empirical NTK J J^T at initialization (Lanczos on products through the "
                "kernels, to a relative tolerance of 1e-2; past 512 samples extrapolated linearly in the sample "
                "count from nested subsamples of 128 and 512 rows, each to 5e-2)")
#: past this many samples lambda_max is extrapolated from subsamples of AUTO_LR_ROWS and AUTO_LR_ROWS // 4 rows
AUTO_LR_ROWS = 512


def full_forward(X, W, act, mult, backend):
    """[Z_2, F_2, Z_3, ..., F_L] of the whole network (:func:`pyrgd.tail.tail_forward`), Z_2 from the kernels."""
    H = ops.wide_forward(X, W[0], W[1], activation=act, a1=mult[0], backend=backend)
    return tail_forward(H, W, act, mult)


def estimate_lambda_max(X, weights, act, multipliers, backend, iters=20, seed=0, rtol=None,
                        rows=AUTO_LR_ROWS) -> float:
    """lambda_max of the NTK J J^T of all N samples: :func:`lanczos_lambda_max` on X itself when N <= ``rows``
    (or ``rows`` is None), else extrapolated from the samples' nested subsets S_1 of rows // 4 and S_2 of ``rows``
    samples (drawn with ``seed``, so the same inputs give the same value). ``rtol``: Lanczos' relative tolerance;
    None: 1e-2 on all samples, 5e-2 on the subsets (the extrapolation's own error, about 15%, dominates: 5e-2 gave
    the same values to 1% on the shapes below, with a fifth fewer products).

    Why it works: K_S, the NTK of a subset S, is a principal submatrix of K, and for the usual kernels its top
    eigenvalue grows linearly with the sample count, lambda_max(K_S) ~ c |S| + delta (a mean part c |S| over the
    samples plus a diagonal part delta). Two sizes give c and delta, and the estimate is c N + delta, never below
    lambda_max(K_{S_2}), which bounds lambda_max(K) from below (Cauchy interlacing). Scaling one subsample by
    N / |S| instead would multiply delta by N / |S| (1.3x too large at |S| = 512 on B1's shapes). Over the
    benchmark's shapes and activations and random subsets it was within -6% .. +16% of the full Lanczos value, at
    (rows + rows // 4) / N of its cost. Only rows of X are gathered (|S| x d values), never a copy of X.
    """
    N = int(X.shape[0])
    if rows is None or N <= int(rows):
        rtol = 1e-2 if rtol is None else rtol
        return lanczos_lambda_max(X, weights, act, multipliers, backend, iters=iters, seed=seed, rtol=rtol)
    m2 = int(rows)
    m1 = max(1, m2 // 4)
    rtol = 5e-2 if rtol is None else rtol
    xp = ops.get_backend(backend).array_namespace()
    perm = np.random.default_rng(seed).permutation(N)[:m2]
    lam = []
    for m in (m1, m2):
        Xs = X[xp.asarray(np.sort(perm[:m]))]
        lam.append(lanczos_lambda_max(Xs, weights, act, multipliers, backend, iters=iters, seed=seed, rtol=rtol))
    slope = (lam[1] - lam[0]) / (m2 - m1)
    return max(slope * N + (lam[1] - slope * m2), lam[1])


def lanczos_lambda_max(X, weights, act, multipliers, backend, iters=20, seed=0, rtol=1e-2) -> float:
    """Largest eigenvalue of the empirical NTK J J^T (J = dF_L/dtheta, all layers; N n_L x N n_L) by Lanczos
    (SciPy's ``eigsh``, ARPACK) to a relative tolerance ``rtol`` (0: machine precision), at most ``iters`` restarts.

    Each product J J^T u is one backward pass and one forward pass: J^T u is the gradient of
    1/2 ||F_L - (F_L - u)||^2, one call of the backend's ``network_gradients``, and J v the forward difference
    (F_L(theta + eps v) - F_L(theta)) / eps, with a relative step of 1e-7 in float64 and 3e-4 in float32 (about the
    square root of the dtype's resolution). Runs in the network's dtype through the kernels: X is not copied, and
    the weights only as the perturbed copy each product needs. Lanczos, unlike the power iteration, does not stall
    where the top eigenvalues are close (it would underestimate lambda_max, and so overestimate the step size).
    """
    from scipy.sparse.linalg import LinearOperator, eigsh

    be = ops.get_backend(backend)
    W = list(weights)
    mult = [float(a) for a in multipliers]
    rel = 1e-7 if X.dtype == np.float64 else 3e-4
    F = full_forward(X, W, act, mult, backend)[-1]
    theta_norm = math.sqrt(sum(float((w * w).sum()) for w in W))

    def jjt(u):
        u = ops.get_backend(backend).array_namespace().asarray(np.asarray(u).reshape(F.shape), dtype=X.dtype)
        v = be.network_gradients(X, (F - u).copy(), W, act, mult)  # J^T u
        vnorm = math.sqrt(sum(float((a * a).sum()) for a in v))
        if vnorm == 0.0:
            return np.zeros(F.size)
        eps = rel * max(theta_norm, 1.0) / vnorm
        Fp = full_forward(X, [w + eps * a for w, a in zip(W, v)], act, mult, backend)[-1]
        Ju = (Fp - F) / eps
        Ju = Ju if isinstance(Ju, np.ndarray) else Ju.get()
        return Ju.astype(np.float64).ravel()

    n = int(F.size)
    if n <= 2:  # too small for ARPACK: the matrix itself
        K = np.column_stack([jjt(e) for e in np.eye(n)])
        return float(np.linalg.eigvalsh((K + K.T) / 2)[-1])
    op = LinearOperator((n, n), matvec=jjt, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(n)
    lam = eigsh(op, k=1, which="LA", tol=rtol, maxiter=max(1, int(iters)) * n, ncv=min(8, n - 1), v0=v0,
                return_eigenvectors=False)
    return float(lam[0])


def auto_lr(X, weights, act, multipliers, backend) -> float:
    """The step size of ``lr="auto"``: AUTO_LR_FRACTION / lambda_max; PyrgdError where lambda_max is not a positive
    finite number."""
    lam = estimate_lambda_max(X, weights, act, multipliers, backend)
    if not (lam > 0 and math.isfinite(lam)):
        raise PyrgdError(f"lr: 'auto' could not estimate the curvature (lambda_max of the NTK is {lam!r}); "
                         "give lr explicitly")
    return AUTO_LR_FRACTION / lam
