"""C++ CPU backend: the fused, OpenMP-parallel kernels of the extension module ``pyrgd._cpu``.

Streams over blocks of neurons of the wide layer and never allocates anything of size N x n1 (nor a d x n1
gradient). Signatures as in :mod:`pyrgd.backends`; the arrays are expected already validated by :mod:`pyrgd.ops`
(the extension checks them again and raises instead of crashing).

Determinism: the same inputs give the same bits run after run. ``forward`` and ``gram`` give the same bits for any
number of threads; ``step`` gives the same updated W1, W2 and gradient norms for any number of threads, and the same
``H_next`` for a fixed number of threads (see csrc/cpu/wide_kernels.h).
"""
from __future__ import annotations

from ..errors import BackendUnavailable, PyrgdError
from . import StepResult

name = "cpu"

try:
    from .. import _cpu
except ImportError as exc:  # not built, or built for another interpreter
    _cpu = None
    _IMPORT_ERROR = f"cannot import pyrgd._cpu: {exc}"
else:
    _IMPORT_ERROR = None


def available() -> tuple[bool, str]:
    """(True, a one-line description of the build) or (False, why pyrgd._cpu cannot be imported)."""
    if _cpu is None:
        return False, _IMPORT_ERROR
    info = _cpu.build_info()
    omp = f"OpenMP, {info['max_threads']} threads" if info["openmp"] else "no OpenMP, 1 thread"
    return True, f"C++ extension pyrgd._cpu ({info['compiler']}, {omp}, block {info['block_size']})"


def _module():
    if _cpu is None:
        raise BackendUnavailable(f"backend 'cpu' is not available ({_IMPORT_ERROR})")
    return _cpu


def _call(fn, *args):
    try:
        return fn(*args)
    except (TypeError, ValueError) as e:  # the extension's own input checks: report them as pyrgd errors
        if isinstance(e, PyrgdError):
            raise
        raise PyrgdError(str(e)) from None


def forward(X, W1, W2, act, a1):
    """H = a1 sigma(X W1) W2, shape (N, n2)."""
    m = _module()
    return _call(m.forward, X, W1, W2, act.code, float(act.gamma), float(a1))


def step(X, W1, W2, G, lr, act, a1, next_forward):
    """One GD step of the wide layer, W1 and W2 updated in place; returns StepResult."""
    m = _module()
    H, g1, g2 = _call(m.step, X, W1, W2, G, float(lr), act.code, float(act.gamma), float(a1), bool(next_forward))
    return StepResult(H, float(g1), float(g2))


def gram(X, W1, act, a1, W2=None, B2=None):
    """K = F1 F1^T (B2 None) or B1 B1^T with B1 = a1 (B2 W2^T) (.) sigma'(X W1); shape (N, N)."""
    m = _module()
    return _call(m.gram, X, W1, W2, B2, act.code, float(act.gamma), float(a1))


def get_num_threads() -> int:
    """Threads the C++ kernels use."""
    return _module().get_num_threads()


def set_num_threads(n: int) -> None:
    """Threads the C++ kernels use from now on (process-wide); 0 restores OpenMP's default."""
    _call(_module().set_num_threads, n)


def build_info() -> dict:
    """How pyrgd._cpu was built: compiler, OpenMP (and max threads), block size, ISA flags (-march), fast-math."""
    return _module().build_info()
