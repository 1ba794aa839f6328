"""Build of pyrgd's C++ extension ``pyrgd._cpu`` (pybind11, -O3, OpenMP) and of the CUDA sources' package data.

The C++ sources: csrc/cpu/*.cpp (the kernels and the pybind11 binding module.cpp) with their private headers
(csrc/cpu/*.h, *.inc) and the public headers of pyrgd's C++ API, csrc/include/pyrgd/*.h (pyrgd.h includes them all).
The CUDA kernels are not compiled here (no nvcc at install time): csrc/cuda/*.cu, *.cuh and the one public header they
include, pyrgd/activations.h, are copied into the package as ``pyrgd/_csrc/...`` for CuPy to compile at run time
through NVRTC.
"""
import glob
import os
import shutil
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def openmp_flags():
    if sys.platform == "darwin":  # Apple clang: libomp from Homebrew
        return ["-Xpreprocessor", "-fopenmp"], ["-lomp"]
    if sys.platform == "win32":
        return ["/openmp"], []
    return ["-fopenmp"], ["-fopenmp"]


class build_py_with_csrc(build_py):
    """Copy the CUDA sources and the header they share with the C++ kernels into the package (pyrgd/_csrc)."""

    def run(self):
        super().run()
        dest = os.path.join(self.build_lib, "pyrgd", "_csrc")
        for pattern in ("csrc/cuda/*.cu", "csrc/cuda/*.cuh", "csrc/include/pyrgd/activations.h"):
            for src in glob.glob(os.path.join(HERE, pattern)):
                rel = os.path.relpath(src, os.path.join(HERE, "csrc"))
                os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
                shutil.copy2(src, os.path.join(dest, rel))
        exp = os.path.join(self.build_lib, "pyrgd", "_experiments")  # experiment configs for installed copies
        os.makedirs(exp, exist_ok=True)
        for src in glob.glob(os.path.join(HERE, "experiments", "*.toml")):
            shutil.copy2(src, exp)


cflags, lflags = openmp_flags()
# -ffp-contract=off: the compiler fuses no multiply and add on its own; the kernels' FMAs are explicit, so the bits
# of a result depend on the order of the sums only (csrc/cpu/tile_ops.h), not on the compiler's choices.
# -fno-trapping-math: floating-point operations are assumed not to trap, so that the activation loops, whose
# formulas select between two computed values, are vectorized (if-converted). It changes no result: IEEE rounding,
# NaN, infinities and denormals are all kept; only the exception flags, which nothing reads, are not preserved.
# (No -ffast-math, and no -march: the AVX2/AVX-512 kernels are chosen at run time, csrc/cpu/tile_ops.h.)
opt = ["/O2"] if sys.platform == "win32" else ["-O3", "-ffp-contract=off", "-fno-trapping-math"]
ext = Pybind11Extension(
    "pyrgd._cpu",
    sorted(glob.glob("csrc/cpu/*.cpp")),
    include_dirs=["csrc/include"],  # the public headers, included as <pyrgd/...>; csrc/cpu's own by their file's folder
    # the public and private headers and the included sources: a change to any of them rebuilds the module
    depends=sorted(glob.glob("csrc/include/pyrgd/*.h") + glob.glob("csrc/cpu/*.h") + glob.glob("csrc/cpu/*.inc")),
    extra_compile_args=opt + cflags,
    extra_link_args=lflags,
    cxx_std=17,
)

setup(ext_modules=[ext], cmdclass={"build_ext": build_ext, "build_py": build_py_with_csrc})
