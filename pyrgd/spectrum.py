"""The smallest eigenvalue of the wide layer's Gram matrix K = F_1 F_1^T (N x N), three ways.

F_1 = a_1 sigma(X W_1) is N x n_1 (docs/theory.md section 4.1 uses lambda_min(K) = sigma_min(F_1)^2):

- :func:`exact_lambda_min`: K through the backend's streamed kernel, then ``eigvalsh`` (N x N in memory; exact up to
  rounding);
- :func:`certified_lower_bound`: K in float64 over blocks of neurons and a Cholesky test of K - t I: when it
  succeeds, lambda_min(K) >= t minus a rounding margin, a certified LOWER bound (N x N in memory, several times
  cheaper than ``eigvalsh``);
- :class:`LambdaMinEstimator`: matrix-free, K V = F_1 (F_1^T V) through the fused kernels (never N x N, never
  N x n_1), with LOBPCG (SciPy) warm-started from the previous call. A Rayleigh quotient is an UPPER estimate of
  lambda_min: never a certificate.

Every function takes X (N, d), W1 (d, n_1) of one dtype, NumPy or CuPy, a parsed activation and a_1.
"""
from __future__ import annotations

import warnings

import numpy as np

#: bytes of the N x block float64 matrices the streamed products form at a time
BLOCK_BYTES = 32 << 20


def _xp(a):
    return np if isinstance(a, np.ndarray) else __import__("cupy")


def _host(a):
    return a if isinstance(a, np.ndarray) else a.get()


def _feature_blocks(X, W1, act, a1, block_bytes, dtype=None):
    """Yield (slice, F_block) with F_block = a1 sigma(X W1[:, slice]) (N x b) in ``dtype`` (None: X's)."""
    from .activations import sigma_and_derivative

    N, n1 = X.shape[0], W1.shape[1]
    dt = np.dtype(dtype or X.dtype)
    b = max(1, min(n1, int(block_bytes) // max(1, 2 * N * dt.itemsize)))
    Xc = X.astype(dt, copy=False)
    for j in range(0, n1, b):
        sl = slice(j, min(n1, j + b))
        S, _ = sigma_and_derivative(act, Xc @ W1[:, sl].astype(dt, copy=False), derivative=False)
        S *= a1
        yield sl, S


def gram_matvec(X, W1, act, a1, V, block_bytes=BLOCK_BYTES):
    """K V = F_1 (F_1^T V) for V (N, k), returned in float64 on V's host/device kind, through the backend's fused
    kernels in X's dtype: F_1^T V is the gradient of W_2 for the upstream gradient V (:func:`pyrgd.ops.wide_grad`
    with W_2 = 0, whose other outputs are then 0) and F_1 M the layer's forward pass with W_2 = M
    (:func:`pyrgd.ops.wide_forward`). Memory n_1 x k besides V, never N x n_1 or N x N; the kernels' fixed summation
    order gives the same bits run after run. (On B1's shapes a product took 0.087 s this way against 0.22 s with the
    activation evaluated in NumPy block by block, four fifths of that in the activation.) ``block_bytes`` is
    accepted for the callers' sake and unused: the kernels choose their own blocks."""
    from . import ops

    xp = _xp(X)
    Vd = xp.ascontiguousarray(xp.asarray(V, dtype=X.dtype))
    zero_w2 = xp.zeros((W1.shape[1], Vd.shape[1]), dtype=X.dtype)
    _, M = ops.wide_grad(X, W1, zero_w2, Vd, activation=act, a1=a1)  # F_1^T V, (n1, k)
    return ops.wide_forward(X, W1, M, activation=act, a1=a1).astype(np.float64)


def exact_lambda_min(X, W1, act, a1, backend) -> float:
    """lambda_min(K) with K from the backend's streamed Gram kernel and ``eigvalsh`` in float64."""
    from . import ops

    K = ops.wide_gram(X, W1, activation=act, a1=a1, backend=backend)
    xp = _xp(K)
    lam = xp.linalg.eigvalsh(K.astype(xp.float64, copy=False))
    return float(lam[0])


def exact_memory_bytes(N: int, itemsize: int) -> int:
    """Peak bytes of :func:`exact_lambda_min`: K in the dtype, its float64 copy and ``eigvalsh``'s work (about one
    more N x N float64)."""
    N = int(N)
    return N * N * int(itemsize) + 2 * N * N * 8


def estimator_bytes(N: int, k: int) -> int:
    """Bytes of :class:`LambdaMinEstimator`'s LOBPCG state on k vectors: about eight N x k float64 blocks (the
    iterates, residuals, directions and their products)."""
    return 8 * int(N) * int(k) * 8


def certified_memory_bytes(N: int) -> int:
    """Peak bytes of :func:`certified_lower_bound`: K in float64 and its Cholesky factor."""
    return 2 * int(N) * int(N) * 8


def certified_lower_bound(X, W1, act, a1, t: float, block_bytes=BLOCK_BYTES) -> float | None:
    """A certified lower bound of lambda_min(K), or None where the Cholesky test of K - t I fails.

    K is formed in float64 from F_1 computed in float64 (the weights and X cast exactly), then factored. Success
    means K - t I + E is positive definite with ||E||_2 <= gamma trace(K) (Demmel's bound for Cholesky, gamma =
    (N + 1) u / (1 - (N + 1) u), u = 2^-53); forming K adds at most n_1 u trace(K) more. The bound returned is
    t - (gamma + 2 (n_1 + 2) u) trace(K), or None when that is not above 0 or the factorization fails.
    """
    xp = _xp(X)
    N, n1 = X.shape[0], W1.shape[1]
    K = xp.zeros((N, N), dtype=np.float64)
    for _, F in _feature_blocks(X, W1, act, a1, block_bytes, dtype=np.float64):
        K += F @ F.T
    trace = float(xp.trace(K))
    idx = xp.arange(N)
    K[idx, idx] -= t
    try:
        L = xp.linalg.cholesky(K)
        ok = bool(xp.isfinite(L).all())  # CuPy returns NaNs where NumPy raises
    except np.linalg.LinAlgError:
        ok = False
    del K
    if not ok:
        return None
    u = 2.0 ** -53
    gamma = (N + 1) * u / (1 - (N + 1) * u)
    bound = t - (gamma + 2 * (n1 + 2) * u) * trace
    return bound if bound > 0 else None


class LambdaMinEstimator:
    """Matrix-free estimate of lambda_min(K), warm-started from call to call (the weights change little between
    two certificates of a GD run). Each :meth:`estimate` runs at most ``iters`` LOBPCG iterations on a block of
    ``k`` vectors (each iteration is one streamed product K V: :func:`gram_matvec`).

    The result is the smallest Ritz value: an upper estimate of lambda_min (K is symmetric positive semi-definite),
    with its residual norm ||K v - theta v|| (theta - residual is NOT a bound in general: only an indication).
    """

    def __init__(self, N: int, k: int = 4, iters: int = 20, tol: float = 1e-6, seed: int = 0,
                 block_bytes: int = BLOCK_BYTES):
        self.N, self.k, self.iters, self.tol = int(N), max(1, min(int(k), int(N))), int(iters), float(tol)
        self.block_bytes = int(block_bytes)
        self._V = np.random.default_rng(seed).standard_normal((self.N, self.k))
        self.products = 0  # K V products done so far

    def estimate(self, X, W1, act, a1, iters: int | None = None) -> dict:
        """{'lambda_min': the estimate, 'residual': ||K v - theta v|| / ||v||, 'iterations': the K V products LOBPCG
        ran}"""
        from scipy.sparse.linalg import LinearOperator, lobpcg

        iters = self.iters if iters is None else int(iters)

        def matmat(V):
            V = np.asarray(V, dtype=np.float64)
            if V.ndim == 1:
                V = V[:, None]
            self.products += 1
            return _host(gram_matvec(X, W1, act, a1, V, self.block_bytes))

        op = LinearOperator((self.N, self.N), matvec=matmat, matmat=matmat, dtype=np.float64)
        if self.N <= 3 * self.k:  # too small for LOBPCG: the dense route is cheap
            K = matmat(np.eye(self.N))
            w, v = np.linalg.eigh((K + K.T) / 2)
            self._V = v[:, : self.k]
            return {"lambda_min": float(w[0]), "residual": 0.0, "iterations": 0}
        with warnings.catch_warnings():  # "not reaching the requested tolerance": the residual says how far
            warnings.simplefilter("ignore", UserWarning)
            before = self.products
            vals, vecs = lobpcg(op, self._V, largest=False, maxiter=max(1, iters), tol=self.tol, verbosityLevel=0)
        order = np.argsort(vals)
        vals, vecs = vals[order], vecs[:, order]
        self._V = vecs
        v = vecs[:, :1]
        r = matmat(v) - vals[0] * v
        return {"lambda_min": float(vals[0]), "residual": float(np.linalg.norm(r) / np.linalg.norm(v)),
                "iterations": self.products - before - 1}
