"""CUDA backend of the wide-layer operations: CuPy RawModule over csrc/cuda/wide_layer.cu.

The kernels are real ``.cu`` files, read at run time and compiled through NVRTC by CuPy (whose disk cache keeps the
compiled modules across processes), one module per (dtype, activation), cached per device in this process. Shapes,
strides, ``a1``, ``gamma`` and ``lr`` are kernel arguments: a new shape never recompiles. Signatures and semantics as
in :mod:`pyrgd.backends` (arrays already validated by :mod:`pyrgd.ops`: C-contiguous, one dtype, finite):

- :func:`forward` -- H = a1 sigma(X W1) W2, one kernel launch; nothing N x n1 is stored.
- :func:`step` -- one fused kernel: each block owns a tile of neurons, sweeps the rows, accumulates the tile's
  gradients and updates W1[:, tile] and W2[tile, :] in place (no atomics, no d x n1 gradient buffer: a scratch of
  ST (d + n2) elements per resident block). ``next_forward=True`` is implemented as a forward launch after the step
  (same result as accumulating it in the step's sweep; one more pass over X). The only device-to-host transfer of
  a step is the two squared gradient norms, returned as Python floats.
- float32 forward and step run the register-blocked kernels ``wide_forward_f32`` / ``wide_step_f32`` (128 x 128
  block tiles, an 8 x 8 micro-tile per thread, double-buffered shared-memory k-chunks, over 48 KB of dynamic shared
  memory opted in per function); ``_USE_FAST = False`` selects the generic kernels (also used for float64).
- :func:`wide_grad` -- the gradients without an update (and dX): per chunk of neurons (and block of rows, at large
  N), one kernel writes a1 sigma(X W1) and the backward factor D of the chunk, cuBLAS adds the three products into
  the results (nothing N x n1, no temporary of the size of X).
- :func:`gram` -- loops over chunks of neurons on the host: a kernel writes F_chunk (N x c, at most
  ``_GRAM_CHUNK_BYTES``), cuBLAS adds F_chunk F_chunk^T into K.

Everything is deterministic: the same inputs give the same bits run after run (fixed-order sums, no float atomics;
cuBLAS GEMM is reproducible on one GPU model with its default atomics mode).

The module imports without CuPy; :func:`available` then says why it cannot run. :data:`ACTIVATION_STRUCTS` and
:func:`name_expressions` are the single list of kernel instantiations used both here and by
:mod:`pyrgd.nvrtc_check`.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailable, PyrgdError
from . import StepResult

name = "cuda"

#: activation name -> struct of csrc/include/pyrgd/activations.h, from the one Python table of the activations
#: (pyrgd.activations.ACTIVATION_TABLE)
from ..activations import ACTIVATION_STRUCTS  # noqa: E402
#: numpy dtype name -> C++ scalar type
SCALAR_TYPES = {"float32": "float", "float64": "double"}
#: the .cu files of csrc/cuda that hold the kernels (the NVRTC check compiles every .cu found there)
KERNEL_FILE = "wide_layer.cu"
#: kernels templated on <T, Activation>
_ACT_KERNELS = (
    "pyrgd::cuda::wide_forward_kernel",
    "pyrgd::cuda::wide_step_kernel",
    "pyrgd::cuda::wide_features_kernel",
    "pyrgd::cuda::wide_backward_features_kernel",
    "pyrgd::cuda::wide_grad_features_kernel",
)
#: float32-only register-blocked kernels (same signatures as wide_forward_kernel / wide_step_kernel), used for float32
_F32_KERNELS = (
    "pyrgd::cuda::wide_forward_f32",
    "pyrgd::cuda::wide_step_f32",
)
_SUM_PAIRS = "pyrgd_sum_pairs"
_TILE_CONFIG = "pyrgd::cuda::tile_config_kernel"
#: every kernel of a block has this many threads (checked against tile_config_kernel)
THREADS = 256
#: largest size accepted along any axis (indices inside the kernels are 32-bit with margin for one tile)
MAX_DIM = 2**31 - 1 - 4096

# Test and tuning knobs (module globals on purpose: tests set them through monkeypatch).
#: fill every buffer the backend allocates with NaN before a kernel writes it (tests: unwritten outputs show)
_POISON = False
#: upper bound on the blocks of a step launch (None: 2 per multiprocessor); results do not depend on it
_STEP_GRID_LIMIT = None
#: use the float32 register-blocked kernels (wide_forward_f32, wide_step_f32); False: the generic ones
_USE_FAST = True
#: size bound of the F chunk buffer of gram()
_GRAM_CHUNK_BYTES = 64 * 2**20

_AVAILABLE = None  # cached (ok, reason) of available()
_MODULES = {}  # (device id, dtype name, activation name) -> (RawModule, tile config dict)


# ----------------------------------------------------------------------------------------------------------------
# Sources, options and name expressions (no CuPy needed)


def source_dirs() -> tuple[Path, Path]:
    """(folder of the .cu files, include folder holding pyrgd/activations.h).

    The installed package's copy (pyrgd/_csrc/cuda, pyrgd/_csrc/include) is preferred, then the source tree
    (<repo>/csrc/cuda, <repo>/csrc/include). Raises BackendUnavailable when neither holds the kernels.
    """
    pkg = Path(__file__).resolve().parents[1]
    for cuda_dir, inc_dir in (
        (pkg / "_csrc" / "cuda", pkg / "_csrc" / "include"),
        (pkg.parent / "csrc" / "cuda", pkg.parent / "csrc" / "include"),
    ):
        if (cuda_dir / KERNEL_FILE).is_file() and (inc_dir / "pyrgd" / "activations.h").is_file():
            return cuda_dir, inc_dir
    raise BackendUnavailable(
        f"the CUDA kernel sources were not found (looked for {pkg / '_csrc' / 'cuda' / KERNEL_FILE} and "
        f"{pkg.parent / 'csrc' / 'cuda' / KERNEL_FILE}); reinstall pyrgd"
    )


def compile_options(cuda_dir: Path, include_dir: Path) -> tuple[str, ...]:
    """NVRTC options shared by the backend and the compile check (the check adds --gpu-architecture)."""
    return ("-std=c++17", f"-I{include_dir}", f"-I{cuda_dir}")


def header_digest(cuda_dir: Path, include_dir: Path) -> str:
    """SHA-256 over the headers the kernels include: part of the source text, so that CuPy's disk cache (keyed on
    the source text and options, not on included files) recompiles when a header changes."""
    h = hashlib.sha256()
    for p in sorted(cuda_dir.glob("*.cuh")) + sorted((include_dir / "pyrgd").glob("*.h")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def load_source(path: Path, digest: str = "") -> str:
    """Text of a .cu file as compiled: a comment with the header digest, then ``#line 1 "<absolute path>"`` so that
    compiler messages name the file and its own line numbers."""
    path = Path(path).resolve()
    text = path.read_text(encoding="utf-8")
    quoted = str(path).replace("\\", "/").replace('"', '\\"')
    return f"// pyrgd kernel source, headers sha256 {digest or 'n/a'}\n#line 1 \"{quoted}\"\n{text}"


def name_expressions(dtype_name: str, activation_name: str) -> list[str]:
    """NVRTC name expressions of every kernel of the module for (dtype, activation)."""
    T = SCALAR_TYPES[dtype_name]
    A = f"pyrgd::act::{ACTIVATION_STRUCTS[activation_name]}"
    kernels = _ACT_KERNELS + (_F32_KERNELS if T == "float" else ())
    return [f"{k}<{T}, {A}>" for k in kernels] + [f"{_TILE_CONFIG}<{T}>", _SUM_PAIRS]


def all_name_expressions() -> list[str]:
    """Every name expression of every (dtype, activation) module, without repeats, in a fixed order."""
    out = []
    for dt in SCALAR_TYPES:
        for act in ACTIVATION_STRUCTS:
            for e in name_expressions(dt, act):
                if e not in out:
                    out.append(e)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Availability and device information


def _cupy():
    import cupy

    return cupy


def array_namespace():
    """The array library of this backend's arrays: CuPy (BackendUnavailable without it)."""
    return _cupy()


def available() -> tuple[bool, str]:
    """(True, description) when CuPy, a CUDA device and the kernel sources are present; else (False, why). Never
    raises. The answer is cached for the process."""
    global _AVAILABLE
    if _AVAILABLE is not None:
        return _AVAILABLE
    try:
        cp = _cupy()
    except Exception as e:  # ImportError, or a broken CuPy install raising anything
        _AVAILABLE = (False, f"CuPy is not installed or fails to import ({type(e).__name__}: {e})")
        return _AVAILABLE
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as e:
        _AVAILABLE = (False, f"the CUDA driver or runtime failed ({type(e).__name__}: {e})")
        return _AVAILABLE
    if count < 1:
        _AVAILABLE = (False, "no CUDA device is visible")
        return _AVAILABLE
    try:
        source_dirs()
    except BackendUnavailable as e:
        _AVAILABLE = (False, str(e))
        return _AVAILABLE
    try:
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        gpu = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    except Exception as e:
        _AVAILABLE = (False, f"the CUDA device cannot be queried ({type(e).__name__}: {e})")
        return _AVAILABLE
    _AVAILABLE = (True, f"CuPy {cp.__version__} on {gpu} ({count} device(s))")
    return _AVAILABLE


def device_info(compile_all: bool = False) -> dict:
    """What ``pyrgd info`` prints about CUDA: availability, GPU name, compute capability, multiprocessors, CUDA
    runtime and driver versions, CuPy version, and whether the kernels compile (the relu modules of both dtypes, or
    every module with ``compile_all``). Never raises."""
    ok, why = available()
    info = {"available": ok, "reason": why}
    if not ok:
        return info
    cp = _cupy()
    try:
        dev = cp.cuda.Device()
        props = cp.cuda.runtime.getDeviceProperties(dev.id)
        nm = props["name"]
        info.update(
            device_id=dev.id,
            name=nm.decode() if isinstance(nm, bytes) else str(nm),
            compute_capability=str(dev.compute_capability),
            multiprocessors=int(props["multiProcessorCount"]),
            total_memory_bytes=int(props["totalGlobalMem"]),
            cuda_runtime_version=_fmt_cuda_version(cp.cuda.runtime.runtimeGetVersion()),
            cuda_driver_version=_fmt_cuda_version(cp.cuda.runtime.driverGetVersion()),
            cupy_version=cp.__version__,
        )
    except Exception as e:
        info["device_error"] = f"{type(e).__name__}: {e}"
    acts = list(ACTIVATION_STRUCTS) if compile_all else ["relu"]
    try:
        for dt in SCALAR_TYPES:
            for act in acts:
                _module(np.dtype(dt), act)
        info["kernels_compile"] = True
    except Exception as e:
        info["kernels_compile"] = False
        info["compile_error"] = f"{type(e).__name__}: {e}"
    return info


def _fmt_cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


# ----------------------------------------------------------------------------------------------------------------
# Modules


def _module(dtype, act_name: str):
    """(RawModule, tiles) for (dtype, activation) on the current device, compiled on first use."""
    cp = _cupy()
    dtype = np.dtype(dtype)
    dev = cp.cuda.Device().id
    key = (dev, dtype.name, act_name)
    hit = _MODULES.get(key)
    if hit is not None:
        return hit
    cuda_dir, inc_dir = source_dirs()
    src = load_source(cuda_dir / KERNEL_FILE, header_digest(cuda_dir, inc_dir))
    exprs = name_expressions(dtype.name, act_name)
    try:
        mod = cp.RawModule(code=src, options=compile_options(cuda_dir, inc_dir), name_expressions=exprs)
        cfg_kernel = mod.get_function(f"{_TILE_CONFIG}<{SCALAR_TYPES[dtype.name]}>")
    except cp.cuda.compiler.CompileException as e:  # pragma: no cover - the NVRTC check guards against this
        raise BackendUnavailable(f"the CUDA kernels failed to compile for {dtype.name}/{act_name}:\n{e}") from e
    out = cp.zeros(12, dtype=np.int32)
    cfg_kernel((1,), (32,), (out,))
    v = [int(x) for x in out.get()]
    tiles = dict(FM=v[0], FN=v[1], FT=v[2], SM=v[3], ST=v[4], SC=v[5], FAST=v[8], FAST_STEP_SMEM=v[9],
                 FAST_FWD_SMEM=v[10])
    if v[6] != THREADS or v[7] != dtype.itemsize:
        raise BackendUnavailable(f"CUDA kernel configuration mismatch: threads {v[6]}, sizeof(T) {v[7]}")
    _MODULES[key] = (mod, tiles)
    return mod, tiles


def _kernel(mod, kname: str, dtype, act_name: str, smem: int = 0):
    T = SCALAR_TYPES[np.dtype(dtype).name]
    A = f"pyrgd::act::{ACTIVATION_STRUCTS[act_name]}"
    f = mod.get_function(f"{kname}<{T}, {A}>")
    if smem > 48 * 1024 and getattr(f, "_pyrgd_smem", 0) < smem:
        f.max_dynamic_shared_size_bytes = smem  # above 48 KB only after this opt-in
        try:
            f._pyrgd_smem = smem
        except AttributeError:  # pragma: no cover - Function objects without a __dict__: set it every time
            pass
    return f


def _fast(tiles, dtype) -> bool:
    """Whether the float32 register-blocked kernels serve this dtype (tile_config reports them for float only)."""
    return np.dtype(dtype) == np.float32 and tiles.get("FAST", 0) > 0 and _USE_FAST


# ----------------------------------------------------------------------------------------------------------------
# Helpers


def _empty(shape, dtype):
    cp = _cupy()
    a = cp.empty(shape, dtype=dtype)
    if _POISON:
        a.fill(np.nan)
    return a


def _check_cuda_args(**arrays):
    """Same device for every array, and sizes the kernels' 32-bit indices can hold."""
    dev = None
    first = None
    for nm, a in arrays.items():
        if a is None:
            continue
        if not hasattr(a, "device"):
            raise PyrgdError(f"{nm}: expected a cupy.ndarray, got {type(a).__name__}")
        if dev is None:
            dev, first = a.device.id, nm
        elif a.device.id != dev:
            raise PyrgdError(f"{nm}: is on GPU {a.device.id} but {first} is on GPU {dev}; put all arrays on one GPU")
        for ax, s in enumerate(a.shape):
            if s > MAX_DIM:
                raise PyrgdError(f"{nm}: axis {ax} has {s} elements; the CUDA backend handles at most {MAX_DIM}")
    return dev


def _scalar(dtype, v):
    return np.dtype(dtype).type(v)


def _ld(a):
    return np.int64(a.strides[0] // a.itemsize)


def _sm_count(cp) -> int:
    return int(cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["multiProcessorCount"])


# ----------------------------------------------------------------------------------------------------------------
# Operations


def _launch_forward(cp, mod, tiles, X, W1, W2, act, a1, H=None):
    """Launch the forward kernel writing H (N, n2; a new array when None, else C-contiguous of X's dtype)."""
    N, d = X.shape
    n1, n2 = W2.shape
    fast = _fast(tiles, X.dtype)
    FM, FN = (tiles["FAST"], tiles["FAST"]) if fast else (tiles["FM"], tiles["FN"])
    gx, gy = -(-N // FM), -(-n2 // FN)
    if gy > 65535:
        raise PyrgdError(f"W2: n2 = {n2} columns is more than the CUDA backend handles ({65535 * FN})")
    H = _empty((N, n2), X.dtype) if H is None else H
    if fast:
        smem = tiles["FAST_FWD_SMEM"]
        k = _kernel(mod, "pyrgd::cuda::wide_forward_f32", X.dtype, act.name, smem)
    else:
        smem = 0
        k = _kernel(mod, "pyrgd::cuda::wide_forward_kernel", X.dtype, act.name)
    s = lambda v: _scalar(X.dtype, v)  # noqa: E731
    k(
        (gx, gy, 1),
        (THREADS, 1, 1),
        (X, W1, W2, H, np.int32(N), np.int32(d), np.int32(n1), np.int32(n2),
         _ld(X), _ld(W1), _ld(W2), _ld(H), s(a1), s(act.gamma)),
        shared_mem=smem,
    )
    return H


def forward(X, W1, W2, act, a1, out=None):
    """H = a1 sigma(X W1) W2 (N, n2): a new CuPy array on the arrays' device, or written into ``out`` (validated by
    :func:`pyrgd.ops.wide_forward`: C-contiguous, of the dtype, on that device, sharing no memory with the inputs)."""
    cp = _cupy()
    dev = _check_cuda_args(X=X, W1=W1, W2=W2, out=out)
    with cp.cuda.Device(dev):
        mod, tiles = _module(X.dtype, act.name)
        return _launch_forward(cp, mod, tiles, X, W1, W2, act, a1, H=out)


def step(X, W1, W2, G, lr, act, a1, next_forward, out=None):
    """One GD step of the wide layer; W1 and W2 are updated in place. See :mod:`pyrgd.backends`.

    ``next_forward=True`` runs a forward launch on the updated weights after the step kernel; H_next is written into
    ``out`` when given (it may be G: written after the step kernel read it).
    """
    cp = _cupy()
    dev = _check_cuda_args(X=X, W1=W1, W2=W2, G=G, out=out)
    with cp.cuda.Device(dev):
        mod, tiles = _module(X.dtype, act.name)
        N, d = X.shape
        n1, n2 = W2.shape
        fast = _fast(tiles, X.dtype)
        if fast:
            ST = SM = tiles["FAST"]
            per_block = ST * (-(-d // ST) * ST + -(-n2 // ST) * ST)  # d and n2 rounded up to the tile
            blocks_per_sm, smem = 1, tiles["FAST_STEP_SMEM"]
            kname = "pyrgd::cuda::wide_step_f32"
        else:
            ST, SM = tiles["ST"], tiles["SM"]
            per_block = ST * (d + n2)
            blocks_per_sm, smem = 2, 0
            kname = "pyrgd::cuda::wide_step_kernel"
        num_tiles = -(-n1 // ST)
        limit = _STEP_GRID_LIMIT if _STEP_GRID_LIMIT is not None else blocks_per_sm * _sm_count(cp)
        grid = max(1, min(num_tiles, int(limit)))
        # running gradients: per_block elements per block, used only when there is more than one row tile
        scratch = _empty((grid * per_block,) if N > SM else (1,), X.dtype)
        sq = _empty((2 * num_tiles,), np.float64)
        total = _empty((2,), np.float64)
        s = lambda v: _scalar(X.dtype, v)  # noqa: E731
        k = _kernel(mod, kname, X.dtype, act.name, smem)
        k(
            (grid, 1, 1),
            (THREADS, 1, 1),
            (X, W1, W2, G, np.int32(N), np.int32(d), np.int32(n1), np.int32(n2),
             _ld(X), _ld(W1), _ld(W2), _ld(G), s(a1), s(act.gamma), s(lr), scratch, sq),
            shared_mem=smem,
        )
        mod.get_function(_SUM_PAIRS)((1, 1, 1), (THREADS, 1, 1), (sq, np.int32(num_tiles), total))
        # into out directly: the forward launch follows the step kernel on the stream, so out may be G
        H_next = _launch_forward(cp, mod, tiles, X, W1, W2, act, a1, H=out) if next_forward else None
        g1, g2 = total.get()  # the step's one device-to-host transfer (synchronizes)
    return StepResult(H_next, float(g1), float(g2))


def _grad_blocks(N: int, n1: int, item: int, SM: int, ST: int, budget: int) -> tuple[int, int]:
    """(c, R) of :func:`wide_grad`: chunks of c neurons (a multiple of the tile ST, at least one tile, at most n1
    rounded up to a tile) and blocks of R rows (a multiple of SM, or N), so that S and D (R x c each) take at most
    ``budget`` bytes together where one tile of neurons over SM rows fits in it."""
    c = max(ST, (budget // (2 * N * item)) // ST * ST)
    c = min(c, 65535 * ST, ST * -(-n1 // ST))
    R = N if 2 * N * c * item <= budget else max(SM, (budget // (2 * c * item)) // SM * SM)
    return c, min(R, N)


def _gemm(cp, transa: str, transb: str, a, b, out, beta: float) -> None:
    """out = op(a) op(b) + beta out (op: 'N' as is, 'T' transposed) in one cuBLAS GEMM; beta 0: out is not read (it
    may hold anything). ``out`` C-contiguous. Without cupy.cublas.gemm: cp.matmul and, for beta 1, one temporary."""
    gemm = _cublas_gemm()
    if gemm is not None:
        gemm(transa, transb, a, b, out=out, alpha=1.0, beta=beta)
        return
    A, B = (a.T if transa == "T" else a), (b.T if transb == "T" else b)  # pragma: no cover - very old CuPy
    if beta == 0.0:  # pragma: no cover
        cp.matmul(A, B, out=out)
    else:  # pragma: no cover
        out += A @ B


def wide_grad(X, W1, W2, G, act, a1, input_grad=False, out=None):
    """(dW1, dW2) or (dW1, dW2, dX) given G = dPhi/dH; nothing updated. See :mod:`pyrgd.backends`.

    Loops on the host over chunks of c neurons and, inside a chunk, blocks of R rows (:func:`_grad_blocks`: R = N
    unless N x c would pass the budget): ``wide_grad_features_kernel`` writes S and D (R x c each, together at most
    ``_GRAM_CHUNK_BYTES`` whenever one tile of neurons over one tile of rows fits in it) for the block's rows of X
    and G; cuBLAS then adds S^T G[rows] into dW2[chunk], X[rows]^T D into a d x c buffer (copied into dW1[:, chunk]
    after the last block; dW1 itself when one chunk holds every neuron) and D W1[:, chunk]^T into dX[rows], each
    with beta = 1 after its first term, so no N x d or N x n2 temporary. Chunks and blocks in a fixed order:
    deterministic. Runs on CuPy's current stream (the caller's, e.g. torch's, when it set it).
    """
    cp = _cupy()
    outs = {f"out[{i}]": o for i, o in enumerate(out or ())}
    dev = _check_cuda_args(X=X, W1=W1, W2=W2, G=G, **outs)  # the out arrays on X's GPU too
    with cp.cuda.Device(dev):
        mod, tiles = _module(X.dtype, act.name)
        N, d = X.shape
        n1, n2 = W2.shape
        SM, ST = tiles["SM"], tiles["ST"]
        c, R = _grad_blocks(N, n1, X.dtype.itemsize, SM, ST, _GRAM_CHUNK_BYTES)
        cmax = min(c, n1)
        Sbuf, Dbuf = _empty((R * cmax,), X.dtype), _empty((R * cmax,), X.dtype)
        if out is None:
            out = (_empty((d, n1), X.dtype), _empty((n1, n2), X.dtype)) + ((_empty((N, d), X.dtype),)
                                                                             if input_grad else ())
        dW1, dW2 = out[0], out[1]
        dX = out[2] if input_grad else None
        one_chunk = cmax == n1
        T1buf = None if one_chunk else _empty((d * cmax,), X.dtype)  # X^T D of a chunk, over its row blocks
        Wbuf = _empty((d * cmax,), X.dtype) if dX is not None and not one_chunk else None  # W1[:, chunk], contiguous
        k = _kernel(mod, "pyrgd::cuda::wide_grad_features_kernel", X.dtype, act.name)
        s = lambda v: _scalar(X.dtype, v)  # noqa: E731
        for jb in range(0, n1, c):
            je = min(n1, jb + c)
            cc = je - jb
            dW1c = dW1 if one_chunk else T1buf[: d * cc].reshape(d, cc)
            if dX is not None:
                W1c = W1 if one_chunk else Wbuf[: d * cc].reshape(d, cc)
                if not one_chunk:
                    W1c[...] = W1[:, jb:je]
            for rb in range(0, N, R):
                re = min(N, rb + R)
                rows = re - rb
                S = Sbuf[: rows * cc].reshape(rows, cc)
                D = Dbuf[: rows * cc].reshape(rows, cc)
                Xr, Gr = X[rb:re], G[rb:re]
                k((-(-rows // SM), -(-cc // ST), 1), (THREADS, 1, 1),
                  (Xr, W1, W2, Gr, S, D, np.int32(rows), np.int32(d), np.int32(n1), np.int32(n2), _ld(X), _ld(W1),
                   _ld(W2), _ld(G), np.int32(jb), np.int32(je), np.int64(cc), s(a1), s(act.gamma)))
                first_rows = 0.0 if rb == 0 else 1.0
                _gemm(cp, "T", "N", S, Gr, dW2[jb:je], beta=first_rows)
                _gemm(cp, "T", "N", Xr, D, dW1c, beta=first_rows)
                if dX is not None:
                    _gemm(cp, "N", "T", D, W1c, dX[rb:re], beta=0.0 if jb == 0 else 1.0)
            if not one_chunk:
                dW1[:, jb:je] = dW1c
    return tuple(out)


def gram(X, W1, act, a1, W2=None, B2=None):
    """K (N, N) = F F^T with F = a1 sigma(X W1), or F = a1 (B2 W2^T) (.) sigma'(X W1) when B2 and W2 are given.

    F is never stored whole: chunks of c neurons (N x c at most ``_GRAM_CHUNK_BYTES``) are written by a kernel and
    added into K by cuBLAS (K = F_c F_c^T for the first chunk, K += F_c F_c^T after).
    """
    cp = _cupy()
    if (W2 is None) != (B2 is None):
        raise PyrgdError("W2, B2: give both (for the backward Gram B1 B1^T) or neither (for F1 F1^T)")
    dev = _check_cuda_args(X=X, W1=W1, W2=W2, B2=B2)
    with cp.cuda.Device(dev):
        mod, tiles = _module(X.dtype, act.name)
        N, d = X.shape
        n1 = W1.shape[1]
        SM, ST = tiles["SM"], tiles["ST"]
        item = X.dtype.itemsize
        c = max(ST, (_GRAM_CHUNK_BYTES // (N * item)) // ST * ST)
        c = min(c, 65535 * ST, ST * -(-n1 // ST))
        buf = _empty((N * min(c, n1),), X.dtype)
        K = _empty((N, N), X.dtype)
        s = lambda v: _scalar(X.dtype, v)  # noqa: E731
        if B2 is None:
            k = _kernel(mod, "pyrgd::cuda::wide_features_kernel", X.dtype, act.name)
        else:
            k = _kernel(mod, "pyrgd::cuda::wide_backward_features_kernel", X.dtype, act.name)
            n2 = W2.shape[1]
        gx = -(-N // SM)
        for jb in range(0, n1, c):
            je = min(n1, jb + c)
            cc = je - jb
            F = buf[: N * cc].reshape(N, cc)
            grid = (gx, -(-cc // ST), 1)
            if B2 is None:
                args = (X, W1, F, np.int32(N), np.int32(d), np.int32(n1), _ld(X), _ld(W1),
                        np.int32(jb), np.int32(je), np.int64(cc), s(a1), s(act.gamma))
            else:
                args = (X, W1, W2, B2, F, np.int32(N), np.int32(d), np.int32(n1), np.int32(n2),
                        _ld(X), _ld(W1), _ld(W2), _ld(B2), np.int32(jb), np.int32(je), np.int64(cc),
                        s(a1), s(act.gamma))
            k(grid, (THREADS, 1, 1), args)
            _gemm(cp, "N", "T", F, F, K, beta=0.0 if jb == 0 else 1.0)  # K (+)= F F^T
    return K


def _cublas_gemm():
    """cupy.cublas.gemm (a submodule CuPy does not import by itself), or None where this CuPy lacks it."""
    try:
        import cupy.cublas

        return getattr(cupy.cublas, "gemm", None)
    except Exception:  # pragma: no cover - very old CuPy
        return None


# --------------------------------------------------------------------------------------------- the step engine
#: the GD step methods of :func:`engine`
METHODS = ("neurons",)


def tail(H, Y, tail_weights, act, tail_multipliers, out=None):
    """The pyramidal tail from H = Z_2 with CuPy's products: (loss as a float, G, grads); see
    :func:`pyrgd.tail.tail_step` (``out`` unused)."""
    from ..tail import tail_step

    return tail_step(H, Y, tail_weights, act, tail_multipliers)


def plan_step(N, d, widths, dtype, act, method="auto") -> dict:
    """{'method': 'neurons', 'kept': None, 'bytes'}: device memory of the step besides X, Y and the weights (the
    neurons method's N x n_2 buffers H and G, the next H written over G; two more N x n_2 arrays for the tail's
    CuPy temporaries; and the step kernel's scratch, a few MiB)."""
    from .engine import neurons_step_bytes

    item = np.dtype(dtype).itemsize
    return {"method": "neurons", "kept": None,
            "bytes": neurons_step_bytes(N, widths, item, n2_buffers=4) + (8 << 20)}


def network_gradients(X, Y, W, act, mult) -> list:
    """[dPhi/dW_1, ..., dPhi/dW_L] at the current weights: H from :func:`forward`, the wide layer's gradients from
    CuPy products over blocks of neurons (:func:`pyrgd.backends.engine.blocked_network_gradients`)."""
    import sys

    from .engine import blocked_network_gradients

    return blocked_network_gradients(sys.modules[__name__], X, Y, W, act, mult)


def engine(X, Y, W, act, mult, method="auto", allreduce=None):
    """The step engine of this backend: the neurons method (:class:`pyrgd.backends.engine.NeuronsEngine`) over
    :func:`forward`, :func:`step` and :func:`tail`."""
    import sys

    from .engine import NeuronsEngine

    _cupy()
    return NeuronsEngine(sys.modules[__name__], X, Y, W, act, mult, allreduce=allreduce)
