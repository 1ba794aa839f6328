"""Build of pyrgd's C++ extension ``pyrgd._cpu`` (pybind11, -O3, OpenMP), of the C library ``libpyrgd`` and of the
CUDA sources' package data.

The C++ sources: csrc/cpu/*.cpp (the kernels and the pybind11 binding module.cpp) with their private headers
(csrc/cpu/*.h, *.inc) and the public headers of pyrgd's C++ API, csrc/include/pyrgd/*.h (kernels.h includes them all).
The C library (pyrgd/pyrgd.h): the kernels' objects of the extension (all but module.cpp's) and csrc/capi/*.cpp,
linked into ``pyrgd/lib/libpyrgd.so`` (.dylib, .dll) beside the extension. The public headers and the CMake package
config (csrc/cmake) are copied into the package as ``pyrgd/_csrc/include`` and ``pyrgd/_csrc/cmake``
(:mod:`pyrgd.native` finds them, or the source tree's in an editable install).
The CUDA kernels are not compiled here (no nvcc at install time): csrc/cuda/*.cu, *.cuh are copied into the package
as ``pyrgd/_csrc/cuda`` for CuPy to compile at run time through NVRTC.
"""
import glob
import os
import re
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
        for pattern in ("csrc/cuda/*.cu", "csrc/cuda/*.cuh", "csrc/include/pyrgd/*.h", "csrc/cmake/*.cmake"):
            for src in glob.glob(os.path.join(HERE, pattern)):
                rel = os.path.relpath(src, os.path.join(HERE, "csrc"))
                os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
                shutil.copy2(src, os.path.join(dest, rel))
        exp = os.path.join(self.build_lib, "pyrgd", "_experiments")  # experiment configs for installed copies
        os.makedirs(exp, exist_ok=True)
        for src in glob.glob(os.path.join(HERE, "experiments", "*.toml")):
            shutil.copy2(src, exp)


class build_ext_with_lib(build_ext):
    """build_ext, then the C library libpyrgd beside the extension (pyrgd/lib/): the extension's kernel objects
    (compiled again only where missing, as after an up-to-date extension was skipped) and csrc/capi/*.cpp, linked
    with OpenMP. Its exported symbols are the C ABI's alone (everything else is compiled -fvisibility=hidden)."""

    def build_extensions(self):
        super().build_extensions()
        if sys.platform != "win32":  # the C library is built for Linux and macOS
            self.build_c_library(self.extensions[0])

    def build_c_library(self, ext):
        kernels = [src for src in ext.sources if os.path.basename(src) != "module.cpp"]
        capi = sorted(glob.glob("csrc/capi/*.cpp"))
        args = dict(output_dir=self.build_temp, include_dirs=ext.include_dirs, extra_postargs=ext.extra_compile_args,
                    macros=[("PYRGD_VERSION", f'"{VERSION}"')])
        objects = self.compiler.object_filenames(kernels, output_dir=self.build_temp)
        missing = [src for src, obj in zip(kernels, objects) if not os.path.exists(obj)]
        if missing:
            self.compiler.compile(missing, **args)
        objects += self.compiler.compile(capi, **args)
        libdir = os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)), "lib")
        os.makedirs(libdir, exist_ok=True)
        name = self.compiler.library_filename("pyrgd", lib_type="shared")
        soname = ["-Wl,-install_name,@rpath/" + name] if sys.platform == "darwin" else ["-Wl,-soname," + name]
        self.compiler.link_shared_object(objects, os.path.join(libdir, name), extra_postargs=lflags + soname,
                                         target_lang="c++")
        if getattr(self, "editable_mode", False) and not self.inplace:  # pip install -e: beside the sources too
            dest = os.path.join(HERE, "pyrgd", "lib")
            os.makedirs(dest, exist_ok=True)
            shutil.copy2(os.path.join(libdir, name), os.path.join(dest, name))


def read_version():
    """[project] version of pyproject.toml (pyrgd_version() of the C library)."""
    text = open(os.path.join(HERE, "pyproject.toml"), encoding="utf-8").read()
    return re.search(r'^version = "([^"]+)"', text, re.M).group(1)


VERSION = read_version()
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

setup(ext_modules=[ext], cmdclass={"build_ext": build_ext_with_lib, "build_py": build_py_with_csrc})
