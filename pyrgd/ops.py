"""Stable functional API of the wide first layer, for embedding pyrgd as a backend.

Shapes (docs/theory.md sections 1-2): X (N, d), W1 (d, n1), W2 (n1, n2), G and H (N, n2). All arrays of one call share
one dtype (float32 or float64) and one device: NumPy arrays run on the C++ backend (``cpu``) or the NumPy oracle
(``reference``), CuPy arrays on the CUDA backend (``cuda``). ``backend="auto"`` follows the array type.

Other array libraries (PyTorch, JAX, ...): every function takes any array with the DLPack protocol (``__dlpack__``)
as well. Host arrays are read through ``numpy.from_dlpack`` and CUDA arrays through ``cupy.from_dlpack``, both
zero-copy (a torch tensor that requires grad is detached first; the arrays a function updates or writes in place, W1,
W2 and ``out``, must allow it: a JAX array is read-only). The arrays a function returns are of the kind of its X
(torch in, torch out; JAX in, JAX out; through DLPack, zero-copy where the library allows), and an ``out`` given is
returned as the caller's own object.

Every function checks its arguments and raises :class:`pyrgd.PyrgdError` naming the argument and what was expected.
That includes NaN and infinite values in the input arrays (one pass over each; on a GPU the check waits for the device
once per array); ``check_finite=False`` skips that check, and non-finite inputs then give non-finite results, as in
any array library (the kernels never fail on them; the adapters :mod:`pyrgd.torch` and :mod:`pyrgd.jax` work this
way, so that an optimizer's own overflow handling, e.g. ``torch.amp.GradScaler``, sees the infinities).
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

import contextlib
import functools
import importlib
import warnings

import numpy as np

from ._validate import array_module, check_float_array, check_in_dtype, check_scalar
from .activations import check_activation_dtype, parse_activation
from .backends import BACKENDS, StepResult
from .errors import BackendUnavailable, PyrgdError

__all__ = ["wide_forward", "wide_step", "wide_grad", "wide_gram", "step_engine", "get_backend", "resolve_backend", "StepResult"]

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
    where = _ARRAYS_OF[backend]
    if where == "gpu" and not on_gpu:
        raise PyrgdError(f"backend: {backend!r} needs CuPy arrays (cupy.asarray(...)); got NumPy arrays")
    if where == "host" and on_gpu:
        raise PyrgdError(f"backend: {backend!r} needs NumPy arrays; got CuPy arrays (use backend='cuda' or 'auto')")
    return backend


#: where each backend's arrays live: 'host' (NumPy), 'gpu' (CuPy) or 'any' (the reference takes either)
_ARRAYS_OF = {"reference": "any", "cpu": "host", "cuda": "gpu"}


def backend_for_arrays(backend: str, xp):
    """(name, array module) of the backend a run takes for ``backend`` ('auto' allowed) and input arrays of module
    ``xp``: 'auto' follows the arrays; a named backend takes them to its device (the caller moves them)."""
    if backend == "auto":
        name = resolve_backend("auto", xp)
    elif isinstance(backend, str) and backend in BACKENDS:
        name = backend
    else:
        raise PyrgdError(f"backend: expected one of auto, {', '.join(BACKENDS)}, got {backend!r}")
    return name, get_backend(name).array_namespace()


def backend_threads(name: str):
    """The CPU threads backend ``name`` computes with, or None where it has no such setting."""
    get = getattr(get_backend(name), "get_num_threads", None)
    return None if get is None else int(get())


def backend_isa(name: str):
    """The instruction set backend ``name``'s kernels use ('avx512', 'avx2', 'generic'), or None where it has none
    (a resumed run checks it: the kernels of two instruction sets may differ in the last bits)."""
    get = getattr(get_backend(name), "get_isa", None)
    return None if get is None else str(get())


# ------------------------------------------------------------------------------------------ array interop (DLPack)
_DLPACK_HOST = (1, 3)  # kDLCPU, kDLCUDAHost (pinned host memory)
_DLPACK_CUDA = (2, 13)  # kDLCUDA, kDLCUDAManaged


def _import_array(name, a, written=False):
    """``a`` as a NumPy or CuPy array: those as they are; any other object with ``__dlpack__`` through DLPack,
    zero-copy (numpy.from_dlpack on the host, cupy.from_dlpack on a CUDA device); anything else unchanged (the
    checks then reject it). A torch tensor that requires grad is detached first (same memory). A torch tensor with
    its negative bit set (a lazy negation, e.g. ``.conj().imag``; DLPack exports the memory without it) is resolved
    into a copy when only read, refused when ``written`` (the call would write the memory of its negation)."""
    if a is None or isinstance(a, np.ndarray) or array_module(a) is not None or not hasattr(a, "__dlpack__"):
        return a
    if getattr(a, "requires_grad", False) and callable(getattr(a, "detach", None)):
        a = a.detach()
    if callable(getattr(a, "is_neg", None)) and a.is_neg():
        if written:
            raise PyrgdError(f"{name}: a torch tensor with its negative bit set (a lazy negation, e.g. from "
                             f".conj().imag) cannot be written in place; pass {name}.resolve_neg() and keep it")
        a = a.resolve_neg()
    try:
        dev = int(a.__dlpack_device__()[0])
    except Exception as e:
        raise PyrgdError(f"{name}: a DLPack array whose device cannot be read ({type(e).__name__}: {e})") from None
    try:
        if dev in _DLPACK_HOST:
            return np.from_dlpack(a)
        if dev in _DLPACK_CUDA:
            try:
                import cupy
            except ImportError:
                raise BackendUnavailable(f"{name}: a CUDA array needs CuPy ({_INSTALL_HINT['cuda']})") from None
            return cupy.from_dlpack(a)
    except (BufferError, TypeError, RuntimeError, ValueError) as e:
        raise PyrgdError(f"{name}: cannot be read through DLPack ({type(e).__name__}: {e}); expected a float32 or "
                         f"float64 array") from None
    raise PyrgdError(f"{name}: an array on DLPack device type {dev}; expected a host (CPU) or CUDA array")


def _exporter(a):
    """The function that turns a NumPy/CuPy result into the kind of array ``a`` is (the caller's X): torch.from_dlpack
    for a torch tensor, jax.numpy.from_dlpack for a JAX array; None for NumPy, CuPy and other kinds (results stay
    NumPy/CuPy arrays)."""
    root = type(a).__module__.split(".")[0]
    if root == "torch":
        import torch

        return torch.from_dlpack
    if root in ("jax", "jaxlib"):
        import jax.numpy as jnp

        return jnp.from_dlpack
    return None


class _Interop:
    """The arrays of one call imported (:func:`_import_array`) and a way back to the caller's kind for the results.
    ``put(name, a)`` imports one argument; ``back(r)`` exports a result (an array, None, or a tuple / StepResult of
    them; an imported ``out`` array comes back as the caller's own object; floats stay floats)."""

    def __init__(self, first):
        self._export = _exporter(first)
        self._mine = {}  # id(imported out array) -> the caller's object

    def put(self, name, a, *, keep=False, written=False):
        """``a`` imported; ``keep``: an out array (written, and returned as the caller's own object);
        ``written``: an array the call updates in place."""
        b = _import_array(name, a, written=written or keep)
        if keep:  # the caller's own object comes back, whatever kind the call's X is
            self._mine[id(b)] = a
        return b

    def back(self, r):
        if isinstance(r, StepResult):
            return r._replace(H_next=self.back(r.H_next))
        if isinstance(r, tuple):
            return tuple(self.back(x) for x in r)
        if r is None or isinstance(r, float):
            return r
        if id(r) in self._mine:
            return self._mine[id(r)]
        return r if self._export is None else self._export(r)


@contextlib.contextmanager
def caller_stream(X):
    """For a torch CUDA tensor X: CuPy's current device and stream become torch's current ones for X's device, so
    that the kernels, and the writes into ``out`` arrays, run in order with the caller's work on that stream (a
    result handed back through DLPack is ordered by torch itself, an ``out`` tensor is not). Nothing for any other
    array."""
    if type(X).__module__.split(".")[0] != "torch" or not getattr(X, "is_cuda", False):
        yield
        return
    import cupy
    import torch

    with cupy.cuda.Device(X.device.index):
        stream = torch.cuda.current_stream(X.device)
        with cupy.cuda.ExternalStream(stream.cuda_stream, X.device.index):
            yield


def _on_callers_stream(fn):
    """``fn(X, ...)`` run inside :func:`caller_stream` of its X."""
    @functools.wraps(fn)
    def run(X, *args, **kwargs):
        with caller_stream(X):
            return fn(X, *args, **kwargs)
    return run


def _check_wide(X, W1, W2, *, inplace=False, finite=True):
    if not isinstance(finite, bool):
        raise PyrgdError(f"check_finite: expected True or False, got {finite!r}")
    X = check_float_array("X", X, 2, finite=finite)
    xp = array_module(X)
    N, d = X.shape
    W1 = check_float_array("W1", W1, 2, dtype=X.dtype, xp=xp, shape=(d, None), inplace=inplace, finite=finite)
    n1 = W1.shape[1]
    if W2 is not None:
        W2 = check_float_array("W2", W2, 2, dtype=X.dtype, xp=xp, shape=(n1, None), inplace=inplace, finite=finite)
    return xp, X, W1, W2


def _act_and_a1(activation, a1, dtype):
    """(the Activation, a1 as a float), both checked, also against the arrays' ``dtype`` the kernels use them in."""
    act = check_activation_dtype(parse_activation(activation), dtype)
    return act, check_in_dtype("a1", check_scalar("a1", a1), dtype)


def _check_out(xp, name, out, dtype, shape, reads):
    """``out`` validated as an array the call writes: C-contiguous, writeable, of ``dtype`` and ``shape``, sharing
    no memory with any array of ``reads`` ((name, array) pairs)."""
    out = check_float_array(name, out, 2, dtype=dtype, xp=xp, shape=shape, inplace=True, finite=False)
    for rname, a in reads:
        if _shares_memory(xp, out, a):
            raise PyrgdError(f"{name}, {rname}: must not share memory ({name} is written while {rname} is read)")
    return out


@_on_callers_stream
def wide_forward(X, W1, W2, *, activation="relu", a1=1.0, backend="auto", out=None, check_finite=True):
    """H = a1 sigma(X W1) W2, shape (N, n2), streamed over the n1 neurons (nothing N x n1 is kept by cpu/cuda).

    ``out``: None, or an (N, n2) C-contiguous writeable array of X's dtype and device, sharing no memory with X, W1,
    W2, which receives H (and is returned: the caller's own object). ``check_finite``: see the module."""
    io = _Interop(X)
    X, W1, W2 = io.put("X", X), io.put("W1", W1), io.put("W2", W2)
    out = io.put("out", out, keep=True)
    xp, X, W1, W2 = _check_wide(X, W1, W2, finite=check_finite)
    act, a1 = _act_and_a1(activation, a1, X.dtype)
    if out is not None:
        out = _check_out(xp, "out", out, X.dtype, (X.shape[0], W2.shape[1]), (("X", X), ("W1", W1), ("W2", W2)))
    return io.back(get_backend(resolve_backend(backend, xp)).forward(X, W1, W2, act, a1, out=out))


@_on_callers_stream
def wide_step(X, W1, W2, G, lr, *, activation="relu", a1=1.0, next_forward=False, backend="auto",
              out=None, check_finite=True) -> StepResult:
    """One gradient-descent step of the wide layer, W1 and W2 updated in place.

    G = dPhi/dZ_2 (N, n2) is the gradient of the loss with respect to the wide layer's output H, as the tail
    produces it. The gradients are those of docs/theory.md section 2 at the weights before the update; the update is
    W <- W - lr * dPhi/dW. With ``next_forward=True`` the forward pass of the updated weights is accumulated in
    the same sweep over the neurons and returned as ``StepResult.H_next``; ``out`` (with next_forward only): an
    (N, n2) C-contiguous writeable array of X's dtype and device that receives H_next. It may be G itself (H_next
    is written after the last read of G) but no part of X, W1, W2.
    Returns StepResult(H_next or None, ||dPhi/dW1||_F^2, ||dPhi/dW2||_F^2).
    """
    io = _Interop(X)
    X, W1, W2, G = io.put("X", X), io.put("W1", W1, written=True), io.put("W2", W2, written=True), io.put("G", G)
    out = io.put("out", out, keep=True)
    xp, X, W1, W2 = _check_wide(X, W1, W2, inplace=True, finite=check_finite)
    G = check_float_array("G", G, 2, dtype=X.dtype, xp=xp, shape=(X.shape[0], W2.shape[1]), finite=check_finite)
    lr = check_in_dtype("lr", check_scalar("lr", lr), X.dtype)
    act, a1 = _act_and_a1(activation, a1, X.dtype)
    if W1 is W2 or _shares_memory(xp, W1, W2):
        raise PyrgdError("W1, W2: must not share memory (both are updated in place)")
    for name, a in (("X", X), ("G", G)):
        for wname, w in (("W1", W1), ("W2", W2)):
            if _shares_memory(xp, a, w):
                raise PyrgdError(f"{name}, {wname}: must not share memory ({wname} is updated in place)")
    if out is not None:
        if not next_forward:
            raise PyrgdError("out: only with next_forward=True (it receives H_next)")
        out = _check_out(xp, "out", out, X.dtype, (X.shape[0], W2.shape[1]), (("X", X), ("W1", W1), ("W2", W2)))
    return io.back(get_backend(resolve_backend(backend, xp)).step(X, W1, W2, G, lr, act, a1, bool(next_forward),
                                                                   out=out))


@_on_callers_stream
def wide_grad(X, W1, W2, G, *, activation="relu", a1=1.0, input_grad=False, out=None, backend="auto",
              check_finite=True):
    """The wide layer's gradients given G = dPhi/dZ_2 (N, n2), nothing updated (the backward pass of
    Z_2 = a1 sigma(X W1) W2 for an autograd system).

    Returns (dW1, dW2) or, with ``input_grad=True``, (dW1, dW2, dX): dW1 = X^T D (d, n1),
    dW2 = (a1 sigma(X W1))^T G (n1, n2), dX = D W1^T (N, d), with D = a1 (G W2^T) (.) sigma'(X W1) never stored whole
    by cpu/cuda (streamed over blocks of neurons). Arrays of X's dtype and device. ``out``: None, or a tuple of 2
    (3 with input_grad) C-contiguous writeable arrays of those shapes, X's dtype and device, sharing no memory with
    the inputs or each other, which receive the results (and are returned).
    On cpu, dW1 and dW2 are bit for bit the gradients :func:`wide_step` applies, and every result has the same bits
    for any number of threads.
    """
    io = _Interop(X)
    X, W1, W2, G = io.put("X", X), io.put("W1", W1), io.put("W2", W2), io.put("G", G)
    if isinstance(out, (tuple, list)):
        out = tuple(io.put(f"out[{i}]", o, keep=True) for i, o in enumerate(out))
    xp, X, W1, W2 = _check_wide(X, W1, W2, finite=check_finite)
    N, d = X.shape
    n1, n2 = W2.shape
    G = check_float_array("G", G, 2, dtype=X.dtype, xp=xp, shape=(N, n2), finite=check_finite)
    act, a1 = _act_and_a1(activation, a1, X.dtype)
    if not isinstance(input_grad, bool):
        raise PyrgdError(f"input_grad: expected True or False, got {input_grad!r}")
    if out is not None:
        names = ("dW1", "dW2", "dX")[: 3 if input_grad else 2]
        shapes = ((d, n1), (n1, n2), (N, d))
        if not isinstance(out, (tuple, list)) or len(out) != len(names):
            raise PyrgdError(f"out: expected None or a tuple of {len(names)} arrays ({', '.join(names)}), "
                             f"got {out!r:.80}")
        checked = []
        for i, (nm, o) in enumerate(zip(names, out)):
            reads = (("X", X), ("W1", W1), ("W2", W2), ("G", G)) + tuple((f"out[{k}]", c) for k, c in enumerate(checked))
            o = _check_out(xp, f"out[{i}] ({nm})", o, X.dtype, shapes[i], reads)
            checked.append(o)
        out = tuple(checked)
    return io.back(get_backend(resolve_backend(backend, xp)).wide_grad(X, W1, W2, G, act, a1, input_grad, out=out))


@_on_callers_stream
def wide_gram(X, W1, *, activation="relu", a1=1.0, W2=None, B2=None, backend="auto", check_finite=True):
    """Gram matrix (N, N) of the wide layer, streamed over its neurons.

    Without B2: F1 F1^T with F1 = a1 sigma(X W1). With B2 (N, n2) and W2: B1 B1^T with
    B1 = a1 (B2 W2^T) (.) sigma'(X W1), the layer-1 factor of the empirical NTK (docs/theory.md section 5).
    """
    if (W2 is None) != (B2 is None):
        raise PyrgdError("W2, B2: give both (for the backward Gram B1 B1^T) or neither (for F1 F1^T)")
    io = _Interop(X)
    X, W1, W2, B2 = io.put("X", X), io.put("W1", W1), io.put("W2", W2), io.put("B2", B2)
    xp, X, W1, W2 = _check_wide(X, W1, W2, finite=check_finite)
    if B2 is not None:
        B2 = check_float_array("B2", B2, 2, dtype=X.dtype, xp=xp, shape=(X.shape[0], W2.shape[1]),
                               finite=check_finite)
    act, a1 = _act_and_a1(activation, a1, X.dtype)
    return io.back(get_backend(resolve_backend(backend, xp)).gram(X, W1, act, a1, W2=W2, B2=B2))


def step_engine(X, Y, W, *, activation="relu", multipliers=None, backend="auto", method="auto", allreduce=None):
    """The step engine of the whole network (:class:`pyrgd.backends.engine.StepEngine`): full-batch GD on ``W``.

    X (N, d), Y (N, n_L); W = [W_1, ..., W_L] (L >= 2), C-contiguous writeable arrays of X's dtype (float32 or
    float64) and device, shapes (d, n_1), (n_1, n_2), ..., updated in place by ``engine.update(lr)``; they must not
    share memory with each other, X or Y. ``activation``: a name or :class:`pyrgd.Activation`; ``multipliers``:
    [a_1, ..., a_{L-1}] (None: all 1). ``method``: 'auto' (the backend's choice for the shapes), 'rows' (cpu only:
    one pass over panels of rows) or 'neurons' (streamed over the wide layer's neurons, every backend).
    ``allreduce``: for a distributed engine, see :class:`pyrgd.backends.engine.NeuronsEngine`.
    X, Y and the W_l may be DLPack arrays (torch tensors, ...): the engine then runs on NumPy/CuPy views of their
    memory (W updated in place in the caller's tensors) and what it returns (gradients) is NumPy/CuPy.

    >>> import numpy as np, pyrgd.ops as ops
    >>> rng = np.random.default_rng(0)
    >>> X, Y = rng.standard_normal((64, 3)), rng.standard_normal((64, 1))
    >>> W = [rng.standard_normal((3, 128)) / 3 ** 0.5, rng.standard_normal((128, 1)) / 128 ** 0.5]
    >>> eng = ops.step_engine(X, Y, W, activation="tanh", backend="reference")
    >>> first = eng.evaluate(); _ = eng.update(0.01); eng.evaluate() < first
    True
    """
    if not isinstance(W, (list, tuple)) or len(W) < 2:
        raise PyrgdError("W: expected a list of at least two weight arrays [W_1, W_2, ...]")
    if not isinstance(W, list):
        raise PyrgdError("W: expected a list (the engine updates its arrays in place), got a tuple")
    X, Y = _import_array("X", X), _import_array("Y", Y)
    W = [_import_array(f"W[{l}]", w, written=True) for l, w in enumerate(W)]  # DLPack arrays: NumPy/CuPy views of the same memory
    X = check_float_array("X", X, 2)
    xp = array_module(X)
    N, rows = X.shape
    for l, w in enumerate(W, start=1):
        check_float_array(f"W[{l - 1}]", w, 2, dtype=X.dtype, xp=xp, shape=(rows, None), inplace=True)
        rows = w.shape[1]
    Y = check_float_array("Y", Y, 2, dtype=X.dtype, xp=xp, shape=(N, rows))
    for i, a in enumerate(W):
        for j, b in enumerate(W[:i]):
            if _shares_memory(xp, a, b):
                raise PyrgdError(f"W[{j}], W[{i}]: must not share memory (both are updated in place)")
        for name, other in (("X", X), ("Y", Y)):
            if _shares_memory(xp, a, other):
                raise PyrgdError(f"W[{i}], {name}: must not share memory (W[{i}] is updated in place)")
    act = check_activation_dtype(parse_activation(activation), X.dtype)
    if multipliers is None:
        multipliers = [1.0] * (len(W) - 1)
    if not isinstance(multipliers, (list, tuple)) or len(multipliers) != len(W) - 1:
        raise PyrgdError(f"multipliers: expected L - 1 = {len(W) - 1} numbers [a_1, ..., a_(L-1)], "
                         f"got {multipliers!r}")
    mult = [check_in_dtype(f"multipliers[{j}]", check_scalar(f"multipliers[{j}]", a), X.dtype)
            for j, a in enumerate(multipliers)]
    if allreduce is not None and not callable(allreduce):
        raise PyrgdError(f"allreduce: expected None or a function summing an array in place, got {allreduce!r}")
    be = get_backend(resolve_backend(backend, xp))
    methods = ("auto",) + tuple(be.METHODS)
    if method == "rows" and "rows" not in methods:
        raise PyrgdError(f"method: 'rows' needs the cpu backend, got backend {be.name!r}")
    if method not in methods:
        raise PyrgdError(f"method: expected one of {', '.join(methods)} on backend {be.name!r}, got {method!r}")
    return be.engine(X, Y, W, act, mult, method=method, allreduce=allreduce)


def _shares_memory(xp, a, b) -> bool:
    """Whether two validated (C-contiguous) arrays overlap: a bounds check, exact for contiguous arrays and free
    of temporaries (cupy.shares_memory would allocate arrays the size of the data)."""
    return bool(xp.may_share_memory(a, b))
