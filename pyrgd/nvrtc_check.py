"""Compile pyrgd's CUDA kernels through NVRTC without a GPU and without CuPy.

    python -m pyrgd.nvrtc_check [--arch sm_80 --arch sm_90] [--resource-usage] [FILE.cu ...]

Compiles every ``.cu`` file of the kernel folder (or the files given) with the options of the CUDA backend
(:func:`pyrgd.backends.cuda.compile_options`, the same ``#line`` directive and header digest), for each
architecture (default sm_80 and sm_90), with every name expression of :func:`pyrgd.backends.cuda.all_name_expressions`
instantiated for the kernel file, and prints NVRTC's log. Exit status 0 only when every compile succeeded with an
empty log: **every warning is fatal** (none is allowed). ``--resource-usage`` adds ptxas's register report and
counts the kernels that spill registers (reported, not fatal: a performance matter, not a correctness one). Needs the ``cuda-bindings`` and ``nvidia-cuda-nvrtc`` packages (``from cuda.bindings import
nvrtc``) and nothing else of CUDA: the kernels include no system header.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .backends import cuda as cuda_backend

DEFAULT_ARCHS = ("sm_80", "sm_90")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


class NvrtcUnavailable(RuntimeError):
    """cuda.bindings.nvrtc cannot be imported or NVRTC cannot be loaded."""


@dataclass
class CompileResult:
    path: str
    arch: str
    ok: bool
    log: str
    lowered: dict = field(default_factory=dict)  # name expression -> mangled name
    binary_size: int = 0
    problems: list = field(default_factory=list)  # why ok is False
    spills: int = 0  # kernels with register spills (only known with resource_usage; reported, not fatal)


def load_nvrtc():
    """The cuda.bindings.nvrtc module, checked to load the NVRTC library; NvrtcUnavailable otherwise."""
    try:
        from cuda.bindings import nvrtc
    except Exception as e:
        raise NvrtcUnavailable(f"cuda.bindings.nvrtc cannot be imported ({type(e).__name__}: {e}); "
                               "pip install cuda-bindings nvidia-cuda-nvrtc") from e
    try:
        err, major, minor = nvrtc.nvrtcVersion()
    except Exception as e:
        raise NvrtcUnavailable(f"the NVRTC library cannot be loaded ({type(e).__name__}: {e}); "
                               "pip install nvidia-cuda-nvrtc") from e
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise NvrtcUnavailable(f"nvrtcVersion failed: {err}")
    return nvrtc


def nvrtc_version() -> str:
    nvrtc = load_nvrtc()
    _, major, minor = nvrtc.nvrtcVersion()
    return f"{major}.{minor}"


def _ok(nvrtc, err) -> bool:
    return err == nvrtc.nvrtcResult.NVRTC_SUCCESS


def compile_file(path, arch: str = "sm_90", name_expressions=None, resource_usage: bool = False) -> CompileResult:
    """Compile one .cu file for ``arch`` exactly as the backend does; the result says whether it passed."""
    nvrtc = load_nvrtc()
    path = Path(path).resolve()
    cuda_dir, inc_dir = cuda_backend.source_dirs()
    src = cuda_backend.load_source(path, cuda_backend.header_digest(cuda_dir, inc_dir))
    if name_expressions is None:
        name_expressions = cuda_backend.all_name_expressions() if path.name == cuda_backend.KERNEL_FILE else []
    opts = list(cuda_backend.compile_options(cuda_dir, inc_dir)) + [f"--gpu-architecture={arch}"]
    if resource_usage:
        opts.append("--ptxas-options=-v")
    res = CompileResult(str(path), arch, False, "")
    err, prog = nvrtc.nvrtcCreateProgram(src.encode(), str(path).encode(), 0, [], [])
    if not _ok(nvrtc, err):
        res.problems.append(f"nvrtcCreateProgram: {err}")
        return res
    try:
        for e in name_expressions:
            (err,) = nvrtc.nvrtcAddNameExpression(prog, e.encode())
            if not _ok(nvrtc, err):
                res.problems.append(f"nvrtcAddNameExpression({e}): {err}")
        (cerr,) = nvrtc.nvrtcCompileProgram(prog, len(opts), [o.encode() for o in opts])
        err, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * size
        if _ok(nvrtc, err) and size > 1:
            nvrtc.nvrtcGetProgramLog(prog, log)
        res.log = log.rstrip(b"\x00").decode(errors="replace").strip()
        if not _ok(nvrtc, cerr):
            res.problems.append(f"compile failed ({cerr.name if hasattr(cerr, 'name') else cerr})")
        else:
            for e in name_expressions:
                err, low = nvrtc.nvrtcGetLoweredName(prog, e.encode())
                if _ok(nvrtc, err):
                    res.lowered[e] = low.decode()
                else:
                    res.problems.append(f"no lowered name for {e}: {err}")
            err, size = nvrtc.nvrtcGetCUBINSize(prog)
            res.binary_size = int(size) if _ok(nvrtc, err) else 0
        # every warning is fatal; with --resource-usage the ptxas report is expected, spills are not
        diag = [ln for ln in res.log.splitlines() if not ln.startswith("ptxas")]
        if any(re.search(r"\bwarning\b", ln, re.IGNORECASE) for ln in diag):
            res.problems.append("warnings (all warnings are fatal)")
        res.spills = sum(1 for m in _SPILL.finditer(res.log) if int(m.group(1)) or int(m.group(2)))
        if resource_usage is False and res.log and not res.problems:
            res.problems.append("unexpected compiler output")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    res.ok = not res.problems
    return res


def kernel_files() -> list[Path]:
    cuda_dir, _ = cuda_backend.source_dirs()
    return sorted(cuda_dir.glob("*.cu"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pyrgd.nvrtc_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help=".cu files to compile (default: every kernel file of pyrgd)")
    ap.add_argument("--arch", action="append", help="target, e.g. sm_80 (repeatable; default sm_80 and sm_90)")
    ap.add_argument("--resource-usage", action="store_true", help="print ptxas's register/spill report")
    args = ap.parse_args(argv)
    try:
        ver = nvrtc_version()
    except NvrtcUnavailable as e:
        print(f"nvrtc_check: {e}", file=sys.stderr)
        return 3
    files = [Path(f) for f in args.files] or kernel_files()
    archs = args.arch or list(DEFAULT_ARCHS)
    print(f"nvrtc_check: NVRTC {ver}; {len(files)} file(s); architectures {', '.join(archs)}")
    failed = 0
    for f in files:
        if not f.is_file():
            print(f"FAIL {f}: no such file")
            failed += 1
            continue
        for arch in archs:
            r = compile_file(f, arch, resource_usage=args.resource_usage)
            if r.log:
                print(r.log)
            status = "ok  " if r.ok else "FAIL"
            extra = f"{len(r.lowered)} kernels, {r.binary_size} B cubin" if r.ok else "; ".join(r.problems)
            if r.ok and args.resource_usage:
                extra += f", {r.spills} kernel(s) with register spills"
            print(f"{status} {f} [{arch}]: {extra}")
            failed += not r.ok
    print(f"nvrtc_check: {'all compiled cleanly' if not failed else f'{failed} compile(s) failed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
