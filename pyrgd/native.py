"""Where pyrgd's C library and its headers are, for programs in C, C++ or other languages (issue 15's C ABI).

- :func:`get_include`: the folder to put on the include path; ``#include <pyrgd/pyrgd.h>`` (the C ABI) or
  ``<pyrgd/kernels.h>`` (the C++ API of the kernels, header-only declarations: link with the library's objects).
- :func:`get_library_dir`: the folder of the shared library ``libpyrgd`` (link with ``-L<dir> -lpyrgd`` and find it
  at run time, e.g. ``-Wl,-rpath,<dir>``); :func:`get_library` its path.
- :func:`get_cmake_dir`: ``-Dpyrgd_DIR=<dir>`` for ``find_package(pyrgd CONFIG)``, target ``pyrgd::pyrgd``.

The installed package holds them as ``pyrgd/_csrc/include``, ``pyrgd/lib`` and ``pyrgd/_csrc/cmake``; a source
checkout built in place (``pip install -e .``) uses ``csrc/include``, ``pyrgd/lib`` and ``csrc/cmake``.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .errors import BackendUnavailable

_PKG = Path(__file__).resolve().parent
_SRC = _PKG.parent / "csrc"


def _first(*candidates: Path, must: str) -> str:
    for c in candidates:
        if (c / must).exists():
            return str(c)
    raise BackendUnavailable(f"pyrgd's {must} was not found (looked in {', '.join(map(str, candidates))}); "
                             "reinstall pyrgd from source (pip install .)")


def library_name() -> str:
    """The file name of the shared library on this platform: libpyrgd.so, libpyrgd.dylib."""
    return "libpyrgd.dylib" if sys.platform == "darwin" else "libpyrgd.so"


def get_include() -> str:
    """The include folder holding pyrgd/pyrgd.h and pyrgd/kernels.h."""
    return _first(_PKG / "_csrc" / "include", _SRC / "include", must="pyrgd/pyrgd.h")


def get_library_dir() -> str:
    """The folder holding the shared library libpyrgd (BackendUnavailable where it was not built)."""
    return _first(_PKG / "lib", must=library_name())


def get_library() -> str:
    """The path of the shared library libpyrgd."""
    return str(Path(get_library_dir()) / library_name())


def get_cmake_dir() -> str:
    """The folder holding pyrgdConfig.cmake (for -Dpyrgd_DIR)."""
    return _first(_PKG / "_csrc" / "cmake", _SRC / "cmake", must="pyrgdConfig.cmake")
