"""The CUDA backend's host loops, wide_grad's (chunks of neurons, blocks of rows, accumulating GEMMs) and gram's,
run on NumPy through tests/_fake_cupy.py, on any machine: results against the reference, the grid covering every
element, and the memory wide_grad allocates. The kernels themselves run on a GPU in tests/test_wide_grad_cuda.py and
tests/test_cuda_backend.py."""
import tracemalloc

import numpy as np
import pytest

from pyrgd.activations import parse_activation
from pyrgd.backends import cuda, reference

from _fake_cupy import install
from conftest import rel_err

TILES = dict(SM=32, ST=16)


def _case(N, d, n1, n2, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((N, d)) / np.sqrt(d), rng.standard_normal((d, n1)), rng.standard_normal((n1, n2)),
            rng.standard_normal((N, n2)))


@pytest.mark.parametrize("budget, chunks, blocks", [
    (1 << 30, 1, 1),                   # every neuron in one chunk, every row in one block
    (2 * 100 * 8 * 48, 5, 1),          # chunks of 48 neurons (the last partial), all rows
    (2 * 64 * 8 * 16, 15, 2),          # chunks of one tile, blocks of 64 rows (the last partial)
    (2 * 32 * 8 * 16, 15, 4),          # chunks of one tile, blocks of one row tile (the last one of 4 rows)
])
@pytest.mark.parametrize("input_grad", [True, False], ids=["dX", "no_dX"])
def test_wide_grad_host_loop_matches_the_reference(monkeypatch, budget, chunks, blocks, input_grad):
    launches = install(monkeypatch, TILES)
    monkeypatch.setattr(cuda, "_GRAM_CHUNK_BYTES", budget)
    X, W1, W2, G = _case(100, 7, 230, 3)
    act = parse_activation("smooth_leaky_relu", 0.2)
    got = cuda.wide_grad(X, W1, W2, G, act, 0.7, input_grad)
    want = reference.wide_grad(X, W1, W2, G, act, 0.7, input_grad)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and rel_err(g, w) <= 1e-13  # a NaN (an element never written) fails here
    assert len({l["jb"] for l in launches}) == chunks and len(launches) == chunks * blocks


def test_out_arrays_receive_the_results(monkeypatch):
    install(monkeypatch, TILES)
    monkeypatch.setattr(cuda, "_GRAM_CHUNK_BYTES", 2 * 64 * 8 * 16)
    X, W1, W2, G = _case(100, 7, 230, 3, seed=1)
    act = parse_activation("tanh")
    out = (np.full_like(W1, np.nan), np.full_like(W2, np.nan), np.full_like(X, np.nan))
    got = cuda.wide_grad(X, W1, W2, G, act, 1.0, True, out=out)
    assert all(g is o for g, o in zip(got, out))
    for g, w in zip(got, reference.wide_grad(X, W1, W2, G, act, 1.0, True)):
        assert rel_err(g, w) <= 1e-13


def test_wide_grad_allocates_within_its_budget(monkeypatch):
    """With out arrays given, the loop's own buffers stay near the chunk budget at a large N: S and D are split
    into blocks of rows, and dX is accumulated in place (no temporary of X's size)."""
    install(monkeypatch, TILES)
    budget = 2 * 8 * TILES["SM"] * TILES["ST"] * 4  # 4 row tiles of one neuron tile: 32 KiB
    monkeypatch.setattr(cuda, "_GRAM_CHUNK_BYTES", budget)
    X, W1, W2, G = _case(4000, 64, 100, 2)
    act = parse_activation("tanh")
    out = (np.empty_like(W1), np.empty_like(W2), np.empty_like(X))
    tracemalloc.start()
    cuda.wide_grad(X, W1, W2, G, act, 1.0, True, out=out)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # S, D and the kernel emulation's temporaries (a few R x c arrays), the d x c buffers, GEMM temporaries of one
    # block of dX: about 0.3 MB here; one N x c chunk of S and D alone would be 1 MB, X is 2 MB
    assert peak < X.nbytes / 5
    for g, w in zip(out, reference.wide_grad(X, W1, W2, G, act, 1.0, True)):
        assert rel_err(g, w) <= 1e-13


@pytest.mark.parametrize("N, n1, item", [(10, 5, 8), (100, 230, 8), (4000, 100, 8), (10**6, 10**5, 4),
                                         (3, 10**6, 4)])
@pytest.mark.parametrize("budget", [2 * 8 * 32 * 16, 1 << 20, 64 << 20])
def test_grad_blocks(N, n1, item, budget):
    SM, ST = 32, 16
    c, R = cuda._grad_blocks(N, n1, item, SM, ST, budget)
    assert c % ST == 0 and ST <= c <= ST * -(-n1 // ST)
    assert R == N or (R % SM == 0 and SM <= R < N)
    if 2 * min(N, SM) * ST * item <= budget:
        assert 2 * R * c * item <= budget  # the bound holds wherever one tile of each fits in it
    if 2 * N * c * item <= budget:
        assert R == N  # rows are split only when needed


@pytest.mark.parametrize("backward", [False, True], ids=["F1F1T", "B1B1T"])
@pytest.mark.parametrize("budget, chunks", [(1 << 30, 1), (50 * 8 * 48, 5), (1, 15)])
def test_gram_host_loop_matches_the_reference(monkeypatch, budget, chunks, backward):
    """K accumulated chunk by chunk with beta = 0, then 1 (the first chunk must not read K's poison)."""
    launches = install(monkeypatch, TILES)
    monkeypatch.setattr(cuda, "_GRAM_CHUNK_BYTES", budget)
    X, W1, W2, B2 = _case(50, 7, 230, 3, seed=2)
    act = parse_activation("softplus")
    kw = dict(W2=W2, B2=B2) if backward else {}
    K = cuda.gram(X, W1, act, 0.6, **kw)
    assert rel_err(K, reference.gram(X, W1, act, 0.6, **kw)) <= 1e-13
    assert len(launches) == chunks
