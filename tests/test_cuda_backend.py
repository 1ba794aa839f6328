"""CUDA backend against the NumPy reference (computed in float64 on the host).

Skips as a whole where CuPy or a CUDA device is missing. Every buffer the backend allocates is filled with NaN
before its kernel runs (cuda._POISON), so an element a kernel forgets to write shows up as a NaN mismatch.

Float32 cases use dyadic data for X and W1 (entries k/8 scaled by a power of two) so that Z = X W1 is exact in
float32 and float64 alike, whatever the summation order: the derivative pattern of relu and leaky_relu is then the
same on both sides and the comparison at 1e-5 is honest for every activation.
"""
import math

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
from pyrgd.activations import ACTIVATION_CODES, parse_activation  # noqa: E402
from pyrgd.backends import StepResult, cuda, reference  # noqa: E402
from pyrgd.errors import PyrgdError  # noqa: E402

pytestmark = pytest.mark.gpu

DTYPES = (np.float64, np.float32)
TOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}
EPS = {np.dtype(np.float64): np.finfo(np.float64).eps, np.dtype(np.float32): np.finfo(np.float32).eps}
ACTS = {name: parse_activation(name, 0.1) if name in ("leaky_relu", "smooth_leaky_relu") else parse_activation(name)
        for name in ACTIVATION_CODES}
A1 = 0.7
# (N, d, n1, n2): N=1, d=1, n2=1; N, n1 not multiples of any tile; d and n2 larger than one tile (64)
SHAPES = [
    (1, 1, 1, 1),
    (1, 3, 5, 2),
    (7, 1, 37, 1),
    (70, 5, 97, 3),
    (9, 300, 40, 130),
    (67, 300, 70, 130),
    (130, 17, 200, 1),
]


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setattr(cuda, "_POISON", True)


def _case(seed, N, d, n1, n2, dtype):
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
    a = cp.asnumpy(a) if isinstance(a, cp.ndarray) else a
    return np.asarray(a, dtype=np.float64)


def _rel(a, b):
    a, b = _f64(a), _f64(b)
    assert a.shape == b.shape
    assert np.isfinite(a).all(), "result holds NaN/inf (an element was not written?)"
    nb = np.linalg.norm(b)
    return np.linalg.norm(a - b) / nb if nb > 0 else np.linalg.norm(a - b)


def _dev(*arrays):
    return [cp.asarray(a) for a in arrays]


# ----------------------------------------------------------------------------------------------------------------
# agreement with the reference


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_matches_reference(shape, act, dtype):
    X, W1, W2, _, _ = _case(1, *shape, dtype)
    H = cuda.forward(*_dev(X, W1, W2), ACTS[act], A1)
    assert isinstance(H, cp.ndarray) and H.dtype == np.dtype(dtype) and H.shape == (shape[0], shape[3])
    H_ref = reference.forward(_f64(X), _f64(W1), _f64(W2), ACTS[act], A1)
    assert _rel(H, H_ref) <= TOL[np.dtype(dtype)]


def _check_update(W_new, W_old, W_ref_new, dtype):
    """W_new close to the reference, and so is the update W_new - W_old (up to the rounding of storing W)."""
    tol, eps = TOL[np.dtype(dtype)], EPS[np.dtype(dtype)]
    W_new, W_old = _f64(W_new), _f64(W_old)
    assert _rel(W_new, W_ref_new) <= tol
    dW, dW_ref = W_new - W_old, W_ref_new - W_old
    assert np.linalg.norm(dW - dW_ref) <= tol * np.linalg.norm(dW_ref) + 2 * eps * np.linalg.norm(W_old)


def _check_sq(got, want, dtype):
    assert isinstance(got, float)
    assert abs(got - want) <= 2 * TOL[np.dtype(dtype)] * abs(want) + 1e-300


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_step_matches_reference(shape, act, dtype):
    X, W1, W2, G, _ = _case(2, *shape, dtype)
    lr = 0.05
    W1r, W2r = _f64(W1).copy(), _f64(W2).copy()
    ref = reference.step(_f64(X), W1r, W2r, _f64(G), lr, ACTS[act], A1, False)
    Xd, W1d, W2d, Gd = _dev(X, W1, W2, G)
    p1, p2 = W1d.data.ptr, W2d.data.ptr
    res = cuda.step(Xd, W1d, W2d, Gd, lr, ACTS[act], A1, False)
    assert isinstance(res, StepResult) and res.H_next is None
    assert W1d.data.ptr == p1 and W2d.data.ptr == p2  # updated in place
    _check_update(W1d, W1, W1r, dtype)
    _check_update(W2d, W2, W2r, dtype)
    _check_sq(res.grad_sq_w1, ref.grad_sq_w1, dtype)
    _check_sq(res.grad_sq_w2, ref.grad_sq_w2, dtype)
    # read-only inputs untouched
    assert np.array_equal(cp.asnumpy(Xd), X) and np.array_equal(cp.asnumpy(Gd), G)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gram_matches_reference(shape, act, dtype):
    X, W1, W2, _, B2 = _case(3, *shape, dtype)
    Xd, W1d, W2d, B2d = _dev(X, W1, W2, B2)
    K = cuda.gram(Xd, W1d, ACTS[act], A1)
    assert K.shape == (shape[0], shape[0]) and K.dtype == np.dtype(dtype)
    assert _rel(K, reference.gram(_f64(X), _f64(W1), ACTS[act], A1)) <= TOL[np.dtype(dtype)]
    Kb = cuda.gram(Xd, W1d, ACTS[act], A1, W2=W2d, B2=B2d)
    Kb_ref = reference.gram(_f64(X), _f64(W1), ACTS[act], A1, W2=_f64(W2), B2=_f64(B2))
    assert _rel(Kb, Kb_ref) <= TOL[np.dtype(dtype)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("act", ["relu", "smooth_leaky_relu", "erf"])
def test_next_forward_is_forward_of_updated_weights(act, dtype):
    X, W1, W2, G, _ = _case(4, 70, 20, 150, 5, dtype)
    Xd, W1d, W2d, Gd = _dev(X, W1, W2, G)
    res = cuda.step(Xd, W1d, W2d, Gd, 0.05, ACTS[act], A1, True)
    assert isinstance(res.H_next, cp.ndarray) and res.H_next.shape == (70, 5)
    assert cp.array_equal(res.H_next, cuda.forward(Xd, W1d, W2d, ACTS[act], A1))
    W1r, W2r = _f64(W1).copy(), _f64(W2).copy()
    ref = reference.step(_f64(X), W1r, W2r, _f64(G), 0.05, ACTS[act], A1, True)
    assert _rel(res.H_next, ref.H_next) <= TOL[np.dtype(dtype)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
def test_out_arrays_are_written_in_place(dtype):
    """forward(out=) and step(next_forward, out=G) write the caller's arrays (NaN-filled first) with the bits of
    the calls without out; out may be G for the step (the forward launch follows the step kernel)."""
    X, W1, W2, G, _ = _case(5, 90, 20, 150, 3, dtype)
    Xd, W1d, W2d, Gd = _dev(X, W1, W2, G)
    out = cp.full((90, 3), cp.nan, dtype=dtype)
    got = ops.wide_forward(Xd, W1d, W2d, activation="tanh", out=out)
    assert got is out and cp.array_equal(out, ops.wide_forward(Xd, W1d, W2d, activation="tanh"))
    W1a, W2a, W1b, W2b = W1d.copy(), W2d.copy(), W1d.copy(), W2d.copy()
    ref = ops.wide_step(Xd, W1a, W2a, Gd, 0.05, activation="tanh", next_forward=True)
    G2 = Gd.copy()
    res = ops.wide_step(Xd, W1b, W2b, G2, 0.05, activation="tanh", next_forward=True, out=G2)
    assert res.H_next is G2 and cp.array_equal(G2, ref.H_next)
    assert cp.array_equal(W1a, W1b) and cp.array_equal(W2a, W2b) and res.grad_sq_w1 == ref.grad_sq_w1


def test_finiteness_check_on_the_device(monkeypatch):
    """A NaN in the last of several device chunks is found (one read-back); check_finite=False lets it through."""
    from pyrgd import _validate

    monkeypatch.setattr(_validate, "DEVICE_FINITE_CHUNK", 1000)
    X, W1, W2, _, _ = _case(6, 600, 20, 70, 2, np.float64)
    Xd, W1d, W2d = _dev(X, W1, W2)
    Xd[599, 19] = cp.nan
    with pytest.raises(PyrgdError, match="X: contains NaN"):
        ops.wide_forward(Xd, W1d, W2d)
    H = ops.wide_forward(Xd, W1d, W2d, check_finite=False)
    assert bool(cp.isnan(H[599]).all()) and bool(cp.isfinite(H[:599]).all())


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_many_neuron_tiles_use_the_persistent_grid(act, dtype):
    """n1 = 20000: more neuron tiles than the step grid has blocks, several row tiles (scratch reused)."""
    X, W1, W2, G, _ = _case(5, 70, 3, 20000, 2, dtype)
    Xd, W1d, W2d, Gd = _dev(X, W1, W2, G)
    tol = TOL[np.dtype(dtype)]
    H_ref = reference.forward(_f64(X), _f64(W1), _f64(W2), ACTS[act], A1)
    assert _rel(cuda.forward(Xd, W1d, W2d, ACTS[act], A1), H_ref) <= tol
    W1r, W2r = _f64(W1).copy(), _f64(W2).copy()
    ref = reference.step(_f64(X), W1r, W2r, _f64(G), 0.01, ACTS[act], A1, False)
    res = cuda.step(Xd, W1d, W2d, Gd, 0.01, ACTS[act], A1, False)
    _check_update(W1d, W1, W1r, dtype)
    _check_update(W2d, W2, W2r, dtype)
    _check_sq(res.grad_sq_w1, ref.grad_sq_w1, dtype)
    _check_sq(res.grad_sq_w2, ref.grad_sq_w2, dtype)


# ----------------------------------------------------------------------------------------------------------------
# determinism


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
def test_repeat_calls_are_bit_identical(dtype):
    act = ACTS["smooth_leaky_relu"]
    X, W1, W2, G, B2 = _case(6, 130, 70, 300, 9, dtype)
    Xd, W1d, W2d, Gd, B2d = _dev(X, W1, W2, G, B2)
    assert cp.array_equal(cuda.forward(Xd, W1d, W2d, act, A1), cuda.forward(Xd, W1d, W2d, act, A1))
    assert cp.array_equal(cuda.gram(Xd, W1d, act, A1), cuda.gram(Xd, W1d, act, A1))
    assert cp.array_equal(cuda.gram(Xd, W1d, act, A1, W2=W2d, B2=B2d), cuda.gram(Xd, W1d, act, A1, W2=W2d, B2=B2d))
    outs = []
    for _ in range(2):
        a, b = W1d.copy(), W2d.copy()
        r = cuda.step(Xd, a, b, Gd, 0.05, act, A1, True)
        outs.append((a, b, r))
    (a1, b1, r1), (a2, b2, r2) = outs
    assert cp.array_equal(a1, a2) and cp.array_equal(b1, b2) and cp.array_equal(r1.H_next, r2.H_next)
    assert r1.grad_sq_w1 == r2.grad_sq_w1 and r1.grad_sq_w2 == r2.grad_sq_w2


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
def test_step_result_does_not_depend_on_grid_size(monkeypatch, dtype):
    act = ACTS["tanh"]
    X, W1, W2, G, _ = _case(7, 100, 40, 700, 70, dtype)
    Xd, Gd = _dev(X, G)
    outs = []
    for limit in (None, 1, 3):
        monkeypatch.setattr(cuda, "_STEP_GRID_LIMIT", limit)
        a, b = _dev(W1, W2)
        r = cuda.step(Xd, a, b, Gd, 0.05, act, A1, False)
        outs.append((cp.asnumpy(a), cp.asnumpy(b), r.grad_sq_w1, r.grad_sq_w2))
    for o in outs[1:]:
        assert np.array_equal(o[0], outs[0][0]) and np.array_equal(o[1], outs[0][1])
        assert o[2] == outs[0][2] and o[3] == outs[0][3]


@pytest.mark.parametrize("fast", [True, False], ids=["f32_blocked", "f32_generic"])
@pytest.mark.parametrize("act", ["smooth_leaky_relu", "relu"])
def test_float32_blocked_and_generic_kernels_match_reference(monkeypatch, act, fast):
    """float32 runs the register-blocked kernels (wide_*_f32, 128 x 128 tiles) unless cuda._USE_FAST is off; both
    paths agree with the reference on shapes spanning several row and neuron tiles with ragged edges."""
    monkeypatch.setattr(cuda, "_USE_FAST", fast)
    dtype = np.float32
    X, W1, W2, G, _ = _case(11, 300, 200, 390, 130, dtype)
    H = cuda.forward(*_dev(X, W1, W2), ACTS[act], A1)
    assert _rel(H, reference.forward(_f64(X), _f64(W1), _f64(W2), ACTS[act], A1)) <= TOL[np.dtype(dtype)]
    lr = 0.05
    W1r, W2r = _f64(W1).copy(), _f64(W2).copy()
    ref = reference.step(_f64(X), W1r, W2r, _f64(G), lr, ACTS[act], A1, True)
    Xd, W1d, W2d, Gd = _dev(X, W1, W2, G)
    res = cuda.step(Xd, W1d, W2d, Gd, lr, ACTS[act], A1, True)
    _check_update(W1d, W1, W1r, dtype)
    _check_update(W2d, W2, W2r, dtype)
    _check_sq(res.grad_sq_w1, ref.grad_sq_w1, dtype)
    _check_sq(res.grad_sq_w2, ref.grad_sq_w2, dtype)
    assert _rel(res.H_next, ref.H_next) <= TOL[np.dtype(dtype)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
def test_gram_in_many_chunks(monkeypatch, dtype):
    """A chunk budget of a little over one neuron tile: many chunks, the last one partial."""
    act = ACTS["softplus"]
    X, W1, W2, _, B2 = _case(8, 50, 6, 333, 4, dtype)
    Xd, W1d, W2d, B2d = _dev(X, W1, W2, B2)
    monkeypatch.setattr(cuda, "_GRAM_CHUNK_BYTES", 50 * np.dtype(dtype).itemsize * 70)
    tol = TOL[np.dtype(dtype)]
    assert _rel(cuda.gram(Xd, W1d, act, A1), reference.gram(_f64(X), _f64(W1), act, A1)) <= tol
    Kb_ref = reference.gram(_f64(X), _f64(W1), act, A1, W2=_f64(W2), B2=_f64(B2))
    assert _rel(cuda.gram(Xd, W1d, act, A1, W2=W2d, B2=B2d), Kb_ref) <= tol


def test_gram_accumulates_with_cublas_gemm():
    """The chunks are added by cuBLAS GEMM (beta = 0 on the first chunk, 1 after), not by a matmul + add."""
    assert cuda._cublas_gemm() is not None


def test_poison_fills_backend_buffers_with_nan():
    a = cuda._empty((3, 4), np.float32)
    assert bool(cp.isnan(a).all())


# ----------------------------------------------------------------------------------------------------------------
# gradient descent end to end


@pytest.mark.parametrize("act", ["smooth_leaky_relu", "relu"])
def test_gd_trajectory_matches_reference(act):
    """100 full-batch GD steps of the two-layer model H = a1 sigma(X W1) W2, loss 1/2 ||H - Y||^2 (G = H - Y)."""
    rng = np.random.default_rng(11)
    N, d, n1, n2 = 40, 10, 300, 2
    X = rng.standard_normal((N, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Y = rng.standard_normal((N, n2))
    W1 = rng.standard_normal((d, n1))
    W2 = rng.standard_normal((n1, n2))
    a1, lr, steps = 1 / math.sqrt(n1), 0.1, 100
    A = ACTS[act]

    W1r, W2r, loss_ref = W1.copy(), W2.copy(), []
    for _ in range(steps):
        Gr = reference.forward(X, W1r, W2r, A, a1) - Y
        loss_ref.append(0.5 * float((Gr * Gr).sum()))
        reference.step(X, W1r, W2r, Gr, lr, A, a1, False)

    Xd, W1d, W2d, Yd = _dev(X, W1, W2, Y)
    H, loss = cuda.forward(Xd, W1d, W2d, A, a1), []
    for _ in range(steps):
        Gd = H - Yd
        loss.append(0.5 * float((Gd * Gd).sum()))
        H = cuda.step(Xd, W1d, W2d, Gd, lr, A, a1, True).H_next
    loss, loss_ref = np.array(loss), np.array(loss_ref)
    assert loss_ref[-1] < 0.5 * loss_ref[0]  # a real trajectory, not a fixed point
    assert np.max(np.abs(loss - loss_ref) / loss_ref) <= 1e-10
    assert _rel(W1d, W1r) <= 1e-10 and _rel(W2d, W2r) <= 1e-10


# ----------------------------------------------------------------------------------------------------------------
# dispatch and input checks through pyrgd.ops


def test_ops_auto_dispatches_cupy_arrays_to_cuda():
    X, W1, W2, G, B2 = _case(9, 20, 4, 50, 3, np.float64)
    Xd, W1d, W2d, Gd, B2d = _dev(X, W1, W2, G, B2)
    act = ACTS["tanh"]
    assert ops.resolve_backend("auto", cp) == "cuda"
    H = ops.wide_forward(Xd, W1d, W2d, activation="tanh", a1=A1)
    assert isinstance(H, cp.ndarray) and cp.array_equal(H, cuda.forward(Xd, W1d, W2d, act, A1))
    K = ops.wide_gram(Xd, W1d, activation="tanh", a1=A1, W2=W2d, B2=B2d)
    assert cp.array_equal(K, cuda.gram(Xd, W1d, act, A1, W2=W2d, B2=B2d))
    a, b = W1d.copy(), W2d.copy()
    r = ops.wide_step(Xd, W1d, W2d, Gd, 0.05, activation="tanh", a1=A1, next_forward=True)
    r2 = cuda.step(Xd, a, b, Gd, 0.05, act, A1, True)
    assert isinstance(r.grad_sq_w1, float) and r.grad_sq_w1 == r2.grad_sq_w1 and r.grad_sq_w2 == r2.grad_sq_w2
    assert cp.array_equal(W1d, a) and cp.array_equal(W2d, b) and cp.array_equal(r.H_next, r2.H_next)


def test_ops_rejects_mixed_numpy_and_cupy():
    X, W1, W2, G, _ = _case(10, 5, 3, 8, 2, np.float64)
    Xd, W1d, W2d, Gd = _dev(X, W1, W2, G)
    with pytest.raises(PyrgdError, match="W1"):
        ops.wide_forward(Xd, W1, W2d)
    with pytest.raises(PyrgdError, match="W1"):
        ops.wide_forward(X, W1d, W2d)
    with pytest.raises(PyrgdError, match="G"):
        ops.wide_step(Xd, W1d, W2d, G, 0.1)
    with pytest.raises(PyrgdError, match="backend"):
        ops.wide_forward(Xd, W1d, W2d, backend="cpu")
    with pytest.raises(PyrgdError, match="W1"):  # updated in place, so a non-contiguous view is refused
        ops.wide_step(Xd, cp.asfortranarray(W1d), W2d, Gd, 0.1)
    with pytest.raises(PyrgdError, match="W2"):  # float32 with float64
        ops.wide_forward(Xd, W1d, W2d.astype(np.float32))


def test_available_and_device_info():
    ok, why = cuda.available()
    assert ok is True and "CuPy" in why
    info = cuda.device_info()
    assert info["available"] is True and info["kernels_compile"] is True, info
    assert info["name"] and info["compute_capability"] and info["multiprocessors"] > 0


def test_training_on_cuda_matches_the_cpu_backend():
    """pyrgd.train end to end (wide layer + pyramidal tail + tracking): 100 float64 steps, cuda vs cpu.

    The step size is well inside the stable range (lambda_max of the NTK is about 516 here): near the edge of
    stability GD amplifies rounding differences by about 1.3x per step, and two correct backends drift apart."""
    import pyrgd

    rng = np.random.default_rng(7)
    X = rng.standard_normal((96, 12))
    Y = rng.standard_normal((96, 2))
    net = pyrgd.PyramidalNet(12, [300, 8, 4, 2], activation="smooth_leaky_relu(0.2)", seed=3)
    runs = {b: pyrgd.train(net.copy(), X, Y, lr=0.0005, steps=100, backend=b, track_every=25, progress=False)
            for b in ("cpu", "cuda")}
    a, b = runs["cpu"].history["loss"], runs["cuda"].history["loss"]
    assert len(a) == len(b) == 101
    assert np.max(np.abs(np.array(a) - np.array(b)) / np.array(a)) <= 1e-10
    for wa, wb in zip(runs["cpu"].net.weights, runs["cuda"].net.weights):
        assert isinstance(wb, np.ndarray) and np.allclose(wa, wb, rtol=1e-9, atol=1e-12)
    ca, cb = runs["cpu"].certificates["mu"], runs["cuda"].certificates["mu"]
    assert np.allclose(ca, cb, rtol=1e-8)
    assert runs["cuda"].summary["backend"] == "cuda" and "cupy" in runs["cuda"].summary["versions"]
