"""pyrgd.ops.wide_grad: the wide layer's gradients (and the input gradient) given the upstream gradient, on the C++
backend and the NumPy reference: agreement, accuracy, determinism, strides, out buffers and argument checks."""
import numpy as np
import pytest

import pyrgd.ops as ops
from pyrgd.activations import parse_activation
from pyrgd.backends import reference
from pyrgd.errors import PyrgdError

from conftest import ALL_ACTIVATIONS, rel_err

_cpu = pytest.importorskip("pyrgd._cpu")

# (N, d, n1, n2, a1): one element, a partial block, several blocks, several groups (n1 > 1024), several row
# chunks (N > 256), tall n2
SHAPES = [
    (1, 1, 1, 1, 1.0),
    (6, 1, 33, 1, 1.0),
    (9, 4, 65, 3, 2.0),
    (17, 6, 97, 5, 0.7),
    (12, 3, 1100, 2, 0.05),
    (300, 5, 130, 2, 1.3),
    (37, 13, 200, 19, 0.9),
]
IDS = ["N{}-d{}-n1_{}-n2_{}".format(*s[:4]) for s in SHAPES]
KINKED = ("relu", "leaky_relu")


def case(shape, dtype, act, seed=0):
    """X, W1, W2, G drawn in float64 then cast; for the kinked activations the columns of W1 are redrawn until no
    pre-activation lies within 1e-3 of the kink (so that rounding cannot flip sigma')."""
    N, d, n1, n2, _ = shape
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, d))
    W1 = rng.standard_normal((d, n1)) / np.sqrt(d)
    W2 = rng.standard_normal((n1, n2)) / np.sqrt(n1)
    G = rng.standard_normal((N, n2))
    if act.name in KINKED:
        for j in range(n1):
            while np.abs(X @ W1[:, j]).min() < 1e-3:
                W1[:, j] = rng.standard_normal(d) / np.sqrt(d)
    return tuple(np.ascontiguousarray(a, dtype=dtype) for a in (X, W1, W2, G))


@pytest.mark.parametrize("input_grad", [False, True], ids=["weights", "with_dX"])
@pytest.mark.parametrize("spec", ALL_ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_float64_matches_reference(shape, spec, input_grad):
    act = parse_activation(spec)
    X, W1, W2, G = case(shape, np.float64, act)
    a1 = shape[4]
    got = ops.wide_grad(X, W1, W2, G, activation=act, a1=a1, input_grad=input_grad, backend="cpu")
    want = reference.wide_grad(X, W1, W2, G, act, a1, input_grad)
    assert len(got) == (3 if input_grad else 2)
    for g, w in zip(got, want):
        assert g.dtype == np.float64 and g.shape == w.shape and g.flags.c_contiguous
        assert rel_err(g, w) <= 1e-13


@pytest.mark.parametrize("spec", ALL_ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES[2:], ids=IDS[2:])
def test_float32_as_accurate_as_the_float32_reference(shape, spec):
    """Both float32 results against the float64 reference on the same (float32) inputs: the kernel's error is at
    most a few times the float32 reference's (NumPy's BLAS, pairwise-blocked sums)."""
    act = parse_activation(spec)
    arrs = case(shape, np.float32, act)
    a1 = shape[4]
    exact = reference.wide_grad(*(a.astype(np.float64) for a in arrs), act, a1, True)
    got = ops.wide_grad(*arrs, activation=act, a1=a1, input_grad=True, backend="cpu")
    ref32 = reference.wide_grad(*arrs, act, a1, True)
    for g, r, e in zip(got, ref32, exact):
        assert g.dtype == np.float32
        assert rel_err(g, e) <= 4 * rel_err(r, e) + 2e-7, (rel_err(g, e), rel_err(r, e))


@pytest.mark.parametrize("spec", ["tanh", "softplus", "smooth_leaky_relu(0.2)"])
def test_reference_gradients_are_the_derivatives(spec):
    """The oracle itself, by central differences of Phi = <G, a1 sigma(X W1) W2> in float64."""
    act = parse_activation(spec)
    X, W1, W2, G = case((7, 3, 10, 2, 0.8), np.float64, act, seed=3)
    a1 = 0.8

    def phi(X, W1, W2):
        return float((G * ops.wide_forward(X, W1, W2, activation=act, a1=a1, backend="reference")).sum())

    grads = ops.wide_grad(X, W1, W2, G, activation=act, a1=a1, input_grad=True, backend="cpu")
    h = 1e-6
    for which, (A, g) in enumerate(zip((W1, W2, X), grads)):
        num = np.empty_like(A)
        for idx in np.ndindex(A.shape):
            args = [X, W1, W2]
            pos = {0: 1, 1: 2, 2: 0}[which]
            up, dn = A.copy(), A.copy()
            up[idx] += h
            dn[idx] -= h
            args[pos] = up
            fu = phi(*args)
            args[pos] = dn
            num[idx] = (fu - phi(*args)) / (2 * h)
        assert rel_err(g, num) <= 1e-7, which


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_gradients_are_those_wide_step_applies(dtype):
    """W - lr dW from wide_grad gives wide_step's updated weights bit for bit."""
    act = parse_activation("softplus")
    X, W1, W2, G = case((300, 5, 130, 3, 0.6), dtype, act)
    lr = dtype(0.01)
    dW1, dW2 = ops.wide_grad(X, W1, W2, G, activation=act, a1=0.6, backend="cpu")
    S1, S2 = W1.copy(), W2.copy()
    ops.wide_step(X, S1, S2, G, float(lr), activation=act, a1=0.6, backend="cpu")
    assert np.array_equal(S1, W1 - lr * dW1) and np.array_equal(S2, W2 - lr * dW2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_bits_for_any_thread_count(dtype, restore_threads):
    act = parse_activation("tanh")
    X, W1, W2, G = case((530, 7, 1100, 3, 1.0), dtype, act)
    results = []
    for t in (1, 2, 3, 5):
        _cpu.set_num_threads(t)
        results.append(ops.wide_grad(X, W1, W2, G, activation=act, input_grad=True, backend="cpu"))
    for res in results[1:]:
        for a, b in zip(res, results[0]):
            assert np.array_equal(a, b)


def test_every_isa_matches_reference(isa):
    act = parse_activation("erf")
    for dtype, tol in ((np.float64, 1e-13), (np.float32, 1e-5)):
        X, W1, W2, G = case((37, 13, 200, 19, 0.9), dtype, act)
        got = ops.wide_grad(X, W1, W2, G, activation=act, a1=0.9, input_grad=True, backend="cpu")
        want = reference.wide_grad(*(a.astype(np.float64) for a in (X, W1, W2, G)), act, 0.9, True)
        for g, w in zip(got, want):
            assert rel_err(g, w) <= tol, (isa, dtype)


def test_strided_and_fortran_inputs_give_the_contiguous_result():
    act = parse_activation("softplus")
    X, W1, W2, G = case((40, 6, 70, 4, 1.0), np.float64, act)
    want = ops.wide_grad(X, W1, W2, G, activation=act, input_grad=True)
    Xs = np.zeros((40, 12))
    Xs[:, ::2] = X
    views = (Xs[:, ::2], np.asfortranarray(W1), W2.T.copy().T, G[::-1][::-1].copy(order="F"))
    assert not views[0].flags.c_contiguous and not views[1].flags.c_contiguous
    got = ops.wide_grad(*views, activation=act, input_grad=True)
    for g, w in zip(got, want):
        assert np.array_equal(g, w)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_out_buffers_are_written_and_returned(backend):
    act = parse_activation("tanh")
    X, W1, W2, G = case((20, 3, 70, 2, 1.0), np.float64, act)
    want = ops.wide_grad(X, W1, W2, G, activation=act, input_grad=True, backend=backend)
    out = (np.full_like(W1, np.nan), np.full_like(W2, np.nan), np.full_like(X, np.nan))
    got = ops.wide_grad(X, W1, W2, G, activation=act, input_grad=True, out=out, backend=backend)
    assert all(g is o for g, o in zip(got, out))
    for g, w in zip(got, want):
        assert np.array_equal(g, w)


def test_inputs_are_not_modified():
    act = parse_activation("relu")
    arrs = case((20, 3, 70, 2, 1.0), np.float32, act)
    before = [a.copy() for a in arrs]
    ops.wide_grad(*arrs, activation=act, input_grad=True)
    assert all(np.array_equal(a, b) for a, b in zip(arrs, before))


def test_bad_input_is_a_pyrgd_error_naming_the_argument():
    rng = np.random.default_rng(0)
    X, W1, W2, G = (rng.standard_normal(s) for s in ((5, 3), (3, 8), (8, 2), (5, 2)))
    cases = [
        ("G: expected shape", dict(G=rng.standard_normal((4, 2)))),
        ("G: expected dtype float64", dict(G=G.astype(np.float32))),
        ("W2: expected shape", dict(W2=rng.standard_normal((7, 2)))),
        ("G: contains NaN", dict(G=np.full((5, 2), np.inf))),
        ("input_grad: expected True or False", dict(input_grad=1)),
        ("activation", dict(activation="nope")),
        ("a1: expected a finite number", dict(a1=float("nan"))),
        ("out: expected None or a tuple of 2 arrays", dict(out=(np.empty((3, 8)),))),
        ("out: expected None or a tuple of 3 arrays", dict(out=(np.empty((3, 8)), np.empty((8, 2))), input_grad=True)),
        (r"out\[1\] \(dW2\): expected shape", dict(out=(np.empty((3, 8)), np.empty((8, 3))))),
        (r"out\[0\] \(dW1\): expected dtype float64", dict(out=(np.empty((3, 8), np.float32), np.empty((8, 2))))),
        (r"out\[0\] \(dW1\): is updated in place but is not C-contiguous",
         dict(out=(np.empty((8, 3)).T, np.empty((8, 2))))),
        (r"out\[0\] \(dW1\), W1: must not share memory", dict(out=(W1, np.empty((8, 2))))),
    ]
    for message, change in cases:
        kw = dict(X=X, W1=W1, W2=W2, G=G, activation="tanh")
        kw.update(change)
        with pytest.raises(PyrgdError, match="^" + message):
            ops.wide_grad(kw.pop("X"), kw.pop("W1"), kw.pop("W2"), kw.pop("G"), **kw)
    buf = np.empty(3 * 8 + 8 * 2)
    with pytest.raises(PyrgdError, match=r"out\[1\] \(dW2\), out\[0\]: must not share memory"):
        ops.wide_grad(X, W1, W2, G, out=(buf[:24].reshape(3, 8), buf[8:24].reshape(8, 2)))


def test_raw_module_rejects_bad_input_without_crashing():
    act = parse_activation("tanh")
    X, W1, W2, G = case((5, 3, 8, 2, 1.0), np.float64, act)
    with pytest.raises(ValueError, match="G: expected shape"):
        _cpu.wide_grad(X, W1, W2, G[:4], act.code)
    with pytest.raises(ValueError, match="act_code"):
        _cpu.wide_grad(X, W1, W2, G, 999)
    with pytest.raises(ValueError, match="out: expected 3 arrays"):
        _cpu.wide_grad(X, W1, W2, G, act.code, 0.0, 1.0, True, [np.empty((3, 8)), np.empty((8, 2))])
    with pytest.raises(ValueError, match=r"out\[0\] \(dW1\), W1: must not share memory"):
        _cpu.wide_grad(X, W1, W2, G, act.code, 0.0, 1.0, False, [W1, W2.copy()])
    with pytest.raises(TypeError, match="X: expected a numpy.ndarray"):
        _cpu.wide_grad([[1.0]], W1, W2, G, act.code)
