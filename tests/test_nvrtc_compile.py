"""The CUDA kernels compile cleanly through NVRTC (no GPU, no CuPy needed), and compile errors name file and line.

Skips only where cuda.bindings / the NVRTC library cannot be loaded. Also checks, without any CUDA, the pieces of
the CUDA backend that must hold on every machine: the activation table matches the C++ header, and the backend
reports itself unavailable (without raising) when CuPy is missing.
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pyrgd.activations import ACTIVATION_CODES
from pyrgd.backends import cuda as cuda_backend

REPO = Path(__file__).resolve().parents[1]


def _nvrtc_or_skip():
    from pyrgd import nvrtc_check

    try:
        nvrtc_check.load_nvrtc()
    except nvrtc_check.NvrtcUnavailable as e:
        pytest.skip(str(e))
    return nvrtc_check


def test_cli_compiles_every_kernel_for_sm80_and_sm90():
    _nvrtc_or_skip()
    r = subprocess.run([sys.executable, "-m", "pyrgd.nvrtc_check"], cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    n = len(cuda_backend.all_name_expressions())
    for arch in ("sm_80", "sm_90"):
        assert re.search(rf"^ok .*wide_layer\.cu \[{arch}\]: {n} kernels", r.stdout, re.M), r.stdout
    assert "warning" not in r.stdout.lower()


def test_every_name_expression_gets_a_lowered_name():
    nvrtc_check = _nvrtc_or_skip()
    cuda_dir, _ = cuda_backend.source_dirs()
    res = nvrtc_check.compile_file(cuda_dir / cuda_backend.KERNEL_FILE, "sm_90")
    assert res.ok, res.problems + [res.log]
    assert set(res.lowered) == set(cuda_backend.all_name_expressions())
    # one module per (dtype, activation) for the backend: its own list is a subset of the checked one
    for dt in ("float32", "float64"):
        for act in ACTIVATION_CODES:
            assert set(cuda_backend.name_expressions(dt, act)) <= set(res.lowered)
    assert res.binary_size > 0


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_compile_error_names_file_and_line(tmp_path):
    nvrtc_check = _nvrtc_or_skip()
    src = _write(tmp_path, "broken.cu", '#include "pyrgd/activations.h"\n\n__global__ void k(float* p) {\n'
                 "  p[0] = ;\n}\n")
    res = nvrtc_check.compile_file(src, "sm_90")
    assert not res.ok
    assert any("compile failed" in p for p in res.problems)
    # NVRTC reports the #line path (absolute) and the file's own line number (4), not the shifted one
    assert re.search(re.escape(str(src.resolve())) + r'"?\(4\): error', res.log), res.log
    r = subprocess.run([sys.executable, "-m", "pyrgd.nvrtc_check", str(src), "--arch", "sm_80"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert f"{src.resolve()}(4)" in r.stdout.replace('"', "")


def test_warnings_are_fatal(tmp_path):
    nvrtc_check = _nvrtc_or_skip()
    src = _write(tmp_path, "warns.cu", "__global__ void k(float* p) {\n  int unused;\n  p[0] = 1.0f;\n}\n")
    res = nvrtc_check.compile_file(src, "sm_90")
    assert not res.ok
    assert "warning" in res.log and any("warnings" in p for p in res.problems)
    r = subprocess.run([sys.executable, "-m", "pyrgd.nvrtc_check", str(src)], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0


def test_clean_file_passes_and_missing_file_fails(tmp_path):
    nvrtc_check = _nvrtc_or_skip()
    src = _write(tmp_path, "fine.cu", "__global__ void k(float* p) { p[threadIdx.x] = 1.0f; }\n")
    assert nvrtc_check.compile_file(src, "sm_80").ok
    assert nvrtc_check.main([str(src), "--arch", "sm_80"]) == 0
    assert nvrtc_check.main([str(tmp_path / "nope.cu")]) == 1


def test_kernel_source_carries_line_directive_and_header_digest():
    cuda_dir, inc_dir = cuda_backend.source_dirs()
    path = cuda_dir / cuda_backend.KERNEL_FILE
    digest = cuda_backend.header_digest(cuda_dir, inc_dir)
    src = cuda_backend.load_source(path, digest)
    first, second = src.splitlines()[:2]
    assert digest in first and len(digest) == 64
    assert second == f'#line 1 "{path.resolve()}"'
    assert src.endswith(path.read_text())
    # no system header: NVRTC has none, and the kernels must not need the CUDA toolkit's
    for p in list(cuda_dir.glob("*.cu")) + list(cuda_dir.glob("*.cuh")):
        for inc in re.findall(r"^\s*#\s*include\s*([<\"][^>\"]+[>\"])", p.read_text(), re.M):
            assert inc.startswith('"'), f"{p.name} includes the system header {inc}"


def test_activation_table_matches_header():
    header = (REPO / "csrc" / "include" / "pyrgd" / "activations.h").read_text()
    table = dict((m.group(1), int(m.group(2))) for m in re.finditer(r"^\s*M\((\w+), (\d+)\)", header, re.M))
    assert set(cuda_backend.ACTIVATION_STRUCTS) == set(ACTIVATION_CODES)
    for name, struct in cuda_backend.ACTIVATION_STRUCTS.items():
        assert table[struct] == ACTIVATION_CODES[name], name
        assert re.search(rf"struct {struct} {{\s*static constexpr int code = {ACTIVATION_CODES[name]};", header)


def test_backend_unavailable_without_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    monkeypatch.setattr(cuda_backend, "_AVAILABLE", None)
    ok, why = cuda_backend.available()
    assert ok is False and "CuPy" in why
    info = cuda_backend.device_info()
    assert info["available"] is False and "CuPy" in info["reason"]
