"""Packaging: the sdist carries the C++/CUDA sources and the experiments' configs, a wheel built from it installs
them, the license is declared, and the version is one number."""
import glob
import os
import pathlib
import subprocess
import sys
import tarfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_version_matches_pyproject():
    import tomllib

    from pyrgd import __version__

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["version"] == __version__
    assert meta["license"] == "MIT" and "LICENSE" in meta["license-files"] and (ROOT / "LICENSE").exists()


@pytest.mark.slow
def test_sdist_then_wheel_then_fresh_venv(tmp_path):
    dist = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(dist), str(ROOT)],
                       capture_output=True, text=True, cwd=tmp_path)  # not the repository: its build/ folder
    # would shadow the 'build' package
    assert r.returncode == 0, r.stderr[-2000:]
    (sdist,) = glob.glob(str(dist / "*.tar.gz"))
    names = tarfile.open(sdist).getnames()
    assert any(n.endswith("csrc/cuda/wide_layer.cu") for n in names)
    assert any(n.endswith("csrc/include/pyrgd/activations.h") for n in names)
    assert any(n.endswith("experiments/E1.toml") for n in names) and any(n.endswith("/LICENSE") for n in names)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), sdist],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = glob.glob(str(dist / "*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "-q", wheel], check=True)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    pkg = pathlib.Path(site) / "pyrgd"
    assert (pkg / "_csrc" / "cuda" / "wide_layer.cu").exists()
    assert (pkg / "_csrc" / "include" / "pyrgd" / "activations.h").exists()
    assert (pkg / "_experiments" / "E1.toml").exists()
    assert glob.glob(str(pkg / "_cpu*"))  # the compiled extension
