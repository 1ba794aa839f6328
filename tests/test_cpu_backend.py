"""The C++ CPU backend (pyrgd._cpu, pyrgd.backends.cpu) against the NumPy reference, and its robustness.

Agreement: relative Frobenius error <= 1e-12 (float64) and <= 1e-5 (float32) for forward, step (updated weights,
H_next, gradient norms) and both Gram modes, over every activation and awkward shapes (N, d, n2 = 1; n1 below,
not a multiple of, and well above the block size; widths that are not multiples of the register tiles), with the
kernels of every instruction set this CPU has (generic, AVX2, AVX-512). The vectorized activation code on its own
against float64 NumPy. Determinism: repeated calls, other thread counts and the AVX2/AVX-512 kernels give the same
bits where the backend promises it. Robustness: bad input to the raw module raises instead of crashing.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import numpy as np
import pytest

from pyrgd import ops
from pyrgd.activations import ACTIVATION_CODES, parse_activation
from pyrgd.backends import StepResult, reference
from pyrgd.errors import PyrgdError

_cpu = pytest.importorskip("pyrgd._cpu", reason="the C++ extension pyrgd._cpu is not built")
from pyrgd.backends import cpu  # noqa: E402  (after the skip: needs the extension)

ACTIVATIONS = ["relu", "leaky_relu(0.1)", "smooth_leaky_relu(0.3)", "softplus", "tanh", "erf", "identity"]
SMOOTH = ["smooth_leaky_relu(0.2)", "softplus", "tanh", "erf"]
DTYPES = [np.float64, np.float32]
TOL = {np.float64: 1e-12, np.float32: 1e-5}
BLOCK = _cpu.BLOCK_SIZE

# (N, d, n1, n2, a1, lr): N, d, n2 = 1; n1 = 1, < block (64), not a multiple of it, a multiple of it,
# > kSuperBlocks * block (1024, so the sums over neurons take two levels); N > 256 (the sums over samples take two
# levels and forward has several row tiles); N, d, n2 not multiples of the register tile (rows 4, 6 or 8; columns
# 4 to 64 floats) with n2 above one vector, so that the masked edge columns and the short edge rows both run.
SHAPES = [
    (1, 1, 1, 1, 1.0, 0.1),
    (1, 3, 40, 2, 0.5, 0.05),
    (6, 1, 33, 1, 1.0, 0.2),
    (9, 4, 31, 3, 2.0, 0.01),
    (17, 6, 97, 5, 0.7, 0.1),
    (12, 3, 1100, 2, 0.05, 0.5),
    (300, 2, 64, 1, 1.3, 0.002),
    (37, 13, 200, 19, 0.9, 0.05),
    (515, 9, 150, 35, 0.6, 0.001),
]
SHAPE_IDS = ["N{}-d{}-n1_{}-n2_{}".format(*s[:4]) for s in SHAPES]
KINKED = ("relu", "leaky_relu")


def rel_err(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    nb = np.linalg.norm(b)
    return np.linalg.norm(a - b) / (nb if nb > 0 else 1.0)


def make_case(shape, dtype, act, seed=0):
    """Random X, W1, W2, G (float64 drawn, then cast). For relu/leaky_relu the columns of W1 are redrawn until no
    pre-activation, before or after the reference update, lies within 1e-3 of the kink (rounding differences between
    backends, ~1e-7, must not flip sigma')."""
    N, d, n1, n2, a1, lr = shape
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, d))
    W1 = rng.standard_normal((d, n1)) / np.sqrt(d)
    W2 = rng.standard_normal((n1, n2)) / np.sqrt(n1)
    G = rng.standard_normal((N, n2))
    if act.name in KINKED:
        for j in range(n1):
            for _ in range(200):
                z = X @ W1[:, j]
                ok = np.abs(z).min() > 1e-3
                if ok:  # the column after a reference step depends on column j of W1 and row j of W2 only
                    D = a1 * (G @ W2[j]) * act.dsigma(z)
                    zn = X @ (W1[:, j] - lr * (X.T @ D))
                    ok = np.abs(zn).min() > 1e-3
                if ok:
                    break
                W1[:, j] = rng.standard_normal(d) / np.sqrt(d)
            else:  # pragma: no cover - only if the generator above is broken
                raise AssertionError("could not draw W1 away from the kink")
    return tuple(np.ascontiguousarray(a, dtype=dtype) for a in (X, W1, W2, G))


ISAS = _cpu.available_isas()  # (the `isa` and `restore_threads` fixtures are in conftest.py)


# ----------------------------------------------------------------------------------------- agreement with reference
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("spec", ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_forward_matches_reference(shape, spec, dtype):
    act = parse_activation(spec)
    X, W1, W2, _ = make_case(shape, dtype, act)
    a1 = shape[4]
    H = ops.wide_forward(X, W1, W2, activation=act, a1=a1, backend="cpu")
    assert H.dtype == dtype and H.shape == (shape[0], shape[3]) and H.flags.c_contiguous
    assert rel_err(H, reference.forward(X, W1, W2, act, a1)) <= TOL[dtype]


@pytest.mark.parametrize("next_forward", [True, False], ids=["next", "nonext"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("spec", ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_step_matches_reference(shape, spec, dtype, next_forward):
    act = parse_activation(spec)
    X, W1, W2, G = make_case(shape, dtype, act)
    a1, lr = shape[4], shape[5]
    X0, G0, W1_0, W2_0 = X.copy(), G.copy(), W1.copy(), W2.copy()
    R1, R2 = W1.copy(), W2.copy()
    ref = reference.step(X, R1, R2, G, lr, act, a1, next_forward)
    res = ops.wide_step(X, W1, W2, G, lr, activation=act, a1=a1, next_forward=next_forward, backend="cpu")
    assert isinstance(res, StepResult)
    tol = TOL[dtype]
    assert W1.dtype == dtype and W2.dtype == dtype
    assert rel_err(W1, R1) <= tol and rel_err(W2, R2) <= tol
    if dtype == np.float64:  # the updates themselves (lr * gradient), not only the updated weights
        assert rel_err(W1 - W1_0, R1 - W1_0) <= 1e-10
        assert rel_err(W2 - W2_0, R2 - W2_0) <= 1e-10
    assert isinstance(res.grad_sq_w1, float) and isinstance(res.grad_sq_w2, float)
    assert abs(res.grad_sq_w1 - ref.grad_sq_w1) <= tol * max(ref.grad_sq_w1, 1e-30)
    assert abs(res.grad_sq_w2 - ref.grad_sq_w2) <= tol * max(ref.grad_sq_w2, 1e-30)
    if next_forward:
        assert res.H_next.dtype == dtype and res.H_next.shape == (shape[0], shape[3])
        assert rel_err(res.H_next, ref.H_next) <= tol
    else:
        assert res.H_next is None
    assert np.array_equal(X, X0) and np.array_equal(G, G0)  # read-only inputs untouched


@pytest.mark.parametrize("mode", ["forward", "backward"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("spec", ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_gram_matches_reference(shape, spec, dtype, mode):
    act = parse_activation(spec)
    X, W1, W2, B2 = make_case(shape, dtype, act)
    a1 = shape[4]
    kw = {} if mode == "forward" else {"W2": W2, "B2": B2}
    K = ops.wide_gram(X, W1, activation=act, a1=a1, backend="cpu", **kw)
    assert K.dtype == dtype and K.shape == (shape[0], shape[0])
    assert rel_err(K, reference.gram(X, W1, act, a1, **kw)) <= TOL[dtype]
    assert np.array_equal(K, K.T)  # computed on one triangle and mirrored: exactly symmetric


@pytest.mark.parametrize("mode", ["forward", "backward"])
@pytest.mark.parametrize("N", [40, 1100])
def test_gram_over_several_panels(mode, N, restore_threads):
    """n1 so large that gram takes several panels of neurons and several groups of the two-level sum over neurons
    (N = 40: panels of 1024 neurons; N = 1100: panels of 512 neurons, F^T in several blocks of samples
    and the rank update in several stripes of rows): agreement with the reference and the same bits for 1, 3
    threads."""
    n1 = int(1.5 * _cpu.build_info()["gram_panel_elems"] / N) if N == 40 else 2100
    act = parse_activation("tanh")
    X, W1, W2, B2 = make_case((N, 2, n1, 3, 0.3, 0.0), np.float64, act)
    kw = {} if mode == "forward" else {"W2": W2, "B2": B2}
    Ks = []
    for n in (1, 3):
        cpu.set_num_threads(n)
        Ks.append(cpu.gram(X, W1, act, 0.3, **kw))
    assert np.array_equal(Ks[0], Ks[1])
    assert rel_err(Ks[0], reference.gram(X, W1, act, 0.3, **kw)) <= 1e-12
    assert np.array_equal(Ks[0], Ks[0].T)


def test_lr_zero_leaves_weights_and_reports_gradients():
    act = parse_activation("tanh")
    X, W1, W2, G = make_case((7, 3, 50, 2, 1.0, 0.0), np.float64, act)
    W1_0, W2_0 = W1.copy(), W2.copy()
    res = ops.wide_step(X, W1, W2, G, 0.0, activation=act, backend="cpu")
    assert np.array_equal(W1, W1_0) and np.array_equal(W2, W2_0)
    gW1, gW2 = reference.gradients(X, W1_0, W2_0, G, act, 1.0)
    assert res.grad_sq_w1 == pytest.approx(float((gW1**2).sum()), rel=1e-12)
    assert res.grad_sq_w2 == pytest.approx(float((gW2**2).sum()), rel=1e-12)


def test_h_next_equals_forward_of_updated_weights():
    act = parse_activation("softplus")
    X, W1, W2, G = make_case((20, 4, 300, 3, 0.8, 0.1), np.float64, act)
    res = ops.wide_step(X, W1, W2, G, 0.1, activation=act, a1=0.8, next_forward=True, backend="cpu")
    H = ops.wide_forward(X, W1, W2, activation=act, a1=0.8, backend="cpu")
    assert rel_err(res.H_next, H) <= 1e-13


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
def test_out_buffers(dtype):
    """forward(out=) and step(out=) write H into the caller's array (step's may be G itself) with the same bits."""
    act = parse_activation("smooth_leaky_relu(0.2)")
    X, W1, W2, G = make_case(DET_SHAPE, dtype, act)
    a1, lr = DET_SHAPE[4], DET_SHAPE[5]
    H = cpu.forward(X, W1, W2, act, a1)
    out = np.full_like(H, np.nan)
    assert cpu.forward(X, W1, W2, act, a1, out=out) is out and np.array_equal(out, H)
    A1, A2 = W1.copy(), W2.copy()
    ref = cpu.step(X, A1, A2, G, lr, act, a1, True)
    B1, B2, Gc = W1.copy(), W2.copy(), G.copy()
    res = cpu.step(X, B1, B2, Gc, lr, act, a1, True, out=Gc)  # H_next over G
    assert res.H_next is Gc and np.array_equal(Gc, ref.H_next)
    assert np.array_equal(B1, A1) and np.array_equal(B2, A2)
    assert (res.grad_sq_w1, res.grad_sq_w2) == (ref.grad_sq_w1, ref.grad_sq_w2)
    C1, C2 = W1.copy(), W2.copy()
    flat = np.zeros(X.size + 10, dtype)  # an X and an out that share memory
    Xs = flat[: X.size].reshape(X.shape)
    Xs[...] = X
    out_x = flat[10: 10 + H.size].reshape(H.shape)
    for xin, bad, text in ((X, np.zeros((3, 3), dtype), "out"), (X, np.zeros(H.shape, np.float16), "out"),
                           (X, np.asfortranarray(out), "out"), (X, _readonly(out), "out"), (Xs, out_x, "out, X")):
        with pytest.raises(PyrgdError, match=text):
            cpu.step(xin, C1, C2, G, lr, act, a1, True, out=bad)
    with pytest.raises(PyrgdError, match="next_forward"):
        cpu.step(X, C1, C2, G, lr, act, a1, False, out=out)
    assert np.array_equal(C1, W1) and np.array_equal(C2, W2)  # nothing written before the checks failed
    out_w2 = W2.reshape(-1)[: H.size].reshape(H.shape)  # a view of W2's memory
    with pytest.raises(PyrgdError, match="out, W2"):
        cpu.forward(X, W1, W2, act, a1, out=out_w2)


# ------------------------------------------------------------------------------------- in place and determinism
def test_step_updates_callers_arrays_in_place():
    act = parse_activation("relu")
    X, W1, W2, G = make_case((10, 3, 70, 2, 1.0, 0.1), np.float64, act)
    W1_0, W2_0 = W1.copy(), W2.copy()
    ptr1, ptr2 = W1.ctypes.data, W2.ctypes.data
    R1, R2 = W1.copy(), W2.copy()
    reference.step(X, R1, R2, G, 0.1, act, 1.0, False)
    out = _cpu.step(X, W1, W2, G, 0.1, act.code, act.gamma, 1.0, False)
    assert out[0] is None
    assert W1.ctypes.data == ptr1 and W2.ctypes.data == ptr2
    assert not np.array_equal(W1, W1_0) and not np.array_equal(W2, W2_0)
    assert rel_err(W1, R1) <= 1e-12 and rel_err(W2, R2) <= 1e-12


def test_step_in_place_on_a_view_with_contiguous_memory():
    # A C-contiguous view (rows of a larger array) is updated in place: the base array changes.
    act = parse_activation("tanh")
    X, W1, W2, G = make_case((8, 3, 40, 2, 1.0, 0.1), np.float64, act)
    big = np.zeros((5, 40))
    big[1:4] = W1
    view = big[1:4]
    assert view.flags.c_contiguous and view.base is big
    R1, R2 = W1.copy(), W2.copy()
    reference.step(X, R1, R2, G, 0.1, act, 1.0, False)
    cpu.step(X, view, W2, G, 0.1, act, 1.0, False)
    assert rel_err(big[1:4], R1) <= 1e-12
    assert not big[0].any() and not big[4].any()


DET_SHAPE = (300, 5, 1100, 3, 0.9, 0.05)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
def test_repeated_calls_are_bit_identical(dtype):
    act = parse_activation("smooth_leaky_relu(0.2)")
    X, W1, W2, G = make_case(DET_SHAPE, dtype, act)
    a1, lr = DET_SHAPE[4], DET_SHAPE[5]
    outs = []
    for _ in range(2):
        A1, A2 = W1.copy(), W2.copy()
        H_next, q1, q2 = _cpu.step(X, A1, A2, G, lr, act.code, act.gamma, a1, True)
        outs.append(
            (
                _cpu.forward(X, W1, W2, act.code, act.gamma, a1),
                _cpu.gram(X, W1, None, None, act.code, act.gamma, a1),
                _cpu.gram(X, W1, W2, G, act.code, act.gamma, a1),
                A1,
                A2,
                H_next,
                q1,
                q2,
            )
        )
    for a, b in zip(*outs):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
def test_thread_count_independence(dtype, restore_threads):
    """forward, gram, and all of step's outputs (W1, W2, norms, H_next) are the same bits for 1, 2, 3 threads."""
    act = parse_activation("erf")
    X, W1, W2, G = make_case(DET_SHAPE, dtype, act)
    a1, lr = DET_SHAPE[4], DET_SHAPE[5]
    ref = reference.step(X, W1.copy(), W2.copy(), G, lr, act, a1, True)
    results = []
    for n in (1, 2, 3):
        _cpu.set_num_threads(n)
        assert _cpu.get_num_threads() == n
        A1, A2 = W1.copy(), W2.copy()
        H_next, q1, q2 = _cpu.step(X, A1, A2, G, lr, act.code, act.gamma, a1, True)
        assert rel_err(H_next, ref.H_next) <= TOL[dtype]
        results.append(
            (
                _cpu.forward(X, W1, W2, act.code, act.gamma, a1),
                _cpu.gram(X, W1, None, None, act.code, act.gamma, a1),
                _cpu.gram(X, W1, W2, G, act.code, act.gamma, a1),
                A1,
                A2,
                q1,
                q2,
                H_next,
            )
        )
    for res in results[1:]:
        for a, b in zip(res, results[0]):
            assert np.array_equal(a, b)


def test_concurrent_calls_from_python_threads():
    """Calls running at the same time (the GIL is released) share no buffers: each gives the serial result."""
    act = parse_activation("softplus")
    cases = [make_case((40, 4, 600, 2, 1.0, 0.1), np.float64, act, seed=s) for s in range(4)]
    serial = [_cpu.forward(X, W1, W2, act.code, 0.0, 1.0) for X, W1, W2, _ in cases]
    serial_g = [_cpu.gram(X, W1, W2, G, act.code, 0.0, 1.0) for X, W1, W2, G in cases]
    out = [None] * len(cases)
    errors = []

    def work(i):
        try:
            X, W1, W2, G = cases[i]
            res = []
            for _ in range(3):
                res.append((_cpu.forward(X, W1, W2, act.code, 0.0, 1.0), _cpu.gram(X, W1, W2, G, act.code, 0.0, 1.0)))
            out[i] = res
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, res in enumerate(out):
        for H, K in res:
            assert np.array_equal(H, serial[i]) and np.array_equal(K, serial_g[i])


# ------------------------------------------------------------------------------------------- instruction sets
# A shape with several full register tiles in every direction, two groups of blocks and two row chunks, plus edges.
ISA_SHAPES = [SHAPES[4], SHAPES[7], SHAPES[8], (260, 16, 1100, 70, 0.8, 0.01)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("spec", ACTIVATIONS)
def test_every_isa_matches_reference(isa, spec, dtype):
    act = parse_activation(spec)
    tol = TOL[dtype]
    for shape in ISA_SHAPES:
        X, W1, W2, G = make_case(shape, dtype, act)
        a1, lr = shape[4], shape[5]
        H = _cpu.forward(X, W1, W2, act.code, act.gamma, a1)
        assert rel_err(H, reference.forward(X, W1, W2, act, a1)) <= tol, shape
        R1, R2 = W1.copy(), W2.copy()
        ref = reference.step(X, R1, R2, G, lr, act, a1, True)
        Hn, q1, q2 = _cpu.step(X, W1, W2, G, lr, act.code, act.gamma, a1, True)
        assert rel_err(W1, R1) <= tol and rel_err(W2, R2) <= tol, shape
        assert rel_err(Hn, ref.H_next) <= tol, shape
        assert abs(q1 - ref.grad_sq_w1) <= tol * ref.grad_sq_w1 and abs(q2 - ref.grad_sq_w2) <= tol * ref.grad_sq_w2


@pytest.mark.skipif(not {"avx2", "avx512"} <= set(ISAS), reason="needs a CPU with both AVX2 and AVX-512")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
def test_avx2_and_avx512_kernels_give_the_same_bits(dtype):
    """One FMA chain per element in the same order whatever the vector width (csrc/cpu/tile_ops.h)."""
    shape = ISA_SHAPES[-1]
    z = np.random.default_rng(5).standard_normal(10_000).astype(dtype) * 30
    try:
        for spec in ACTIVATIONS:
            act = parse_activation(spec)
            X, W1, W2, G = make_case(shape, dtype, act)
            outs = []
            for name in ("avx2", "avx512"):
                _cpu.set_isa(name)
                A1, A2 = W1.copy(), W2.copy()
                Hn, q1, q2 = _cpu.step(X, A1, A2, G, shape[5], act.code, act.gamma, shape[4], True)
                outs.append((_cpu.forward(X, W1, W2, act.code, act.gamma, shape[4]), A1, A2, Hn, q1, q2,
                             *_cpu.activation(z, act.code, act.gamma)))
            for a, b in zip(*outs):
                assert np.array_equal(a, b), spec
    finally:
        _cpu.set_isa("auto")


def _activation_points(dtype):
    if dtype == np.float32:  # every 997th float up to 110 in magnitude (the denormal range included), both signs
        x = np.arange(0, 0x42DC0000, 997, dtype=np.uint32).view(np.float32)
    else:
        rng = np.random.default_rng(7)
        x = np.concatenate([rng.uniform(0, 40, 1_000_000), rng.uniform(0, 750, 200_000),
                            np.abs(rng.standard_normal(100_000)) * 1e-4])
    return np.concatenate([x, -x]).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("spec", ["smooth_leaky_relu(0.2)", "softplus", "relu", "leaky_relu(0.1)", "identity"])
def test_vectorized_activations_are_accurate(isa, spec, dtype):
    """The kernels' own exp/log1p (csrc/cpu/vec_math.h) against float64 NumPy (float32) or within a few ulp (float64).

    Error bound: 4 ulp of the value, plus 4 ulp of (1 - gamma) ln 2 for smooth_leaky_relu (its definition subtracts
    ln 2 from softplus: cancellation near 0 whatever the math library), plus 4 denormal steps."""
    act = parse_activation(spec)
    x = _activation_points(dtype)
    S, D = _cpu.activation(x, act.code, act.gamma)
    assert S.dtype == dtype and D.dtype == dtype and S.shape == x.shape
    s64, d64 = act.sigma(x.astype(np.float64)), act.dsigma(x.astype(np.float64))
    fi = np.finfo(dtype)
    shift = (1 - act.gamma) * np.log(2.0) if act.name == "smooth_leaky_relu" else 0.0
    for got, want, c in ((S, s64, shift), (D, d64, 0.0)):
        bound = 4 * float(fi.eps) * (np.abs(want) + c) + 4 * float(fi.smallest_subnormal)
        err = np.abs(got.astype(np.float64) - want)
        assert (err <= bound).all(), (x[np.argmax(err / bound)], (err / bound).max())


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("spec", ACTIVATIONS)
def test_raw_activation_any_shape_and_threads(spec, dtype, restore_threads):
    """pyrgd._cpu.activation: the NumPy formulas' values (within a few ulp), any shape (empty included), value or
    derivative alone (the other None), the same bits for 1 and 3 threads; a non-contiguous input is refused."""
    from pyrgd.activations import sigma_and_derivative as numpy_version

    act = parse_activation(spec)
    x = np.random.default_rng(3).standard_normal((37, 5, 301)).astype(dtype) * 5
    s64, d64 = numpy_version(act, x.astype(np.float64))
    outs = []
    for n in (1, 3):
        cpu.set_num_threads(n)
        outs.append(_cpu.activation(x, act.code, act.gamma))
    (S, D), (S3, D3) = outs
    assert np.array_equal(S, S3) and np.array_equal(D, D3)
    for got, want in ((S, s64), (D, d64)):
        assert got.dtype == dtype and got.shape == x.shape and got.flags.c_contiguous
        tol = 1e-5 if spec == "erf" and dtype == np.float32 else 64 * float(np.finfo(dtype).eps)
        assert np.allclose(got, want, rtol=tol, atol=tol), spec
    s_only, none = _cpu.activation(x, act.code, act.gamma, True, False)
    none2, d_only = _cpu.activation(x, act.code, act.gamma, False, True)
    assert none is None and none2 is None
    assert np.array_equal(s_only, S) and np.array_equal(d_only, D)
    Se, De = _cpu.activation(np.zeros((0, 3), dtype), act.code, act.gamma)
    assert Se.shape == (0, 3) and De.shape == (0, 3)
    with pytest.raises(ValueError, match="Z: expected a C-contiguous"):
        _cpu.activation(x.T, act.code, act.gamma)


@pytest.mark.parametrize("spec", ["smooth_leaky_relu(0.2)", "softplus"])
def test_activation_bits_do_not_depend_on_position(isa, spec):
    """float32 softplus / smooth leaky ReLU run kActVecs vectors side by side (tile_impl.inc, vec_act_loop) and the
    last count % (kActVecs x width) elements through the plain loop: every element must get the same bits wherever
    it falls (start and length of the array swept over both parts), value, derivative and both together."""
    act = parse_activation(spec)
    x = (np.random.default_rng(11).standard_normal(700) * 6).astype(np.float32)
    x[::37] = 0.0
    S, D = _cpu.activation(x, act.code, act.gamma)
    for start in (0, 1, 5, 16, 63):
        for length in (1, 7, 15, 16, 17, 31, 63, 64, 65, 127, 130, 257):
            sl = slice(start, start + length)
            s, d = _cpu.activation(np.ascontiguousarray(x[sl]), act.code, act.gamma)
            assert s.tobytes() == S[sl].tobytes() and d.tobytes() == D[sl].tobytes(), (start, length)
            v, _ = _cpu.activation(np.ascontiguousarray(x[sl]), act.code, act.gamma, True, False)
            assert v.tobytes() == S[sl].tobytes(), (start, length)


def test_isa_selection(isa):
    assert _cpu.get_isa() == isa and cpu.build_info()["isa"] == isa
    assert ISAS[0] == "generic" and isa in ISAS
    for bad in ("sse9", "AVX2", ""):
        with pytest.raises(ValueError, match="isa"):
            _cpu.set_isa(bad)
    assert _cpu.get_isa() == isa  # unchanged by the failed calls
    unavailable = [n for n in ("avx2", "avx512") if n not in ISAS]
    for name in unavailable:
        with pytest.raises(ValueError, match="not available"):
            _cpu.set_isa(name)


def test_wrapper_isa_functions(isa):
    assert cpu.get_isa() == isa and cpu.available_isas() == ISAS
    with pytest.raises(PyrgdError, match="isa"):
        cpu.set_isa("sse9")
    cpu.set_isa("auto")
    assert cpu.get_isa() == ISAS[-1]


def test_blas_single_thread_limits_and_restores():
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    with cpu.blas_single_thread():
        assert all(n == 1 for n in blas_threads())
        a = np.ones((64, 64))
        assert (a @ a)[0, 0] == 64.0
    assert blas_threads() == before


def test_blas_single_thread_without_threadpoolctl(monkeypatch):
    monkeypatch.setattr(cpu, "_blas_controller", None)
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import fails
    with cpu.blas_single_thread():
        pass


def test_isa_from_environment():
    """PYRGD_CPU_ISA chooses the kernels at import (capped at what the CPU has)."""
    import pyrgd

    root = os.path.dirname(os.path.dirname(os.path.abspath(pyrgd.__file__)))
    for want in ("generic", ISAS[-1]):
        env = dict(os.environ, PYRGD_CPU_ISA=want, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        p = subprocess.run([sys.executable, "-c", "import pyrgd._cpu as c; print(c.get_isa())"], capture_output=True,
                           text=True, env=env, timeout=60, cwd=tempfile.gettempdir())
        assert p.returncode == 0, p.stderr[-2000:]
        assert p.stdout.split() == [want]


# ---------------------------------------------------------------------------------------------- large inputs
@pytest.mark.parametrize("spec", SMOOTH)
def test_large_preactivations_stay_finite_float32(spec):
    act = parse_activation(spec)
    X, W1, W2, G = make_case((16, 3, 80, 2, 1.0, 0.0), np.float32, act, seed=3)
    X = np.ascontiguousarray(X * np.float32(400.0))
    Z = X.astype(np.float64) @ W1
    assert np.abs(Z).max() > 100 and np.abs(Z).min() < 100  # both regimes present
    H = ops.wide_forward(X, W1, W2, activation=act, backend="cpu")
    K = ops.wide_gram(X, W1, activation=act, backend="cpu")
    KB = ops.wide_gram(X, W1, activation=act, W2=W2, B2=G, backend="cpu")
    assert rel_err(H, reference.forward(X, W1, W2, act, 1.0)) <= 1e-5
    assert rel_err(K, reference.gram(X, W1, act, 1.0)) <= 1e-5
    assert rel_err(KB, reference.gram(X, W1, act, 1.0, W2=W2, B2=G)) <= 1e-5
    R1, R2 = W1.copy(), W2.copy()
    ref = reference.step(X, R1, R2, G, 1e-6, act, 1.0, True)
    res = ops.wide_step(X, W1, W2, G, 1e-6, activation=act, next_forward=True, backend="cpu")
    for a in (H, K, KB, W1, W2, res.H_next):
        assert np.isfinite(a).all()
    assert np.isfinite(res.grad_sq_w1) and np.isfinite(res.grad_sq_w2)
    assert rel_err(res.H_next, ref.H_next) <= 1e-5
    assert rel_err(W1, R1) <= 1e-5 and rel_err(W2, R2) <= 1e-5


# ------------------------------------------------------------------------------------------------- bad input
def _good(dtype=np.float64):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((5, 3)).astype(dtype)
    W1 = rng.standard_normal((3, 40)).astype(dtype)
    W2 = rng.standard_normal((40, 2)).astype(dtype)
    G = rng.standard_normal((5, 2)).astype(dtype)
    return X, W1, W2, G


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _bad_cases():
    X, W1, W2, G = _good()
    f32 = _good(np.float32)
    swapped = W1.astype(W1.dtype.newbyteorder(">" if sys.byteorder == "little" else "<"))
    big = np.zeros(3 * 40 + 40 * 2)
    shared1, shared2 = big[:120].reshape(3, 40), big[100:180].reshape(40, 2)  # 20 elements in common
    xw = np.zeros(3 * 40 + 5)
    overlap_w1, overlap_x = xw[:120].reshape(3, 40), xw[110:].reshape(5, 3)
    # (id, function, args, exception, text the message must contain)
    return [
        ("X-list", "forward", (X.tolist(), W1, W2, 0), TypeError, "X"),
        ("X-int", "forward", (X.astype(np.int64), W1, W2, 0), TypeError, "X"),
        ("X-float16", "forward", (X.astype(np.float16), W1, W2, 0), TypeError, "X"),
        ("X-complex", "forward", (X.astype(np.complex128), W1, W2, 0), TypeError, "X"),
        ("W1-mixed-dtype", "forward", (X, f32[1], W2, 0), TypeError, "W1"),
        ("W2-mixed-dtype", "step", (X, W1.copy(), f32[2].copy(), G, 0.1, 0), TypeError, "W2"),
        ("G-mixed-dtype", "step", (X, W1.copy(), W2.copy(), f32[3], 0.1, 0), TypeError, "G"),
        ("B2-mixed-dtype", "gram", (X, W1, W2, f32[3], 0), TypeError, "B2"),
        ("W1-byteswapped", "forward", (X, swapped, W2, 0), TypeError, "W1"),
        ("X-1d", "forward", (X[0], W1, W2, 0), ValueError, "X"),
        ("X-3d", "forward", (X[None], W1, W2, 0), ValueError, "X"),
        ("W2-1d", "forward", (X, W1, W2[:, 0], 0), ValueError, "W2"),
        ("W1-rows", "forward", (X, W1[:2].copy(), W2, 0), ValueError, "W1"),
        ("W2-rows", "forward", (X, W1, W2[:39].copy(), 0), ValueError, "W2"),
        ("G-rows", "step", (X, W1.copy(), W2.copy(), G[:4].copy(), 0.1, 0), ValueError, "G"),
        ("G-cols", "step", (X, W1.copy(), W2.copy(), np.zeros((5, 3)), 0.1, 0), ValueError, "G"),
        ("B2-shape", "gram", (X, W1, W2, np.zeros((4, 2)), 0), ValueError, "B2"),
        ("X-empty", "forward", (np.zeros((0, 3)), W1, W2, 0), ValueError, "X"),
        ("W1-empty", "forward", (X, np.zeros((3, 0)), np.zeros((0, 2)), 0), ValueError, "W1"),
        ("X-noncontig", "forward", (np.asfortranarray(X), W1, W2, 0), ValueError, "X"),
        ("W1-noncontig", "step", (X, np.asfortranarray(W1), W2.copy(), G, 0.1, 0), ValueError, "W1"),
        ("W2-strided", "step", (X, W1.copy(), np.zeros((40, 4))[:, ::2], G, 0.1, 0), ValueError, "W2"),
        ("W1-readonly", "step", (X, _readonly(W1), W2.copy(), G, 0.1, 0), ValueError, "W1"),
        ("W2-readonly", "step", (X, W1.copy(), _readonly(W2), G, 0.1, 0), ValueError, "W2"),
        ("W1-W2-shared", "step", (X, shared1, shared2, G, 0.1, 0), ValueError, "W1, W2"),
        ("X-overlaps-W1", "step", (overlap_x, overlap_w1, W2.copy(), G, 0.1, 0), ValueError, "W1"),
        ("act-code-unknown", "step", (X, W1.copy(), W2.copy(), G, 0.1, 99), ValueError, "act_code"),
        ("act-code-negative", "forward", (X, W1, W2, -1), ValueError, "act_code"),
        ("act-code-too-big", "gram", (X, W1, None, None, len(ACTIVATION_CODES)), ValueError, "act_code"),
        ("lr-nan", "step", (X, W1.copy(), W2.copy(), G, float("nan"), 0), ValueError, "lr"),
        ("a1-inf", "forward", (X, W1, W2, 0, 0.0, float("inf")), ValueError, "a1"),
        ("gram-W2-without-B2", "gram", (X, W1, W2, None, 0), ValueError, "B2"),
        ("W2-not-array", "forward", (X, W1, None, 0), TypeError, "W2"),
    ]


BAD = _bad_cases()


@pytest.mark.parametrize("fn, args, exc, text", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_raw_module_rejects_bad_input(fn, args, exc, text):
    before = [a.copy() if isinstance(a, np.ndarray) else None for a in args]
    with pytest.raises(exc, match=text):
        getattr(_cpu, fn)(*args)
    for a, b in zip(args, before):  # nothing was written before the check failed
        if b is not None:
            assert np.array_equal(a, b, equal_nan=True)


def test_raw_module_rejects_shared_memory_between_G_and_W2():
    X, W1, W2, _ = _good()
    with pytest.raises(ValueError, match="G, W2"):
        _cpu.step(X, W1, W2, W2[:5], 0.1, 0)


def test_thread_setting_is_checked(restore_threads):
    for bad in (-1, 10**6):
        with pytest.raises(ValueError, match="n"):
            _cpu.set_num_threads(bad)
    with pytest.raises(PyrgdError):
        cpu.set_num_threads(-2)
    cpu.set_num_threads(2)
    assert cpu.get_num_threads() == 2 and _cpu.get_num_threads() == 2
    cpu.set_num_threads(0)
    assert cpu.get_num_threads() >= 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
def test_a_forked_child_runs_the_kernels_on_one_thread(restore_threads):
    """OpenMP's threads do not survive fork(): after the parent ran a 2-thread region, a child's parallel region
    would wait for them forever (multiprocessing's default start method on Linux). The child runs on one thread and
    gets the parent's bits (they do not depend on the thread count)."""
    rng = np.random.default_rng(3)
    X, W1, W2 = rng.standard_normal((3000, 4)), rng.standard_normal((4, 500)), rng.standard_normal((500, 2))
    _cpu.set_num_threads(2)
    H = _cpu.forward(X, W1, W2, 0)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report (threads, same bits) through the pipe, never return into pytest
        try:
            same = np.array_equal(_cpu.forward(X, W1, W2, 0), H)
            os.write(write, f"{_cpu.get_num_threads()} {same}".encode())
        finally:
            os._exit(0)
    os.close(write)
    deadline = time.monotonic() + 60
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung in its first kernel call")
        time.sleep(0.05)
    with os.fdopen(read) as f:
        assert f.read() == "1 True"
    assert _cpu.get_num_threads() == 2  # the parent keeps its setting


def test_wrapper_reports_extension_errors_as_pyrgd_errors():
    X, W1, W2, G = _good()
    act = parse_activation("relu")
    with pytest.raises(PyrgdError, match="W1, W2"):
        big = np.zeros(3 * 40 + 40 * 2)
        cpu.step(X, big[:120].reshape(3, 40), big[119:199].reshape(40, 2), G, 0.1, act, 1.0, False)


def test_ops_rejects_bad_input_before_the_backend():
    X, W1, W2, G = _good()
    with pytest.raises(PyrgdError, match="W1"):
        ops.wide_step(X, np.asfortranarray(W1), W2, G, 0.1, backend="cpu")
    with pytest.raises(PyrgdError, match="W1"):
        ops.wide_forward(X, W1.astype(np.float32), W2, backend="cpu")
    # A non-contiguous X is copied by ops (it is only read) and gives the same result.
    H = ops.wide_forward(np.asfortranarray(X), W1, W2, activation="tanh", backend="cpu")
    assert np.array_equal(H, ops.wide_forward(X, W1, W2, activation="tanh", backend="cpu"))


# -------------------------------------------------------------------------------------------- module metadata
def test_available_and_build_info():
    ok, why = cpu.available()
    assert ok and "pyrgd._cpu" in why
    info = cpu.build_info()
    for key in ("compiler", "openmp", "max_threads", "block_size", "march", "fast_math", "isa", "isa_available"):
        assert key in info
    assert info["block_size"] == BLOCK and info["max_threads"] >= 1 and isinstance(info["openmp"], bool)
    assert info["fast_math"] is False
    assert cpu.name == "cpu"


# ---------------------------------------------------------------------------------------- no N x n1 allocation
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and RLIMIT_AS")
def test_no_n_by_n1_allocation():
    """Under an address-space limit (+100 MiB) far below one N x n1 float64 matrix (256 MiB), all kernels still run.

    (The NumPy reference backend fails this check with MemoryError.)"""
    code = textwrap.dedent(
        """
        import resource, numpy as np, pyrgd._cpu as c
        N, d, n1, n2 = 16, 1, 1 << 21, 1
        rng = np.random.default_rng(0)
        X = rng.standard_normal((N, d)); W1 = rng.standard_normal((d, n1)); W2 = rng.standard_normal((n1, n2)) * 1e-3
        G = rng.standard_normal((N, n2))
        c.step(X[:2], W1[:, :64].copy(), W2[:64].copy(), G[:2], 0.1, 0, 0.0, 1.0, True)  # start the OpenMP threads
        c.gram(X[:2], W1[:, :64], W2[:64], G[:2], 0)
        c.network_grad(X[:2], G[:2], [W1[:, :64].copy(), W2[:64].copy()], 0, 0.0, [1.0])
        grads = [np.empty_like(W1), np.empty_like(W2)]
        vm = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmSize')][0] * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (100 << 20), resource.RLIM_INFINITY))
        try:
            np.empty((N, n1))  # the limit bites: one N x n1 matrix does not fit
            print('LIMIT-NOT-EFFECTIVE')
        except MemoryError:
            pass
        H = c.forward(X, W1, W2, 0)
        Hn, q1, q2 = c.step(X, W1, W2, G, 1e-3, 0, 0.0, 1.0, True)
        K = c.gram(X, W1, W2, G, 0)
        assert np.isfinite(H).all() and np.isfinite(Hn).all() and np.isfinite(K).all() and q1 > 0
        del K
        # the one-pass gradient: a panel of 1 row here (n1 is so wide), W2^T and the gradients (given up front)
        loss, g, sq = c.network_grad(X, G, [W1, W2], 0, 0.0, [1.0], grads)
        assert np.isfinite(loss) and sq[0] > 0 and g[0] is grads[0]
        # every neuron recomputed: Z_2 and G of all N rows besides (N x n2 each)
        loss0, g, sq0 = c.network_grad(X, G, [W1, W2], 0, 0.0, [1.0], grads, 0, 0)
        assert abs(loss0 - loss) <= 1e-9 * loss and abs(sq0[0] - sq[0]) <= 1e-9 * sq[0]
        print('OK')
        """
    )
    env = dict(os.environ, OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="1")
    import pyrgd

    # the folder holding the pyrgd under test (installed, or the source tree with an in-place build)
    root = os.path.dirname(os.path.dirname(os.path.abspath(pyrgd.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                       cwd=tempfile.gettempdir())
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == ["OK"], p.stdout


# ------------------------------------------------------------------------------------------------ the tail kernel
# (N, tail widths [n2, ..., nL], multipliers a_2..a_{L-1}): L = 2 (no tail weight), 3, 4, 5; N = 1, below, at and
# above one chunk (256 rows), and so large that the groups hold several chunks (N > 64 * 256); widths not multiples
# of the register tiles, n_L = 1.
TAIL_CASES = [
    (1, [3], []),
    (7, [5, 1], [0.8]),
    (64, [33, 9], [1.0]),
    (130, [40, 17, 3], [0.6, 1.7]),
    (1000, [12, 8, 5, 1], [1.0, 0.5, 2.0]),
    (4200, [19, 6], [1.2]),
    (17000, [7, 3], [1.1]),
]


def _tail_case(N, widths, dtype, seed=0):
    rng = np.random.default_rng(seed)
    H = rng.standard_normal((N, widths[0])).astype(dtype)
    Y = rng.standard_normal((N, widths[-1])).astype(dtype)
    Wt = [(rng.standard_normal((p, q)) / np.sqrt(p)).astype(dtype) for p, q in zip(widths, widths[1:])]
    return H, Y, Wt


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("spec", ACTIVATIONS)
@pytest.mark.parametrize("case", TAIL_CASES, ids=lambda c: f"N{c[0]}-L{len(c[1]) + 1}")
def test_tail_matches_numpy_tail(case, spec, dtype, isa):
    """pyrgd.backends.cpu.tail (one streamed C++ pass) against pyrgd.tail's NumPy forward/backward: loss, G and
    every tail gradient, relative error <= 1e-12 (float64) / 1e-5 (float32)."""
    from pyrgd.tail import tail_backward, tail_forward

    N, widths, tail_mult = case
    act = parse_activation(spec)
    H, Y, Wt = _tail_case(N, widths, dtype)
    W = [None, None] + Wt
    mult = [1.0] + tail_mult
    loss_ref, G_ref, grads_ref = tail_backward(tail_forward(H, W, act, mult), Y, W, act, mult)
    loss, G, grads = cpu.tail(H, Y, Wt, act, tail_mult)
    assert isinstance(loss, float) and G.dtype == dtype and G.shape == H.shape
    assert abs(loss - float(loss_ref)) <= TOL[dtype] * float(loss_ref)
    assert rel_err(G, G_ref) <= TOL[dtype]
    assert len(grads) == len(grads_ref)
    for g, gr in zip(grads, grads_ref):
        assert g.dtype == dtype and g.shape == gr.shape and rel_err(g, gr) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
def test_tail_is_thread_count_independent_and_writes_out(dtype, restore_threads):
    """The same bits for 1, 2 and 3 threads; `out` receives G (and nothing else is changed)."""
    act = parse_activation("smooth_leaky_relu(0.2)")
    H, Y, Wt = _tail_case(20000, [21, 7, 2], dtype, seed=4)
    Hc, Wc = H.copy(), [w.copy() for w in Wt]
    outs = []
    for n in (1, 2, 3):
        cpu.set_num_threads(n)
        outs.append(cpu.tail(H, Y, Wt, act, [0.9, 1.1]))
    for loss, G, grads in outs[1:]:
        assert loss == outs[0][0] and np.array_equal(G, outs[0][1])
        assert all(np.array_equal(a, b) for a, b in zip(grads, outs[0][2]))
    out = np.full_like(H, np.nan)
    loss, G, _ = cpu.tail(H, Y, Wt, act, [0.9, 1.1], out=out)
    assert G is out and np.array_equal(out, outs[0][1]) and loss == outs[0][0]
    assert np.array_equal(H, Hc) and all(np.array_equal(a, b) for a, b in zip(Wt, Wc))


def test_tail_rejects_bad_input():
    """Every argument of the raw tail kernel is checked, and the error names it; nothing is written on failure."""
    act = parse_activation("tanh")
    H, Y, Wt = _tail_case(20, [6, 4, 2], np.float64)
    out = np.zeros_like(H)
    m = [1.0, 1.0]
    bad = [
        (dict(H=H.astype(np.float32)), TypeError, "weights\\[0\\].*float32"),
        (dict(H=np.ascontiguousarray(H[:, :5])), ValueError, "weights\\[0\\] \\(W_3\\): expected shape"),
        (dict(H=np.asfortranarray(H)), ValueError, "H: expected a C-contiguous"),
        (dict(H=H[0]), ValueError, "H: expected a 2-D"),
        (dict(Y=Y[:19]), ValueError, "Y: expected shape"),
        (dict(Y=Y[:, :1]), ValueError, "Y: expected shape"),
        (dict(W=[Wt[0]]), ValueError, "multipliers: expected one per tail weight"),
        (dict(W=[Wt[0], Wt[0]]), ValueError, "weights\\[1\\] \\(W_4\\): expected shape"),
        (dict(W=Wt[0]), ValueError, "."),  # a 2-D array is a sequence of 1-D rows: rejected by the checks
        (dict(W="W"), TypeError, "weights: expected a list"),
        (dict(m=[1.0, float("nan")]), ValueError, "multipliers\\[1\\]: expected a finite"),
        (dict(m=[1.0, "x"]), TypeError, "multipliers\\[1\\]: expected a float"),
        (dict(out=np.zeros((20, 5))), ValueError, "out: expected shape"),
        (dict(out=H), ValueError, "out, H: must not share memory"),
        (dict(out=np.zeros((20, 6), np.float32)), TypeError, "out: expected dtype float64"),
        (dict(act_code=99), ValueError, "act_code"),
    ]
    for over, exc, text in bad:
        args = dict(H=H, Y=Y, W=Wt, m=m, out=out, act_code=act.code)
        args.update(over)
        before = out.copy()
        with pytest.raises(exc, match=text):
            _cpu.tail(args["H"], args["Y"], args["W"], args["act_code"], 0.0, args["m"], args["out"])
        assert np.array_equal(out, before)
    with pytest.raises(PyrgdError, match="Y: expected shape"):  # the wrapper turns them into PyrgdError
        cpu.tail(H, Y[:3], Wt, act, m)


def test_wide_step_out_argument():
    """ops.wide_step(out=...): H_next lands in `out` (which may be G) with the bits of the plain call, on the cpu
    and the reference backend; bad `out` is rejected with a message that names it."""
    rng = np.random.default_rng(2)
    X, W1, W2 = rng.standard_normal((30, 5)), rng.standard_normal((5, 70)) / 3, rng.standard_normal((70, 4)) / 9
    G = rng.standard_normal((30, 4))
    for backend in ("cpu", "reference"):
        a1, a2 = W1.copy(), W2.copy()
        ref = ops.wide_step(X, a1, a2, G, 0.01, activation="tanh", next_forward=True, backend=backend)
        b1, b2, Gc = W1.copy(), W2.copy(), G.copy()
        res = ops.wide_step(X, b1, b2, Gc, 0.01, activation="tanh", next_forward=True, backend=backend, out=Gc)
        assert res.H_next is Gc and np.array_equal(Gc, ref.H_next), backend
        assert np.array_equal(b1, a1) and np.array_equal(b2, a2)
    c1, c2 = W1.copy(), W2.copy()
    for out, text in ((np.zeros((30, 3)), "out: expected shape"), (np.zeros((30, 4), np.float32), "out: expected dtype"),
                      (np.asfortranarray(np.zeros((30, 4))), "out: is updated in place but is not C-contiguous"),
                      (X[:, :4], "out: is updated in place but is not C-contiguous"),
                      (c2.reshape(-1)[:120].reshape(30, 4), "out, W2: must not share memory")):
        with pytest.raises(PyrgdError, match=text):
            ops.wide_step(X, c1, c2, G, 0.01, activation="tanh", next_forward=True, out=out)
    with pytest.raises(PyrgdError, match="out: only with next_forward"):
        ops.wide_step(X, c1, c2, G, 0.01, activation="tanh", out=np.zeros((30, 4)))
    assert np.array_equal(c1, W1) and np.array_equal(c2, W2)


def test_random_bad_input_never_crashes_the_extension():
    """Fuzzing the raw module: 4000 calls of forward, step, gram, tail, activation, network_grad and sgd_update,
    half with every argument
    drawn from a pool of wrong and right things (arrays of every dtype, shape, order, byte order and writeability,
    views that overlap, None, lists, strings, non-finite and huge numbers), half valid calls with one argument so
    replaced (or none). In a subprocess, so that a crash fails this test
    instead of killing the run: every call either returns or raises TypeError / ValueError / OverflowError."""
    code = textwrap.dedent(
        """
        import numpy as np, pyrgd._cpu as c
        rng = np.random.default_rng(12345)
        def arr():
            k = rng.integers(8)
            shape = tuple(int(s) for s in rng.integers(0, 5, size=int(rng.integers(0, 4))))
            dt = [np.float64, np.float32, np.float16, np.int32, np.complex64, np.float64, np.float32, ">f8"][k]
            a = (rng.standard_normal(shape) * 2).astype(dt) if shape else np.array(1.5, dtype=dt)
            r = rng.random()
            if r < 0.1 and a.ndim == 2:
                a = np.asfortranarray(a)
            elif r < 0.2 and a.ndim >= 1 and a.shape[0] > 1:
                a = a[::2]
            elif r < 0.3:
                a.setflags(write=False)
            elif r < 0.35 and a.size and a.dtype.kind in "fc":
                a[...] = np.nan
            return a
        big = np.zeros(64)
        def pick():
            r = rng.random()
            if r < 0.55:
                return arr()
            if r < 0.65:
                s = int(rng.integers(0, 30)); return big[s:s + 16].reshape(4, 4)   # overlapping views
            return [None, [[1.0, 2.0]], "X", 0, -1, 3, 2**40, float("nan"), float("inf"), 1e308, (1, 2),
                    [np.zeros((2, 2))], {"a": 1}][int(rng.integers(13))]
        def valid(name):
            N, d, n1, n2 = (int(v) for v in rng.integers(1, 9, size=4))
            t = [np.float64, np.float32][int(rng.integers(2))]
            X, W1, W2, G = (rng.standard_normal(s).astype(t) for s in ((N, d), (d, n1), (n1, n2), (N, n2)))
            act = int(rng.integers(0, 7))
            if name == "forward":
                return [X, W1, W2, act, 0.1, 1.0]
            if name == "step":
                return [X, W1, W2, G, 1e-3, act, 0.1, 1.0, bool(rng.integers(2)), None]
            if name == "gram":
                return [X, W1, W2, G, act, 0.1, 1.0]
            if name == "tail":
                Wt = [rng.standard_normal((n2, 3)).astype(t), rng.standard_normal((3, 2)).astype(t)]
                return [G, rng.standard_normal((N, 2)).astype(t), Wt, act, 0.1, [1.0, 0.5], None]
            if name == "network_grad":
                W = [W1, W2, rng.standard_normal((n2, 2)).astype(t)]
                grads = [np.zeros_like(w) for w in W] if rng.random() < 0.5 else None
                return [X, rng.standard_normal((N, 2)).astype(t), W, act, 0.1, [1.0, 0.5], grads,
                        int(rng.integers(0, 5)), int(rng.integers(-1, n1 + 1))]
            if name == "sgd_update":
                return [[W1, W2], [np.ones_like(W1), np.ones_like(W2)], 1e-3]
            return [X, act, 0.1, True, bool(rng.integers(2))]
        fns = [(c.forward, 4, 7), (c.step, 6, 10), (c.gram, 2, 7), (c.tail, 4, 7), (c.activation, 2, 5),
               (c.network_grad, 4, 9), (c.sgd_update, 3, 3)]
        names = ["forward", "step", "gram", "tail", "activation", "network_grad", "sgd_update"]
        ok = bad = 0
        for i in range(4000):
            j = int(rng.integers(len(fns)))
            fn, lo, hi = fns[j]
            if i % 2:
                args = [pick() for _ in range(int(rng.integers(lo, hi + 1)))]
            else:  # a valid call with one argument (or none) replaced
                args = valid(names[j])
                if rng.random() < 0.8:
                    args[int(rng.integers(len(args)))] = pick()
            try:
                fn(*args)
                ok += 1
            except (TypeError, ValueError, OverflowError):
                bad += 1
        print("DONE", ok, bad)
        """
    )
    env = dict(os.environ, OMP_NUM_THREADS="2")
    import pyrgd

    root = os.path.dirname(os.path.dirname(os.path.abspath(pyrgd.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                       cwd=tempfile.gettempdir())
    assert p.returncode == 0, (p.returncode, p.stderr[-3000:])
    out = p.stdout.split()
    assert out[0] == "DONE" and int(out[1]) + int(out[2]) == 4000, p.stdout
    assert int(out[1]) >= 300, p.stdout  # the valid calls ran: the checks were passed as well as failed
