"""Stable functional API of the wide first layer, for embedding pyrgd as a backend.

Shapes (THEORY.md sections 1-2): X (N, d), W1 (d, n1), W2 (n1, n2), G and H (N, n2). All arrays of one call share
one dtype (float32 or float64) and one device: NumPy arrays run on the C++ backend (``cpu``) or the NumPy oracle
(``reference``), CuPy arrays on the CUDA backend (``cuda``). ``backend="auto"`` follows the array type.

Every function checks its arguments and raises :class:`pyrgd.PyrgdError` naming the argument and what was expected.
Read-only inputs that are not C-contiguous are copied; W1 and W2, which :func:`wide_step` updates in place, must be
C-contiguous and writeable.

>>> import numpy as np, pyrgd.ops as ops
>>> rng = np.random.default_rng(0)
>>> X = rng.standard_normal((8, 3)); W1 = rng.standard_normal((3, 16)); W2 = rng.standard_normal((16, 2))
>>> H = ops.wide_forward(X, W1, W2, activation="tanh")
>>> H.shape
(8, 2)
"""
from __future__ import annotations

import importlib
import warnings

import numpy as np

from ._validate import array_module, check_float_array, check_scalar
from .activations import parse_activation
from .backends import BACKENDS, StepResult
from .errors import BackendUnavailable, PyrgdError

__all__ = ["wide_forward", "wide_step", "wide_gram", "get_backend", "resolve_backend", "StepResult"]

_INSTALL_HINT = {
    "cpu": "reinstall pyrgd from source so that its C++ extension pyrgd._cpu is built (pip install .; needs a C++ "
    "compiler with OpenMP)",
    "cuda": "install CuPy for your CUDA version (pip install 'pyrgd[gpu]' or cupy-cuda12x / cupy-cuda13x) on a "
    "machine with an NVIDIA GPU",
}


def get_backend(name: str):
    """The backend module ``name`` ('reference', 'cpu' or 'cuda'); BackendUnavailable says what to install."""
    if name not in BACKENDS:
        raise PyrgdError(f"backend: expected one of auto, {', '.join(BACKENDS)}, got {name!r}")
    try:
        mod = importlib.import_module(f"pyrgd.backends.{name}")
    except ImportError as e:
        raise BackendUnavailable(f"backend {name!r} cannot be imported ({e}); {_INSTALL_HINT[name]}") from None
    ok, why = mod.available()
    if not ok:
        raise BackendUnavailable(f"backend {name!r} is not available on this machine ({why}); {_INSTALL_HINT[name]}")
    return mod


def resolve_backend(backend: str, xp) -> str:
    """The concrete backend name for ``backend`` ('auto' allowed) and arrays of module ``xp``."""
    if not isinstance(backend, str):
        raise PyrgdError(f"backend: expected a name (auto, {', '.join(BACKENDS)}), got {backend!r}")
    on_gpu = xp is not np
    if backend == "auto":
        if on_gpu:
            return "cuda"
        try:
            get_backend("cpu")
            return "cpu"
        except BackendUnavailable as e:
            warnings.warn(f"{e}; falling back to the slow NumPy reference backend", RuntimeWarning, stacklevel=3)
            return "reference"
    if backend not in BACKENDS:
        raise PyrgdError(f"backend: expected one of auto, {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "cuda" and not on_gpu:
        raise PyrgdError("backend: 'cuda' needs CuPy arrays (cupy.asarray(...)); got NumPy arrays")
    if backend == "cpu" and on_gpu:
        raise PyrgdError("backend: 'cpu' needs NumPy arrays; got CuPy arrays (use backend='cuda' or 'auto')")
    return backend


def _check_wide(X, W1, W2, *, inplace=False):
    xp = array_module(X)
    X = check_float_array("X", X, 2)
    xp = array_module(X)
    N, d = X.shape
    W1 = check_float_array("W1", W1, 2, dtype=X.dtype, xp=xp, shape=(d, None), inplace=inplace)
    n1 = W1.shape[1]
    if W2 is not None:
        W2 = check_float_array("W2", W2, 2, dtype=X.dtype, xp=xp, shape=(n1, None), inplace=inplace)
    return xp, X, W1, W2


def wide_forward(X, W1, W2, *, activation="relu", a1=1.0, backend="auto"):
    """H = a1 sigma(X W1) W2, shape (N, n2), streamed over the n1 neurons (nothing N x n1 is kept by cpu/cuda)."""
    xp, X, W1, W2 = _check_wide(X, W1, W2)
    act = parse_activation(activation)
    a1 = check_scalar("a1", a1)
    return get_backend(resolve_backend(backend, xp)).forward(X, W1, W2, act, a1)


def wide_step(X, W1, W2, G, lr, *, activation="relu", a1=1.0, next_forward=False, backend="auto",
              out=None) -> StepResult:
    """One gradient-descent step of the wide layer, W1 and W2 updated in place.

    G = dPhi/dZ_2 (N, n2) is the gradient of the loss with respect to the wide layer's output H, as the tail
    produces it. The gradients are those of THEORY section 2 at the weights before the update; the update is
    W <- W - lr * dPhi/dW. With ``next_forward=True`` the forward pass of the updated weights is accumulated in
    the same sweep over the neurons and returned as ``StepResult.H_next``; ``out`` (with next_forward only): an
    (N, n2) C-contiguous writeable array of X's dtype and device that receives H_next. It may be G itself (H_next
    is written after the last read of G) but no part of X, W1, W2. The cpu backend writes into it directly, which
    saves one N x n2 buffer per step; the others compute H_next and copy it there.
    Returns StepResult(H_next or None, ||dPhi/dW1||_F^2, ||dPhi/dW2||_F^2).
    """
    xp, X, W1, W2 = _check_wide(X, W1, W2, inplace=True)
    G = check_float_array("G", G, 2, dtype=X.dtype, xp=xp, shape=(X.shape[0], W2.shape[1]))
    lr = check_scalar("lr", lr)
    act = parse_activation(activation)
    a1 = check_scalar("a1", a1)
    if W1 is W2 or _shares_memory(xp, W1, W2):
        raise PyrgdError("W1, W2: must not share memory (both are updated in place)")
    for name, a in (("X", X), ("G", G)):
        for wname, w in (("W1", W1), ("W2", W2)):
            if _shares_memory(xp, a, w):
                raise PyrgdError(f"{name}, {wname}: must not share memory ({wname} is updated in place)")
    if out is not None:
        if not next_forward:
            raise PyrgdError("out: only with next_forward=True (it receives H_next)")
        out = check_float_array("out", out, 2, dtype=X.dtype, xp=xp, shape=(X.shape[0], W2.shape[1]), inplace=True,
                                finite=False)
        for name, a in (("X", X), ("W1", W1), ("W2", W2)):
            if _shares_memory(xp, out, a):
                raise PyrgdError(f"out, {name}: must not share memory ({name} is read while out is written)")
    be = resolve_backend(backend, xp)
    if be == "cpu":
        return get_backend(be).step(X, W1, W2, G, lr, act, a1, bool(next_forward), out=out)
    res = get_backend(be).step(X, W1, W2, G, lr, act, a1, bool(next_forward))
    if out is None:
        return res
    out[...] = res.H_next
    return res._replace(H_next=out)


def wide_gram(X, W1, *, activation="relu", a1=1.0, W2=None, B2=None, backend="auto"):
    """Gram matrix (N, N) of the wide layer, streamed over its neurons.

    Without B2: F1 F1^T with F1 = a1 sigma(X W1). With B2 (N, n2) and W2: B1 B1^T with
    B1 = a1 (B2 W2^T) (.) sigma'(X W1), the layer-1 factor of the empirical NTK (THEORY section 5).
    """
    if (W2 is None) != (B2 is None):
        raise PyrgdError("W2, B2: give both (for the backward Gram B1 B1^T) or neither (for F1 F1^T)")
    xp, X, W1, W2 = _check_wide(X, W1, W2)
    if B2 is not None:
        B2 = check_float_array("B2", B2, 2, dtype=X.dtype, xp=xp, shape=(X.shape[0], W2.shape[1]))
    act = parse_activation(activation)
    a1 = check_scalar("a1", a1)
    return get_backend(resolve_backend(backend, xp)).gram(X, W1, act, a1, W2=W2, B2=B2)


def _shares_memory(xp, a, b) -> bool:
    """Whether two validated (C-contiguous) arrays overlap: a bounds check, exact for contiguous arrays and free
    of temporaries (cupy.shares_memory would allocate arrays the size of the data)."""
    return bool(xp.may_share_memory(a, b))
