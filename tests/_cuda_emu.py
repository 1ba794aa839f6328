"""The CUDA backend end to end on the CPU: its kernels compiled as host C++ by tests/cuda_emu/emu.h, its host code
unchanged, CuPy replaced by :class:`EmuCuPy` (NumPy arrays standing for device arrays).

:func:`install` patches only :func:`pyrgd.backends.cuda._cupy` and ``_cublas_gemm``: module compilation, the tile
configuration read back from ``tile_config_kernel``, the shared-memory opt-in, every launch's grid and argument
list and the host loops all run as they would on a GPU. A launch checks its arguments against the kernel's C++
signature (an ``np.int64`` where the kernel takes ``int``, a float64 array where it takes ``float*``, or a host
array, is an error as it would be a wrong result or an error under CuPy), runs the kernel's threads as fibers
(barriers, shared memory poisoned with NaN bytes, see emu.h) and checks the guard bytes around every array this
module allocated (a write past an array's end is an error; a read there reads NaN).

What it cannot tell: speed, the GPU's rounding, NVRTC's dialect (tests/test_nvrtc_compile.py compiles the kernels
with NVRTC), races between blocks (blocks run one after another) and anything CuPy itself does.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
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
    id = 0
    compute_capability = "90"

    def __init__(self, dev=None):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class EmuArray(np.ndarray):
    """A NumPy array standing for a CuPy array on device 0."""

    @property
    def device(self):
        return _Device()

    def get(self):
        return np.array(self, copy=True).view(np.ndarray)


def empty(shape, dtype=np.float64):
    """An EmuArray inside a buffer with GUARD bytes of 0xFF on each side."""
    dtype = np.dtype(dtype)
    shape = (shape,) if np.isscalar(shape) else tuple(shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = np.full(nbytes + 2 * GUARD, 0xFF, dtype=np.uint8)
    key = id(buf)
    _GUARDED[key] = weakref.ref(buf, lambda _ref, key=key: _GUARDED.pop(key, None))
    return buf[GUARD:GUARD + nbytes].view(dtype).reshape(shape).view(EmuArray)


def zeros(shape, dtype=np.float64):
    a = empty(shape, dtype)
    a[...] = 0
    return a


def full(shape, value, dtype=np.float64):
    a = empty(shape, dtype)
    a[...] = value
    return a


def asarray(a, dtype=None):
    """A device copy of a host array (C-contiguous), or ``a`` itself when already an EmuArray of the dtype."""
    if isinstance(a, EmuArray) and (dtype is None or a.dtype == np.dtype(dtype)):
        return a
    h = np.asarray(a, dtype=dtype)
    out = empty(h.shape, h.dtype)
    out[...] = h
    return out


def asnumpy(a):
    return np.array(a, copy=True).view(np.ndarray)


def _guard_buffer(a):
    """The guarded uint8 buffer under an array (through its chain of views), or None."""
    node = a
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
                if not isinstance(a, EmuArray):
                    raise EmuError(f"{self.name}: argument {i} is a host (NumPy) array, not a device array")
                got = "*" + _CODES.get(a.dtype, a.dtype.str)
                cell = ctypes.c_void_p(a.ctypes.data)
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


class EmuCuPy(types.SimpleNamespace):
    """The CuPy names the CUDA backend and the emulated tests use."""

    def __init__(self, multiprocessors=4):
        launches = []
        props = {"multiProcessorCount": multiprocessors, "name": b"CUDA emulator (CPU)", "totalGlobalMem": 1 << 34}
        runtime = types.SimpleNamespace(getDeviceProperties=lambda dev: props, getDeviceCount=lambda: 1)
        compiler = types.SimpleNamespace(CompileException=EmuError)
        super().__init__(
            ndarray=EmuArray, empty=empty, zeros=zeros, full=full, asarray=asarray, asnumpy=asnumpy,
            matmul=np.matmul, nan=np.nan, launches=launches, __version__="emulated",
            cuda=types.SimpleNamespace(Device=_Device, runtime=runtime, compiler=compiler),
            RawModule=lambda code, options=(), name_expressions=(): EmuModule(code, options, name_expressions,
                                                                              launches),
        )


def install(monkeypatch, multiprocessors=4) -> EmuCuPy:
    """Run pyrgd.backends.cuda on the emulator (its module cache emptied first and after); returns the EmuCuPy,
    whose ``launches`` records every kernel launch."""
    from pyrgd.backends import cuda

    fake = EmuCuPy(multiprocessors)
    monkeypatch.setattr(cuda, "_cupy", lambda: fake)
    monkeypatch.setattr(cuda, "_cublas_gemm", lambda: fake_gemm)
    monkeypatch.setattr(cuda, "_MODULES", {})
    return fake


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
