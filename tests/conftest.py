import numpy as np
import pytest

ALL_ACTIVATIONS = ["relu", "leaky_relu(0.1)", "smooth_leaky_relu(0.2)", "softplus", "tanh", "erf", "identity"]


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def mpiexec():
    """The MPI launcher beside this Python (the mpich wheel's) or on PATH; skips where mpi4py is missing."""
    import os
    import shutil
    import sys

    pytest.importorskip("mpi4py")
    exe = shutil.which("mpiexec") or os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if not os.access(exe, os.X_OK):
        pytest.skip(f"mpi4py is here but no MPI launcher (mpiexec) was found on PATH or at {exe}")
    return exe


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def cpu_available():
    try:
        from pyrgd.backends import cpu

        return cpu.available()[0]
    except ImportError:
        return False


try:  # the C++ extension; the tests that need it skip themselves where it is not built
    from pyrgd import _cpu as _cpu_ext

    CPU_ISAS = _cpu_ext.available_isas()
except ImportError:
    _cpu_ext = None
    CPU_ISAS = ["generic"]


@pytest.fixture
def restore_threads():
    """Give the C++ kernels back OpenMP's default thread count after the test."""
    yield
    if _cpu_ext is not None:
        _cpu_ext.set_num_threads(0)


@pytest.fixture(params=CPU_ISAS)
def isa(request):
    """Run a test with the kernels of each instruction set this build has on this CPU."""
    if _cpu_ext is None:
        pytest.skip("the C++ extension pyrgd._cpu is not built")
    _cpu_ext.set_isa(request.param)
    yield request.param
    _cpu_ext.set_isa("auto")


def pytest_addoption(parser):
    parser.addoption("--cuda-emulator", action="store_true",
                     help="make `import cupy` give the CPU emulator of the CUDA kernels (tests/_cuda_emu.py), so that "
                          "the GPU tests run without a GPU: `pytest --cuda-emulator -m gpu`")


def pytest_configure(config):
    if config.getoption("--cuda-emulator"):
        import _cuda_emu

        _cuda_emu.install_for_process()
