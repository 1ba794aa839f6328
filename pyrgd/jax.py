"""JAX adapter: the wide first layer as a differentiable JAX function (``pip install 'pyrgd[jax]'``).

    wide(X, W1, W2, activation="relu", a1=1.0) = a1 sigma(X W1) W2      X (N, d), W1 (d, n1), W2 (n1, n2) -> (N, n2)

A ``jax.custom_vjp`` function: the forward pass is :func:`pyrgd.ops.wide_forward` and the backward pass
:func:`pyrgd.ops.wide_grad` (dW1, dW2 and dX), both run on the host by ``jax.pure_callback`` on the C++ kernels
(nothing N x n1 is stored). It works under ``jax.jit``, ``jax.grad`` / ``jax.vjp`` and ``jax.vmap``.

Limits:

- Host only: the callbacks run on the CPU C++ kernels. Arrays on a GPU are copied to the host and back (a
  pure_callback does that), and the CUDA kernels are not used from JAX.
- First order only: the backward pass is a callback, which JAX cannot differentiate (``jax.hessian``, or
  ``jax.grad`` of a gradient, raise); forward-mode (``jax.jvp``, ``jax.jacfwd``) is not defined for a custom_vjp.
- XLA sees an opaque call: nothing is fused across it, and the callback's arguments are copied between XLA's
  buffers and NumPy (zero-copy where XLA allows).
- ``vmap`` calls the kernels once per batch element (``vmap_method="sequential"``).
- float32, or float64 with ``jax.config.update("jax_enable_x64", True)``; ``activation`` and ``a1`` are static
  (Python values, not traced).
- NaN and infinite values propagate, as through any JAX operation (``jax_debug_nans`` sees them), instead of
  raising inside the callback.
"""
from __future__ import annotations

import functools

try:
    import jax
    import jax.numpy as jnp
except ImportError as _e:  # pragma: no cover - the extra is not installed
    raise ImportError("pyrgd.jax needs JAX: pip install 'pyrgd[jax]'") from _e

import numpy as np

from . import ops
from ._validate import check_scalar
from .activations import parse_activation
from .errors import PyrgdError

__all__ = ["wide"]


def _host_forward(act, a1, X, W1, W2):
    return np.asarray(ops.wide_forward(np.asarray(X), np.asarray(W1), np.asarray(W2), activation=act, a1=a1,
                                       check_finite=False))


def _host_grad(act, a1, X, W1, W2, G):
    dW1, dW2, dX = ops.wide_grad(np.asarray(X), np.asarray(W1), np.asarray(W2), np.asarray(G), activation=act,
                                 a1=a1, input_grad=True, check_finite=False)
    return dX, dW1, dW2


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _wide(X, W1, W2, act, a1):
    out = jax.ShapeDtypeStruct((X.shape[0], W2.shape[1]), X.dtype)
    return jax.pure_callback(functools.partial(_host_forward, act, a1), out, X, W1, W2, vmap_method="sequential")


def _wide_fwd(X, W1, W2, act, a1):
    return _wide(X, W1, W2, act, a1), (X, W1, W2)


def _wide_bwd(act, a1, res, G):
    X, W1, W2 = res
    shapes = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (X, W1, W2))
    return jax.pure_callback(functools.partial(_host_grad, act, a1), shapes, X, W1, W2, G.astype(X.dtype),
                             vmap_method="sequential")


_wide.defvjp(_wide_fwd, _wide_bwd)


def wide(X, W1, W2, activation="relu", a1=1.0):
    """a1 sigma(X W1) W2 (N, n2), differentiable (reverse mode) in X, W1 and W2; see the module's limits.

    X (N, d), W1 (d, n1), W2 (n1, n2): JAX arrays (or anything jnp.asarray takes) of one float dtype, float32 or
    float64. ``activation``: a name such as ``"tanh"`` or ``"smooth_leaky_relu(0.2)"``; ``a1``: a number (both
    static). Shapes and dtypes are checked here (PyrgdError); non-finite values propagate to the result.
    """
    act = str(parse_activation(activation))
    a1 = check_scalar("a1", a1)
    X, W1, W2 = (jnp.asarray(a) for a in (X, W1, W2))
    for name, a in (("X", X), ("W1", W1), ("W2", W2)):
        if a.ndim != 2:
            raise PyrgdError(f"{name}: expected a 2-D array, got shape {tuple(a.shape)}")
        if a.dtype not in (jnp.float32, jnp.float64):
            raise PyrgdError(f"{name}: expected dtype float32 or float64, got {a.dtype}")
        if a.dtype != X.dtype:
            raise PyrgdError(f"{name}: expected dtype {X.dtype} like X, got {a.dtype}")
    if W1.shape[0] != X.shape[1] or W2.shape[0] != W1.shape[1]:
        raise PyrgdError(f"X, W1, W2: expected shapes (N, d), (d, n1), (n1, n2), got {tuple(X.shape)}, "
                         f"{tuple(W1.shape)}, {tuple(W2.shape)}")
    return _wide(X, W1, W2, act, a1)
