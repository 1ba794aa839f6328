import numpy as np
import pytest

ALL_ACTIVATIONS = ["relu", "leaky_relu(0.1)", "smooth_leaky_relu(0.2)", "softplus", "tanh", "erf", "identity"]


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def cpu_available():
    try:
        from pyrgd.backends import cpu

        return cpu.available()[0]
    except ImportError:
        return False
