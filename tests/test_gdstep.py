"""pyrgd.gdstep: the GD step of pyrgd.train (and of the benchmark's fused candidate), its agreement across backends
and its memory: on the cpu backend a step allocates nothing of N rows (G lives in the previous H's buffer, H_next
over G)."""
import tracemalloc

import numpy as np
import pytest

from pyrgd import ops
from pyrgd.activations import parse_activation
from pyrgd.gdstep import apply_step, loss_and_gradient

pytest.importorskip("pyrgd._cpu", reason="the C++ extension pyrgd._cpu is not built")


def _problem(N, dims, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, dims[0])).astype(dtype)
    Y = rng.standard_normal((N, dims[-1])).astype(dtype)
    W = [(rng.standard_normal((a, b)) / np.sqrt(a)).astype(dtype) for a, b in zip(dims, dims[1:])]
    return X, Y, W


def _run(backend, X, Y, W, act, mult, lr, steps):
    W = [w.copy() for w in W]
    H = ops.wide_forward(X, W[0], W[1], activation=act, a1=mult[0], backend=backend)
    spare, losses, norms = None, [], []
    for _ in range(steps):
        loss, G, tg = loss_and_gradient(H, Y, W, act, mult, backend, out=spare)
        H_next, sq = apply_step(X, W, G, tg, lr, act, mult, backend)
        spare, H = H, H_next
        losses.append(loss)
        norms.append(sq)
    return losses, norms, W


@pytest.mark.parametrize("dims", [[5, 90, 3], [5, 150, 9, 5, 2]], ids=["L2", "L4"])
def test_cpu_step_matches_reference(dims):
    """20 steps with multipliers != 1: losses, gradient norms and weights agree with the reference to 1e-10."""
    X, Y, W = _problem(40, dims)
    act = parse_activation("smooth_leaky_relu(0.2)")
    mult = [0.9, 1.2, 0.7][: len(dims) - 2]
    a = _run("reference", X, Y, W, act, mult, 2e-3, 20)
    b = _run("cpu", X, Y, W, act, mult, 2e-3, 20)
    assert a[0][-1] < a[0][0]  # it trains
    assert np.allclose(a[0], b[0], rtol=1e-10, atol=0)
    assert np.allclose(a[1], b[1], rtol=1e-10, atol=0)
    assert len(b[1][0]) == len(dims) - 1
    for wa, wb in zip(a[2], b[2]):
        assert np.allclose(wa, wb, rtol=1e-10, atol=1e-13)


def test_cpu_step_allocates_nothing_of_n_rows():
    """After the first step (which creates the second N x n2 buffer) a whole GD step, tail included, allocates less
    than half of one N x n2 array (tracemalloc sees NumPy's and the extension's arrays), while a step of the
    reference backend allocates several."""
    N, dims = 20000, [4, 300, 16, 8, 1]
    X, Y, W = _problem(N, dims, seed=1)
    act = parse_activation("smooth_leaky_relu(0.2)")
    mult = [1.0, 1.0, 1.0]
    buf = N * dims[2] * 8
    for backend, bound in (("cpu", 0.5 * buf), ("reference", None)):
        Wb = [w.copy() for w in W]
        H = ops.wide_forward(X, Wb[0], Wb[1], activation=act, backend=backend)
        spare, peaks = None, []
        for _ in range(3):
            tracemalloc.start()
            loss, G, tg = loss_and_gradient(H, Y, Wb, act, mult, backend, out=spare)
            H_next, _ = apply_step(X, Wb, G, tg, 1e-6, act, mult, backend)
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
            spare, H = H, H_next
            del G
        if bound is not None:
            assert max(peaks[1:]) < bound, (backend, peaks)
            assert H is not spare and not np.shares_memory(H, spare)
        else:
            assert min(peaks) > 2 * buf, peaks  # the measurement sees N x n2 temporaries where they exist
