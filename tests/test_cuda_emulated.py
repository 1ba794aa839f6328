"""The CUDA backend, kernels and host code together, on the CPU emulator of tests/_cuda_emu.py: forward, step,
wide_grad and gram against the float64 NumPy reference, on shapes with ragged tiles, several row and neuron tiles,
the float32 register-blocked kernels and the generic ones; results that do not depend on the step's grid or on the
order the emulator runs a block's threads in (a shared-memory race would show there); every buffer the backend
allocates poisoned with NaN (an element no thread writes fails the comparison).

This is not a GPU run: the same cases run on a GPU in tests/test_cuda_backend.py and tests/test_wide_grad_cuda.py
(bench/device_run.sh). It runs everywhere a C++ compiler does, so that the kernels' index arithmetic, tile loops
and barriers, and the host's launches, are checked on every commit.
"""
import math

import numpy as np
import pytest

import _cuda_emu as E
from pyrgd.activations import ACTIVATION_CODES, parse_activation
from pyrgd.backends import StepResult, cuda, reference

TOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}
EPS = {np.dtype(np.float64): np.finfo(np.float64).eps, np.dtype(np.float32): np.finfo(np.float32).eps}
ACTS = {name: parse_activation(name, 0.1) if name in ("leaky_relu", "smooth_leaky_relu") else parse_activation(name)
        for name in ACTIVATION_CODES}
A1 = 0.7
# (N, d, n1, n2): N=1, d=1, n2=1; N, n1 not multiples of any tile; d and n2 larger than one tile (64); N over the
# step's row tile (its scratch in use) and over the float32 kernels' 128-row tile
SHAPES = [
    (1, 1, 1, 1),
    (7, 1, 37, 1),
    (70, 5, 97, 3),
    (9, 300, 40, 130),
    (67, 300, 70, 130),
    (130, 17, 200, 1),
    (300, 20, 140, 2),
]
FAST_SHAPES = [(70, 5, 97, 3), (67, 300, 70, 130), (300, 20, 140, 2)]


@pytest.fixture
def cp(monkeypatch):
    fake = E.install(monkeypatch)
    monkeypatch.setattr(cuda, "_POISON", True)
    return fake


def _case(seed, N, d, n1, n2, dtype):
    """X, W1, W2, G, B2; float32 X and W1 dyadic (k/8 over a power of two), so that Z = X W1 is exact in float32
    and float64 alike and relu's derivative pattern is the same on both sides."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        s = 2.0 ** round(math.log2(math.sqrt(d)))
        X = rng.integers(-8, 9, (N, d)) / (8 * s)
        W1 = rng.integers(-8, 9, (d, n1)) / 8
    else:
        X = rng.standard_normal((N, d)) / math.sqrt(d)
        W1 = rng.standard_normal((d, n1))
    W2 = rng.standard_normal((n1, n2)) / math.sqrt(n1)
    G = rng.standard_normal((N, n2))
    B2 = rng.standard_normal((N, n2))
    return [a.astype(dtype) for a in (X, W1, W2, G, B2)]


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def _rel(a, b):
    a, b = _f64(a), _f64(b)
    assert a.shape == b.shape
    assert np.isfinite(a).all(), "result holds NaN/inf (an element was not written?)"
    nb = np.linalg.norm(b)
    return np.linalg.norm(a - b) / nb if nb > 0 else np.linalg.norm(a - b)


def _check_update(W_new, W_old, W_ref_new, dtype):
    tol, eps = TOL[np.dtype(dtype)], EPS[np.dtype(dtype)]
    W_new, W_old = _f64(W_new), _f64(W_old)
    assert _rel(W_new, W_ref_new) <= tol
    dW, dW_ref = W_new - W_old, W_ref_new - W_old
    assert np.linalg.norm(dW - dW_ref) <= tol * np.linalg.norm(dW_ref) + 2 * eps * np.linalg.norm(W_old)


def _check_sq(got, want, dtype):
    assert isinstance(got, float)
    assert abs(got - want) <= 2 * TOL[np.dtype(dtype)] * abs(want) + 1e-300


def _forward_and_step(cp, shape, act, dtype, seed=1):
    X, W1, W2, G, _ = _case(seed, *shape, dtype)
    H = cuda.forward(cp.asarray(X), cp.asarray(W1), cp.asarray(W2), ACTS[act], A1)
    assert isinstance(H, E.EmuArray) and H.dtype == np.dtype(dtype) and H.shape == (shape[0], shape[3])
    assert _rel(H, reference.forward(_f64(X), _f64(W1), _f64(W2), ACTS[act], A1)) <= TOL[np.dtype(dtype)]
    W1r, W2r = _f64(W1).copy(), _f64(W2).copy()
    ref = reference.step(_f64(X), W1r, W2r, _f64(G), 0.05, ACTS[act], A1, True)
    Xd, W1d, W2d, Gd = (cp.asarray(a) for a in (X, W1, W2, G))
    res = cuda.step(Xd, W1d, W2d, Gd, 0.05, ACTS[act], A1, True)
    assert isinstance(res, StepResult)
    _check_update(W1d, W1, W1r, dtype)
    _check_update(W2d, W2, W2r, dtype)
    _check_sq(res.grad_sq_w1, ref.grad_sq_w1, dtype)
    _check_sq(res.grad_sq_w2, ref.grad_sq_w2, dtype)
    assert _rel(res.H_next, ref.H_next) <= TOL[np.dtype(dtype)]
    assert np.array_equal(Xd, X) and np.array_equal(Gd, G)  # read-only inputs untouched


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_and_step_match_the_reference(cp, shape, dtype):
    _forward_and_step(cp, shape, "smooth_leaky_relu", dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("act", [a for a in ACTS if a != "smooth_leaky_relu"])
def test_every_activation(cp, act, dtype):
    _forward_and_step(cp, (67, 300, 70, 130), act, dtype, seed=2)
    _forward_and_step(cp, (130, 17, 200, 1), act, dtype, seed=3)


@pytest.mark.parametrize("shape", FAST_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_float32_generic_kernels(cp, monkeypatch, shape):
    """cuda._USE_FAST = False: float32 on the generic kernels (64-wide tiles) instead of the register-blocked ones."""
    monkeypatch.setattr(cuda, "_USE_FAST", False)
    _forward_and_step(cp, shape, "relu", np.float32, seed=4)
    assert not any("_f32<" in l["kernel"] for l in cp.launches)


def test_float32_uses_the_blocked_kernels_with_their_shared_memory(cp):
    _forward_and_step(cp, (70, 5, 97, 3), "tanh", np.float32, seed=5)
    kernels = {l["kernel"].split("<")[0]: l for l in cp.launches}
    assert kernels["pyrgd::cuda::wide_step_f32"]["shared_mem"] > 48 * 1024  # opted in above the default
    assert kernels["pyrgd::cuda::wide_forward_f32"]["shared_mem"] > 48 * 1024


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape, budget", [((100, 7, 230, 3), 1 << 30), ((100, 7, 230, 3), 2 * 64 * 8 * 64),
                                           ((9, 300, 40, 130), 1 << 30), ((300, 20, 140, 2), 2 * 128 * 8 * 64)],
                         ids=["one_chunk", "row_blocks", "wide_d_n2", "f32_rows"])
def test_wide_grad_matches_the_reference(cp, monkeypatch, shape, budget, dtype):
    monkeypatch.setattr(cuda, "_GRAM_CHUNK_BYTES", budget)
    X, W1, W2, G, _ = _case(6, *shape, dtype)
    act = ACTS["leaky_relu"]
    got = cuda.wide_grad(*(cp.asarray(a) for a in (X, W1, W2, G)), act, A1, True)
    want = reference.wide_grad(_f64(X), _f64(W1), _f64(W2), _f64(G), act, A1, True)
    for g, w in zip(got, want):
        assert _rel(g, w) <= TOL[np.dtype(dtype)]
    if budget < 1 << 30:
        rows = {l["grid"][0] for l in cp.launches if "grad_features" in l["kernel"]}
        assert len(rows) >= 1 and len([l for l in cp.launches if "grad_features" in l["kernel"]]) > 1


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("budget", [1 << 30, 50 * 8 * 70], ids=["one_chunk", "many_chunks"])
def test_gram_matches_the_reference(cp, monkeypatch, budget, dtype):
    monkeypatch.setattr(cuda, "_GRAM_CHUNK_BYTES", budget)
    X, W1, W2, _, B2 = _case(7, 50, 6, 333, 4, dtype)
    act = ACTS["softplus"]
    Xd, W1d, W2d, B2d = (cp.asarray(a) for a in (X, W1, W2, B2))
    assert _rel(cuda.gram(Xd, W1d, act, A1), reference.gram(_f64(X), _f64(W1), act, A1)) <= TOL[np.dtype(dtype)]
    Kb = cuda.gram(Xd, W1d, act, A1, W2=W2d, B2=B2d)
    assert _rel(Kb, reference.gram(_f64(X), _f64(W1), act, A1, W2=_f64(W2), B2=_f64(B2))) <= TOL[np.dtype(dtype)]


def _all_outputs(cp, dtype):
    """Every kernel's output on one case, as host arrays: forward, step (weights, norms, next H), gradients, Grams."""
    X, W1, W2, G, B2 = _case(8, 150, 20, 300, 3, dtype)
    Xd, W1d, W2d, Gd, B2d = (cp.asarray(a) for a in (X, W1, W2, G, B2))
    act = ACTS["smooth_leaky_relu"]
    out = [cuda.forward(Xd, W1d, W2d, act, A1)]
    out += list(cuda.wide_grad(Xd, W1d, W2d, Gd, act, A1, True))
    out += [cuda.gram(Xd, W1d, act, A1), cuda.gram(Xd, W1d, act, A1, W2=W2d, B2=B2d)]
    r = cuda.step(Xd, W1d, W2d, Gd, 0.05, act, A1, True)
    out += [W1d, W2d, r.H_next, np.array([r.grad_sq_w1, r.grad_sq_w2])]
    return [np.array(a) for a in out]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_results_do_not_depend_on_the_order_of_a_blocks_threads(cp, dtype):
    """Ascending, descending and shuffled thread orders give the same bits: no kernel reads a shared word another
    thread writes in the same barrier interval."""
    runs = []
    for order, seed in ((0, 0), (1, 0), (2, 1), (2, 2)):
        with E.order(order, seed):
            runs.append(_all_outputs(cp, dtype))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_step_result_does_not_depend_on_grid_size(cp, monkeypatch, dtype):
    """The persistent step grid: each block owning several neuron tiles in turn gives the bits of one block per
    tile (n1 = 700: 11 tiles of 64, 22 of 32)."""
    X, W1, W2, G, _ = _case(9, 100, 40, 700, 70, dtype)
    Xd, Gd = cp.asarray(X), cp.asarray(G)
    outs = []
    for limit in (None, 1, 3):
        monkeypatch.setattr(cuda, "_STEP_GRID_LIMIT", limit)
        a, b = cp.asarray(W1), cp.asarray(W2)
        r = cuda.step(Xd, a, b, Gd, 0.05, ACTS["tanh"], A1, False)
        outs.append((a.get(), b.get(), r.grad_sq_w1, r.grad_sq_w2))
    grids = [l["grid"][0] for l in cp.launches if "wide_step" in l["kernel"]]
    assert grids[1:] == [1, 3] and grids[0] > 3
    for o in outs[1:]:
        assert np.array_equal(o[0], outs[0][0]) and np.array_equal(o[1], outs[0][1])
        assert o[2] == outs[0][2] and o[3] == outs[0][3]


def test_step_writes_the_next_forward_over_g(cp):
    """out=G: the next H is written into G after the step kernel has read it (the neurons engine's buffer reuse)."""
    X, W1, W2, G, _ = _case(10, 70, 5, 97, 3, np.float64)
    Xd, W1d, W2d, Gd = (cp.asarray(a) for a in (X, W1, W2, G))
    W1r, W2r = W1.copy(), W2.copy()
    ref = reference.step(X, W1r, W2r, G, 0.05, ACTS["tanh"], A1, True)
    res = cuda.step(Xd, W1d, W2d, Gd, 0.05, ACTS["tanh"], A1, True, out=Gd)
    assert res.H_next is Gd and _rel(Gd, ref.H_next) <= 1e-12 and _rel(W1d, W1r) <= 1e-12


def test_gd_trajectory_matches_the_reference(cp):
    """60 full-batch GD steps of H = a1 sigma(X W1) W2 with G = H - Y, on the emulator and in NumPy."""
    rng = np.random.default_rng(11)
    N, d, n1, n2 = 40, 10, 300, 2
    X = rng.standard_normal((N, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Y = rng.standard_normal((N, n2))
    W1, W2 = rng.standard_normal((d, n1)), rng.standard_normal((n1, n2))
    a1, lr, steps, A = 1 / math.sqrt(n1), 0.1, 60, ACTS["smooth_leaky_relu"]
    W1r, W2r, loss_ref = W1.copy(), W2.copy(), []
    for _ in range(steps):
        Gr = reference.forward(X, W1r, W2r, A, a1) - Y
        loss_ref.append(0.5 * float((Gr * Gr).sum()))
        reference.step(X, W1r, W2r, Gr, lr, A, a1, False)
    Xd, W1d, W2d, Yd = (cp.asarray(a) for a in (X, W1, W2, Y))
    H, loss = cuda.forward(Xd, W1d, W2d, A, a1), []
    for _ in range(steps):
        Gd = H - Yd
        loss.append(0.5 * float((Gd * Gd).sum()))
        H = cuda.step(Xd, W1d, W2d, Gd, lr, A, a1, True).H_next
    loss, loss_ref = np.array(loss), np.array(loss_ref)
    assert loss_ref[-1] < 0.5 * loss_ref[0]
    assert np.max(np.abs(loss - loss_ref) / loss_ref) <= 1e-10
    assert _rel(W1d, W1r) <= 1e-10 and _rel(W2d, W2r) <= 1e-10


def test_many_neuron_tiles_on_a_small_grid(monkeypatch):
    """n1 = 5000 on a 2-multiprocessor device: each step block owns many tiles, several row tiles each."""
    cp2 = E.install(monkeypatch, multiprocessors=2)
    monkeypatch.setattr(cuda, "_POISON", True)
    X, W1, W2, G, _ = _case(12, 70, 3, 5000, 2, np.float64)
    W1r, W2r = W1.copy(), W2.copy()
    ref = reference.step(X, W1r, W2r, G, 0.01, ACTS["relu"], A1, False)
    W1d, W2d = cp2.asarray(W1), cp2.asarray(W2)
    res = cuda.step(cp2.asarray(X), W1d, W2d, cp2.asarray(G), 0.01, ACTS["relu"], A1, False)
    assert [l["grid"][0] for l in cp2.launches if "wide_step" in l["kernel"]] == [4]
    _check_update(W1d, W1, W1r, np.float64)
    _check_update(W2d, W2, W2r, np.float64)
    _check_sq(res.grad_sq_w1, ref.grad_sq_w1, np.float64)
