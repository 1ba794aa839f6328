"""pyrgd.ops.wide_grad on the CUDA backend against the NumPy reference in float64 (skips without CuPy or a CUDA
device: written, never run on the development machine, which has no GPU). Buffers are NaN-poisoned (cuda._POISON),
so an element the kernel forgets shows up."""
import numpy as np
import pytest

cp = pytest.importorskip("cupy")
try:
    _NDEV = cp.cuda.runtime.getDeviceCount()
except Exception:  # driver missing or broken
    _NDEV = 0
if _NDEV < 1:
    pytest.skip("no CUDA device", allow_module_level=True)

from pyrgd import ops  # noqa: E402
from pyrgd.activations import parse_activation  # noqa: E402
from pyrgd.backends import cuda, reference  # noqa: E402

from conftest import ALL_ACTIVATIONS, rel_err  # noqa: E402

pytestmark = pytest.mark.gpu

SHAPES = [(1, 1, 1, 1), (7, 3, 37, 2), (130, 70, 300, 65), (40, 5, 2100, 3)]


def _case(shape, dtype, seed=0):
    """Dyadic X and W1 (k/8 times a power of two): Z = X W1 is exact in either dtype, so the derivative pattern of
    the kinked activations is the same here and in the float64 reference."""
    N, d, n1, n2 = shape
    rng = np.random.default_rng(seed)
    X = rng.integers(-8, 9, (N, d)) / 8.0
    W1 = rng.integers(-8, 9, (d, n1)) / 64.0 + 1.0 / 1024
    W2 = rng.standard_normal((n1, n2)) / np.sqrt(n1)
    G = rng.standard_normal((N, n2))
    return [a.astype(dtype) for a in (X, W1, W2, G)]


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    monkeypatch.setattr(cuda, "_POISON", True)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("spec", ALL_ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(shape, spec, dtype):
    act = parse_activation(spec)
    host = _case(shape, dtype)
    want = reference.wide_grad(*(a.astype(np.float64) for a in host), act, 0.7, True)
    got = ops.wide_grad(*(cp.asarray(a) for a in host), activation=act, a1=0.7, input_grad=True)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for g, w in zip(got, want):
        assert isinstance(g, cp.ndarray) and g.dtype == dtype
        assert rel_err(cp.asnumpy(g), w) <= tol


def test_small_chunks_and_out_buffers_give_the_same_bits(monkeypatch):
    act = parse_activation("tanh")
    X, W1, W2, G = (cp.asarray(a) for a in _case((40, 5, 2100, 3), np.float64))
    want = ops.wide_grad(X, W1, W2, G, activation=act, input_grad=True)
    again = ops.wide_grad(X, W1, W2, G, activation=act, input_grad=True)
    assert all(bool((a == b).all()) for a, b in zip(want, again))  # run after run
    monkeypatch.setattr(cuda, "_GRAM_CHUNK_BYTES", 40 * 8 * 2 * 64)  # chunks of 64 neurons
    out = (cp.empty_like(W1), cp.empty_like(W2), cp.empty_like(X))
    got = ops.wide_grad(X, W1, W2, G, activation=act, input_grad=True, out=out)
    assert all(g is o for g, o in zip(got, out))
    for g, w in zip(got, want):
        assert rel_err(cp.asnumpy(g), cp.asnumpy(w)) <= 1e-13


def test_row_blocks_give_the_reference_gradients(monkeypatch):
    """A budget below one neuron tile over all rows: S and D in blocks of rows, dW1/dW2/dX accumulated by cuBLAS
    with beta = 1 (the poisoned buffers show any element the loop forgets)."""
    act = parse_activation("smooth_leaky_relu(0.2)")
    host = _case((1000, 9, 300, 4), np.float64, seed=3)
    _, tiles = cuda._module(np.dtype(np.float64), act.name)
    monkeypatch.setattr(cuda, "_GRAM_CHUNK_BYTES", 2 * 8 * tiles["SM"] * tiles["ST"] * 3)  # 3 row tiles
    c, R = cuda._grad_blocks(1000, 300, 8, tiles["SM"], tiles["ST"], cuda._GRAM_CHUNK_BYTES)
    assert R < 1000 and c < 300
    want = reference.wide_grad(*host, act, 0.7, True)
    got = ops.wide_grad(*(cp.asarray(a) for a in host), activation=act, a1=0.7, input_grad=True)
    for g, w in zip(got, want):
        assert rel_err(cp.asnumpy(g), w) <= 1e-12
