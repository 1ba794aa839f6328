"""Thread counts of pyrgd's C++ kernels and of the BLAS, set together for a block of code (how the kernels' threads
wait at a barrier: :mod:`pyrgd._omp`)."""
from __future__ import annotations

import contextlib

@contextlib.contextmanager
def thread_limits(n: int | None):
    """Run the block with ``n`` threads in pyrgd's C++ kernels and in the BLAS (threadpoolctl); None: unchanged.

    Both are restored afterwards, also when the block raises."""
    if n is None:
        yield
        return
    old = None
    try:
        from .backends import cpu

        if cpu.available()[0]:
            old = cpu.get_num_threads()
            cpu.set_num_threads(n)
    except ImportError:
        cpu = None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    try:
        if threadpool_limits is not None:
            with threadpool_limits(limits=n):
                yield
        else:
            yield
    finally:
        if old is not None:
            cpu.set_num_threads(old)
