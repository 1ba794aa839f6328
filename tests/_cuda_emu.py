"""The CUDA backend end to end on the CPU: its kernels compiled as host C++ by tests/cuda_emu/emu.h, its host code
unchanged, CuPy replaced by the module :func:`make_cupy` builds (:class:`EmuArray`: NumPy arrays standing for
device arrays, and not usable as host arrays).

Three ways in: :func:`install` patches only ``pyrgd.backends.cuda._cupy`` and ``_cublas_gemm`` (the backend's
functions on device arrays); :func:`install_module` makes ``import cupy`` give the stand-in for one test (ops,
train, the engines); :func:`install_for_process` does it for a whole process, which is what ``pytest
--cuda-emulator`` (tests/conftest.py) and :data:`SCRIPT_PRELUDE` (MPI ranks' scripts) use. Module compilation, the
tile configuration read back from ``tile_config_kernel``, the shared-memory opt-in, every launch's grid and argument
list and the host loops all run as they would on a GPU. A launch checks its arguments against the kernel's C++
signature (an ``np.int64`` where the kernel takes ``int``, a float64 array where it takes ``float*``, or a host
array, is an error as it would be a wrong result or an error under CuPy), runs the kernel's threads as fibers
(barriers, shared memory poisoned with NaN bytes, threads and blocks in the order :data:`ORDER` says; see emu.h)
and checks the guard bytes around every array this module allocated (a write past an array's end is an error; a
read there reads NaN). PYRGD_CUDA_EMU_SANITIZE=1 builds the kernels with ASan + UBSan instead of guard bytes.

What it cannot tell: speed, the GPU's rounding, NVRTC's dialect (tests/test_nvrtc_compile.py compiles the kernels
with NVRTC), races inside one barrier interval that no thread order exposes, and anything CuPy itself does.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time
import types
import weakref
from pathlib import Path

import numpy as np

from _fake_cupy import fake_gemm

EMU_HEADER = Path(__file__).resolve().parent / "cuda_emu" / "emu.h"
#: PYRGD_CUDA_EMU_SANITIZE=1: kernels built with AddressSanitizer + UBSan (the process must preload their runtimes,
#: as .ci/sanitize.sh does); arrays then get no guard bytes, so that ASan sees any access past an array
SANITIZE = os.environ.get("PYRGD_CUDA_EMU_SANITIZE", "") not in ("", "0")
GUARD = 0 if SANITIZE else 4096  # bytes of 0xFF before and after every array EmuCuPy allocates
_CXXFLAGS = ("-std=c++17", "-O1", "-shared", "-fPIC", "-fno-strict-aliasing", "-w") + (
    ("-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer")
    if SANITIZE else ())
_CODES = {np.dtype(np.float32): "f4", np.dtype(np.float64): "f8", np.dtype(np.int32): "i4",
          np.dtype(np.int64): "i8", np.dtype(np.uint32): "u4"}
_GUARDED = {}  # id(buffer) -> weakref to the uint8 buffer holding a guarded array

#: fiber order of every launch: 0 ascending thread index, 1 descending, 2 shuffled per barrier interval
ORDER = 0
#: seed of the shuffled order
SEED = 0


class EmuError(RuntimeError):
    """A launch the GPU would refuse, or a kernel doing what CUDA leaves undefined."""


class _Device:
    """cupy.cuda.Device: device 0 of a machine with one GPU."""

    id = 0
    compute_capability = "90"
    pci_bus_id = "0000:00:00.0"

    def __init__(self, dev=None):
        if dev is not None and int(dev) != 0:
            raise EmuError(f"device {dev}: the emulator has one device, 0")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def use(self):
        pass

    def synchronize(self):
        pass


def _unwrap(x):
    """Host arrays inside a structure of device arrays (for calling NumPy)."""
    if isinstance(x, EmuArray):
        return x._a
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _wrap(x):
    """Device arrays for the host arrays NumPy returned (0-d results stay device arrays, as in CuPy)."""
    if isinstance(x, np.ndarray):
        return EmuArray(x)
    if isinstance(x, np.generic) and isinstance(x, (np.floating, np.integer, np.bool_, np.complexfloating)):
        return EmuArray(np.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


def _no_host(args, what):
    for a in args:
        if isinstance(a, np.ndarray) and a.ndim > 0:
            raise TypeError(f"{what}: a host (NumPy) array among device arrays; copy it with cupy.asarray")
        if isinstance(a, (list, tuple)):
            _no_host(a, what)


class _Pointer:
    def __init__(self, ptr):
        self.ptr = ptr


class EmuArray(np.lib.mixins.NDArrayOperatorsMixin):
    """A device array (cupy.ndarray) held in host memory: arithmetic, NumPy functions and methods run in NumPy on the
    held array and return device arrays. Like CuPy, it is not a numpy.ndarray, converts to one only through
    ``get()`` (``numpy.asarray(a)`` raises TypeError), and refuses host arrays as operands."""

    __array_priority__ = 100
    __module__ = "cupy._emulated"  # pyrgd tells CuPy arrays by their type's module, as CuPy names it

    def __init__(self, host: np.ndarray):
        self._a = host
        if host.base is None and host.nbytes:  # a result NumPy allocated: CuPy would take it from its pool
            _POOL.allocate(host.nbytes)
            weakref.finalize(host, _POOL.release, host.nbytes)

    # conversion
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a "
                        "NumPy array explicitly.")

    def get(self, stream=None):
        return np.array(self._a, copy=True)

    def set(self, arr):
        self._a[...] = arr

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        _no_host(inputs, ufunc.__name__)
        if "out" in kwargs:
            _no_host(kwargs["out"], ufunc.__name__)
            kwargs["out"] = _unwrap(kwargs["out"])
        return _wrap(getattr(ufunc, method)(*_unwrap(inputs), **kwargs))

    def __array_function__(self, func, types, args, kwargs):
        _no_host(args, func.__name__)
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    # attributes CuPy has
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: EmuArray(self._a.T))
    device = property(lambda self: _Device())
    data = property(lambda self: _Pointer(self._a.ctypes.data))
    base = property(lambda self: None)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self._a.ctypes.data, False),
                "strides": self.strides, "version": 3}

    def __getitem__(self, key):
        return _wrap(self._a[_unwrap(key)])

    def __setitem__(self, key, value):
        self._a[_unwrap(key)] = _unwrap(value)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (EmuArray(np.asarray(v)) for v in self._a)

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __bool__(self):
        return bool(self._a)

    def __index__(self):
        return self._a.__index__()

    def __repr__(self):
        return f"EmuArray({self._a!r})"

    def item(self):
        return self._a.item()

    def tolist(self):
        return self._a.tolist()

    def copy(self, order="C"):
        out = empty(self.shape, self.dtype)
        out._a[...] = self._a
        return out

    def astype(self, dtype, order="K", copy=True):
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        out = empty(self.shape, dtype)
        out._a[...] = self._a
        return out

    def __getattr__(self, name):  # reshape, ravel, sum, fill, view, transpose, ...: NumPy's, on device arrays
        if name.startswith("__") or name in ("ctypes", "tobytes", "tofile", "__array_interface__"):
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if not callable(attr):
            return _wrap(attr)
        return lambda *a, **k: _wrap(attr(*_unwrap(a), **_unwrap(k)))


def empty(shape, dtype=np.float64, order="C"):
    """A device array inside a buffer with GUARD bytes of 0xFF on each side."""
    dtype = np.dtype(dtype)
    shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = np.full(nbytes + 2 * GUARD, 0xFF, dtype=np.uint8)
    key = id(buf)
    _GUARDED[key] = weakref.ref(buf, lambda _ref, key=key: _GUARDED.pop(key, None))
    _POOL.allocate(nbytes)
    weakref.finalize(buf, _POOL.release, nbytes)
    return EmuArray(buf[GUARD:GUARD + nbytes].view(dtype).reshape(shape))


def zeros(shape, dtype=np.float64):
    a = empty(shape, dtype)
    a._a[...] = 0
    return a


def ones(shape, dtype=np.float64):
    return full(shape, 1, dtype)


def full(shape, value, dtype=np.float64):
    a = empty(shape, dtype)
    a._a[...] = value
    return a


def empty_like(a, dtype=None):
    return empty(a.shape, dtype or a.dtype)


def zeros_like(a, dtype=None):
    return zeros(a.shape, dtype or a.dtype)


def ones_like(a, dtype=None):
    return full(a.shape, 1, dtype or a.dtype)


def full_like(a, value, dtype=None):
    return full(a.shape, value, dtype or a.dtype)


def asarray(a, dtype=None, order=None):
    """A device array: ``a`` itself when already one of the dtype (and C-contiguous where asked), else a copy."""
    if isinstance(a, EmuArray):
        if (dtype is None or a.dtype == np.dtype(dtype)) and (order != "C" or a._a.flags.c_contiguous):
            return a
        h = a._a
    else:
        h = np.asarray(a)
    h = h.astype(dtype if dtype is not None else h.dtype, copy=False)
    out = empty(h.shape, h.dtype)
    out._a[...] = h
    return out


def array(a, dtype=None, copy=True, order="K"):
    if isinstance(a, EmuArray) and not copy:
        return asarray(a, dtype)
    h = a._a if isinstance(a, EmuArray) else np.asarray(a)
    out = empty(h.shape, dtype or h.dtype)
    out._a[...] = h
    return out


def ascontiguousarray(a, dtype=None):
    return asarray(a, dtype, order="C")


def asnumpy(a, stream=None, order="C"):
    return a.get() if isinstance(a, EmuArray) else np.asarray(a)


def _guard_buffer(a):
    """The guarded uint8 buffer under an array (through its chain of views), or None."""
    node = a._a if isinstance(a, EmuArray) else a
    while isinstance(node, np.ndarray):
        ref = _GUARDED.get(id(node))
        if ref is not None and ref() is node:
            return node
        node = node.base
    return None


# ----------------------------------------------------------------------------------------------------- compiling
_SHARED_STATIC = re.compile(r"^(\s*)__shared__\s+([\w:]+)\s+(\w+)\s*\[([^\]]+)\]\s*;", re.M)
_SHARED_DYNAMIC = re.compile(r"^(\s*)extern\s+__shared__\s+([\w:]+)\s+(\w+)\s*\[\s*\]\s*;", re.M)


def transform_source(code: str) -> str:
    """The kernel source with its shared-memory declarations rewritten for emu.h; every ``__shared__`` outside a
    comment must be one of the two forms."""
    out = _SHARED_DYNAMIC.sub(r"\1\2* const \3 = ::emu::dynamic_shared<\2>();", code)
    out = _SHARED_STATIC.sub(r"\1\2* const \3 = ::emu::static_shared<\2>(\4);", out)
    for line in out.splitlines():
        if "__shared__" in line.split("//")[0]:
            raise EmuError(f"a __shared__ declaration the emulator cannot rewrite: {line.strip()}")
    return out


def _cache_dir() -> Path:
    d = Path(os.environ.get("PYRGD_CUDA_EMU_CACHE") or Path(tempfile.gettempdir()) / f"pyrgd-cuda-emu-{os.getuid()}")
    d.mkdir(parents=True, exist_ok=True)
    return d


def compile_module(code: str, options, name_expressions) -> ctypes.CDLL:
    """The shared library of ``code`` (as given to cupy.RawModule) with one entry per name expression; compiled
    once per source, options and expressions, cached on disk (PYRGD_CUDA_EMU_CACHE, else the temp folder)."""
    includes = [o for o in options if o.startswith("-I")]
    body = [f'#include "{EMU_HEADER}"', transform_source(code), "", "namespace emu_registry {"]
    for i, e in enumerate(name_expressions):
        body.append(f"static void invoke_{i}(void** a) {{ ::emu::call(&{e}, a); }}")
    table = ", ".join(f"{{\"{e}\", &invoke_{i}, ::emu::signature_of(&{e})}}" for i, e in enumerate(name_expressions))
    body += [
        "struct Row { const char* name; void (*invoke)(void**); std::string signature; };",
        f"static const std::vector<Row>& rows() {{ static const std::vector<Row> r{{{table}}}; return r; }}",
        "}  // namespace emu_registry",
        'extern "C" int emu_count() { return (int)emu_registry::rows().size(); }',
        'extern "C" const char* emu_name(int i) { return emu_registry::rows()[i].name; }',
        'extern "C" const char* emu_signature(int i) { return emu_registry::rows()[i].signature.c_str(); }',
        'extern "C" int emu_launch(int i, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,',
        '                          unsigned bz, size_t smem, size_t smem_limit, void** args, int order,',
        '                          unsigned long seed, char* err, size_t errlen) {',
        "  std::string e = ::emu::launch(emu_registry::rows()[i].invoke, args, dim3{gx, gy, gz}, dim3{bx, by, bz},",
        "                                smem, smem_limit, order, seed);",
        "  snprintf(err, errlen, \"%s\", e.c_str());",
        "  return e.empty() ? 0 : 1;",
        "}",
    ]
    text = "\n".join(body) + "\n"
    cxx = os.environ.get("CXX", "c++")
    key = hashlib.sha256("\0".join([text, EMU_HEADER.read_text(), cxx, *includes, *_CXXFLAGS]).encode()).hexdigest()
    d = _cache_dir()
    lib = d / f"emu_{key[:24]}.so"
    if not lib.exists():
        src = d / f"emu_{key[:24]}.cpp"
        src.write_text(text)
        tmp = d / f"emu_{key[:24]}.{os.getpid()}.so"
        r = subprocess.run([cxx, *_CXXFLAGS, *includes, str(src), "-o", str(tmp)], capture_output=True, text=True)
        if r.returncode != 0:
            raise EmuError(f"the kernels failed to compile for the emulator:\n{r.stderr[-4000:]}")
        os.replace(tmp, lib)
    dll = ctypes.CDLL(str(lib))
    dll.emu_name.restype = ctypes.c_char_p
    dll.emu_signature.restype = ctypes.c_char_p
    dll.emu_launch.argtypes = [ctypes.c_int] + [ctypes.c_uint] * 6 + [ctypes.c_size_t, ctypes.c_size_t,
                                                                       ctypes.c_void_p, ctypes.c_int,
                                                                       ctypes.c_ulong, ctypes.c_char_p,
                                                                       ctypes.c_size_t]
    return dll


class EmuFunction:
    """One kernel of an EmuModule, called like a cupy.RawKernel: ``f(grid, block, args, shared_mem=0)``."""

    def __init__(self, dll, index: int, name: str, signature: list[str], launches: list):
        self.dll, self.index, self.name, self.signature, self.launches = dll, index, name, signature, launches
        self.max_dynamic_shared_size_bytes = 0

    def _pack(self, args):
        if len(args) != len(self.signature):
            raise EmuError(f"{self.name}: {len(args)} arguments given, the kernel takes {len(self.signature)}")
        keep, ptrs = [], (ctypes.c_void_p * max(1, len(args)))()
        for i, (a, want) in enumerate(zip(args, self.signature)):
            if isinstance(a, np.ndarray):
                raise EmuError(f"{self.name}: argument {i} is a host (NumPy) array, not a device array")
            if isinstance(a, EmuArray):
                got = "*" + _CODES.get(a.dtype, a.dtype.str)
                cell = ctypes.c_void_p(a.data.ptr)
            elif isinstance(a, np.generic):
                got = _CODES.get(a.dtype, a.dtype.str)
                cell = ctypes.create_string_buffer(a.tobytes(), a.dtype.itemsize)
            elif isinstance(a, bool) or not isinstance(a, (int, float)):
                raise EmuError(f"{self.name}: argument {i} of type {type(a).__name__} is not supported")
            else:  # CuPy passes a Python int as a 64-bit integer and a float as a double
                s = np.int64(a) if isinstance(a, int) else np.float64(a)
                got = _CODES[s.dtype]
                cell = ctypes.create_string_buffer(s.tobytes(), 8)
            if got != want:
                raise EmuError(f"{self.name}: argument {i} is {got}, the kernel's parameter is {want}")
            keep.append(cell)
            ptrs[i] = ctypes.cast(ctypes.pointer(cell), ctypes.c_void_p) if isinstance(cell, ctypes.c_void_p) \
                else ctypes.cast(cell, ctypes.c_void_p)
        return keep, ptrs

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        grid = tuple(int(g) for g in (tuple(grid) + (1, 1))[:3])
        block = tuple(int(b) for b in (tuple(block) + (1, 1))[:3])
        keep, ptrs = self._pack(tuple(args))
        limit = max(48 * 1024, int(self.max_dynamic_shared_size_bytes))
        err = ctypes.create_string_buffer(2048)
        rc = self.dll.emu_launch(self.index, *grid, *block, int(shared_mem), limit, ptrs, ORDER, SEED, err, 2048)
        self.launches.append({"kernel": self.name, "grid": grid, "block": block, "shared_mem": int(shared_mem)})
        if rc != 0:
            raise EmuError(f"{self.name}: {err.value.decode()}")
        for i, a in enumerate(args):
            buf = _guard_buffer(a) if isinstance(a, EmuArray) else None
            if buf is not None and GUARD and not (np.all(buf[:GUARD] == 0xFF) and np.all(buf[-GUARD:] == 0xFF)):
                raise EmuError(f"{self.name}: wrote outside the buffer of argument {i}")
        del keep


class EmuModule:
    """cupy.RawModule(code=, options=, name_expressions=) on the emulator."""

    def __init__(self, code, options=(), name_expressions=(), launches=None):
        self.dll = compile_module(code, tuple(options), tuple(name_expressions))
        self.launches = launches if launches is not None else []
        self.functions = {}
        for i in range(self.dll.emu_count()):
            nm = self.dll.emu_name(i).decode()
            self.functions[nm] = EmuFunction(self.dll, i, nm, self.dll.emu_signature(i).decode().split(),
                                             self.launches)

    def get_function(self, name):
        try:
            return self.functions[name]
        except KeyError:
            raise EmuError(f"{name} is not among the module's name expressions") from None


class _MemoryPool:
    """cupy's default memory pool, as bookkeeping over the arrays :func:`empty` makes: a freed array's bytes stay
    held (``total_bytes``) until a later array of at most that size reuses them or ``free_all_blocks``, as CuPy's
    pool holds freed blocks; sizes rounded up to 512 bytes as CuPy does."""

    def __init__(self):
        self.used = self.cached = 0

    @staticmethod
    def _round(n):
        return -(-int(n) // 512) * 512

    def allocate(self, n):
        n = self._round(n)
        self.cached = max(0, self.cached - n)
        self.used += n

    def release(self, n):
        n = self._round(n)
        self.used -= n
        self.cached += n

    def used_bytes(self):
        return self.used

    def total_bytes(self):
        return self.used + self.cached

    def free_bytes(self):
        return self.cached

    def free_all_blocks(self):
        self.cached = 0

    def n_free_blocks(self):
        return 0

    def set_limit(self, size=None, fraction=None):
        pass

    def get_limit(self):
        return 0


_POOL = _MemoryPool()


class _Event:
    def __init__(self, *args, **kwargs):
        self.t = time.perf_counter()

    def record(self, stream=None):
        self.t = time.perf_counter()

    def synchronize(self):
        pass


class _Stream:
    """cupy.cuda.Stream / ExternalStream: launches run at once, so every stream is the null stream."""

    ptr = 0

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        pass

    def use(self):
        return self


def _numpy_function(f, name):
    """A CuPy function from NumPy's: device arrays in, device arrays out, host arrays refused."""
    def g(*args, **kwargs):
        _no_host(args, name)
        return _wrap(f(*_unwrap(args), **_unwrap(kwargs)))
    g.__name__ = name
    return g


def _namespace(name, numpy_ns, own):
    m = types.ModuleType(name)
    m.__dict__.update(own)

    def __getattr__(attr):
        v = getattr(numpy_ns, attr)
        return _numpy_function(v, attr) if callable(v) and not isinstance(v, type) else v

    m.__getattr__ = __getattr__
    return m


def make_cupy(multiprocessors: int = 4) -> types.ModuleType:
    """A module standing for ``cupy`` on the emulator: the array constructors above, NumPy's functions on device
    arrays, ``cuda`` (one device with ``multiprocessors`` SMs, events, streams, the runtime queries pyrgd makes),
    ``RawModule`` (compiled for the emulator), ``cublas.gemm``, memory pools. ``launches`` records every kernel
    launch of the modules it compiles."""
    launches = []
    props = {"multiProcessorCount": multiprocessors, "name": b"CUDA emulator (CPU)", "totalGlobalMem": 1 << 34,
             "major": 9, "minor": 0}
    runtime = types.SimpleNamespace(
        getDeviceProperties=lambda dev: props, getDeviceCount=lambda: 1,
        memGetInfo=lambda: ((1 << 34) - _POOL.total_bytes(), 1 << 34),
        runtimeGetVersion=lambda: 12080, driverGetVersion=lambda: 12080, deviceSynchronize=lambda: None)
    cuda_ns = types.ModuleType("cupy.cuda")
    cuda_ns.__dict__.update(
        Device=_Device, runtime=runtime, compiler=types.SimpleNamespace(CompileException=EmuError),
        Event=_Event, get_elapsed_time=lambda a, b: (b.t - a.t) * 1e3, Stream=_Stream, ExternalStream=_Stream,
        get_current_stream=lambda: _Stream(), set_allocator=lambda allocator=None: None,
        set_pinned_memory_allocator=lambda allocator=None: None)
    cublas = types.ModuleType("cupy.cublas")
    cublas.gemm = fake_gemm
    pool, pinned = _POOL, _MemoryPool()
    own = dict(
        __version__="emulated", ndarray=EmuArray, launches=launches, cuda=cuda_ns, cublas=cublas,
        linalg=_namespace("cupy.linalg", np.linalg, {}),
        empty=empty, zeros=zeros, ones=ones, full=full, empty_like=empty_like, zeros_like=zeros_like,
        ones_like=ones_like, full_like=full_like, asarray=asarray, array=array,
        ascontiguousarray=ascontiguousarray, asnumpy=asnumpy,
        from_dlpack=lambda a: a if isinstance(a, EmuArray) else (_ for _ in ()).throw(
            TypeError("the emulator takes DLPack only from its own arrays")),
        get_array_module=lambda *arrays: sys.modules.get("cupy") if any(
            isinstance(a, EmuArray) for a in arrays) else np,
        get_default_memory_pool=lambda: pool, get_default_pinned_memory_pool=lambda: pinned,
        RawModule=lambda code, options=(), name_expressions=(): EmuModule(code, options, name_expressions, launches),
        emulator_prelude=SCRIPT_PRELUDE,
    )
    return _namespace("cupy", np, own)


def install(monkeypatch, multiprocessors=4) -> types.ModuleType:
    """Run pyrgd.backends.cuda on the emulator (its module cache emptied first and after): its ``_cupy()`` returns
    :func:`make_cupy`'s module; returns that module, whose ``launches`` records every kernel launch."""
    from pyrgd.backends import cuda

    fake = make_cupy(multiprocessors)
    monkeypatch.setattr(cuda, "_cupy", lambda: fake)
    monkeypatch.setattr(cuda, "_cublas_gemm", lambda: fake_gemm)
    monkeypatch.setattr(cuda, "_MODULES", {})
    return fake


def _module_entries(fake):
    """sys.modules entries of the emulator's cupy, and of cupyx.scipy.special (erf, over SciPy's)."""
    import scipy.special

    special = _namespace("cupyx.scipy.special", scipy.special, {})
    scipy_ns = _namespace("cupyx.scipy", types.SimpleNamespace(), {"special": special})
    cupyx = _namespace("cupyx", types.SimpleNamespace(), {"scipy": scipy_ns})
    return (("cupy", fake), ("cupy.cuda", fake.cuda), ("cupy.cublas", fake.cublas), ("cupy.linalg", fake.linalg),
            ("cupyx", cupyx), ("cupyx.scipy", scipy_ns), ("cupyx.scipy.special", special))


def install_module(monkeypatch, multiprocessors=4) -> types.ModuleType:
    """Make ``import cupy`` give the emulator's module everywhere (pyrgd.ops, train, the engines, ...), for the
    rest of the test; returns it."""
    from pyrgd.backends import cuda

    fake = make_cupy(multiprocessors)
    for name, mod in _module_entries(fake):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(cuda, "_MODULES", {})
    monkeypatch.setattr(cuda, "_AVAILABLE", None)
    return fake


def install_for_process(multiprocessors=4) -> types.ModuleType:
    """:func:`install_module` for a whole process (an MPI rank's script), before it imports pyrgd."""
    fake = make_cupy(multiprocessors)
    sys.modules.update(dict(_module_entries(fake)))
    return fake


#: lines that make a script run on the emulator (put before its imports)
SCRIPT_PRELUDE = (f"import sys\nsys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
                  "import _cuda_emu\n_cuda_emu.install_for_process()\n")


@contextlib.contextmanager
def order(o: int, seed: int = 0):
    """Launches inside run their threads in order ``o`` (see ORDER)."""
    global ORDER, SEED
    old = ORDER, SEED
    ORDER, SEED = o, seed
    try:
        yield
    finally:
        ORDER, SEED = old
