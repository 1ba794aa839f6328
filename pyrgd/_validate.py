"""Input checks shared by every public entry point. Each failure raises PyrgdError naming the argument."""
from __future__ import annotations

import numbers

import numpy as np

from .errors import PyrgdError

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def array_module(a):
    """numpy or cupy, by the type of a; None for anything that is not an ndarray of either."""
    if isinstance(a, np.ndarray):
        return np
    mod = type(a).__module__
    if mod.startswith("cupy") and hasattr(a, "__cuda_array_interface__"):
        import cupy

        return cupy
    return None


def is_cupy(a) -> bool:
    return type(a).__module__.startswith("cupy") and hasattr(a, "__cuda_array_interface__")


def check_float_array(name, a, ndim, *, dtype=None, xp=None, inplace=False, shape=None, finite=True):
    """Return ``a`` as a C-contiguous, native-order, finite float32/float64 array of ``ndim`` dimensions.

    - a NumPy/CuPy array of another float dtype, integers or a list is *not* silently converted: the error says
      which dtype is expected (dtype=None accepts float32 and float64; conversions are the caller's choice).
    - a non-contiguous or byte-swapped array is copied, unless ``inplace`` (the function writes into it), in which
      case it is rejected, since a copy would leave the caller's array unchanged.
    - ``shape``: a tuple with ints or None (None: any size) that the shape must match.
    - ``xp``: the array module the array must belong to (all arrays of one call live on one device).
    - ``finite``: reject NaN and infinities (False for an output buffer, whose content is overwritten).
    """
    mod = array_module(a)
    if mod is None:
        raise PyrgdError(
            f"{name}: expected a numpy.ndarray or cupy.ndarray of float32 or float64, got {type(a).__name__}"
        )
    if xp is not None and mod is not xp:
        where = "GPU (cupy)" if xp is not np else "host (numpy)"
        raise PyrgdError(f"{name}: expected an array on the {where} like the other arguments, got {type(a).__module__}")
    if a.ndim != ndim:
        raise PyrgdError(f"{name}: expected a {ndim}-D array, got shape {tuple(a.shape)}")
    base = np.dtype(a.dtype.type)  # the dtype in native byte order
    if base not in FLOAT_DTYPES:
        raise PyrgdError(f"{name}: expected dtype float32 or float64, got {a.dtype}")
    if dtype is not None and base != np.dtype(dtype):
        raise PyrgdError(f"{name}: expected dtype {np.dtype(dtype)} like the other arguments, got {a.dtype}")
    if shape is not None:
        for axis, (got, want) in enumerate(zip(a.shape, shape)):
            if want is not None and got != want:
                raise PyrgdError(f"{name}: expected shape {_fmt_shape(shape)}, got {tuple(a.shape)} (axis {axis})")
    if any(s == 0 for s in a.shape):
        raise PyrgdError(f"{name}: expected a non-empty array, got shape {tuple(a.shape)}")
    native = a.dtype.isnative
    if not (a.flags.c_contiguous and native):
        if inplace:
            why = "not C-contiguous" if native else "not in native byte order"
            raise PyrgdError(
                f"{name}: is updated in place but is {why}; pass a C-contiguous native array "
                f"(e.g. numpy.ascontiguousarray({name}, dtype=...)) and keep a reference to it"
            )
        a = mod.ascontiguousarray(a, dtype=base)
    if inplace and not getattr(a.flags, "writeable", True):  # CuPy arrays have no such flag
        raise PyrgdError(f"{name}: is updated in place but is read-only")
    if finite and not all_finite(a):
        raise PyrgdError(f"{name}: contains NaN or infinite values")
    return a


#: elements :func:`all_finite` checks at a time on the host (its temporaries: a few arrays of this many elements)
FINITE_CHUNK = 1 << 16
#: the same on a GPU, where each chunk costs a kernel launch: a bool temporary of this many bytes at most
DEVICE_FINITE_CHUNK = 1 << 24


def all_finite(a) -> bool:
    """Whether a C-contiguous float array holds no NaN or infinity, checked in chunks, so that the check allocates a
    few chunks, never an array the size of ``a``: on the host chunks of FINITE_CHUNK elements (stopping at the
    first bad one), on a GPU (CuPy) :func:`device_all_finite`, which waits for the device once."""
    xp = array_module(a) or np
    flat = a.reshape(-1)
    if xp is not np:
        return device_all_finite(flat, xp)
    for i in range(0, flat.size, FINITE_CHUNK):
        if not bool(np.isfinite(flat[i:i + FINITE_CHUNK]).all()):
            return False
    return True


def device_all_finite(flat, xp, chunk=None) -> bool:
    """All elements of the 1-D array ``flat`` finite: one reduction per chunk of ``chunk`` elements (None:
    DEVICE_FINITE_CHUNK), kept on the device, and one transfer of their combined result (a check per chunk that
    read each result back would wait for the GPU once per chunk: thousands of times for a large X)."""
    chunk = DEVICE_FINITE_CHUNK if chunk is None else int(chunk)
    parts = [xp.isfinite(flat[i:i + chunk]).all() for i in range(0, flat.size, chunk)]
    return bool(xp.stack(parts).all()) if parts else True


def _fmt_shape(shape):
    return "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"


def check_scalar(name, v, *, positive=False, nonnegative=False):
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise PyrgdError(f"{name}: expected a real number, got {v!r}")
    v = float(v)
    if not np.isfinite(v):
        raise PyrgdError(f"{name}: expected a finite number, got {v!r}")
    if positive and v <= 0:
        raise PyrgdError(f"{name}: expected a positive number, got {v!r}")
    if nonnegative and v < 0:
        raise PyrgdError(f"{name}: expected a non-negative number, got {v!r}")
    return v


def check_in_dtype(name, v: float, dtype) -> float:
    """``v`` (a checked finite float) unchanged when the arrays' ``dtype`` holds it as a finite number (the kernels
    compute with it in that dtype); PyrgdError naming ``name`` when it overflows there (1e39 in float32)."""
    with np.errstate(over="ignore"):
        stored = np.dtype(dtype).type(v)
    if not np.isfinite(stored):
        raise PyrgdError(f"{name}: {v!r} is {float(stored)} in the arrays' dtype {np.dtype(dtype).name}; expected a "
                         f"number that dtype holds")
    return v


def check_positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
        raise PyrgdError(f"{name}: expected a positive integer, got {v!r}")
    return int(v)


def check_nonnegative_int(name, v):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
        raise PyrgdError(f"{name}: expected a non-negative integer, got {v!r}")
    return int(v)
