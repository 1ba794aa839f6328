"""The step engine (pyrgd.ops.step_engine, pyrgd.backends.engine): the GD step pyrgd.train and the benchmark's fused
candidate run. Agreement across backends and methods, the gradient call, the whole-or-nothing update, state and
resume, a sharded (allreduce) engine, argument checks, and the memory of the cpu neurons step (G lives in the
previous H's buffer, H_next over G: nothing of N rows is allocated per step)."""
import threading
import tracemalloc

import numpy as np
import pytest

from pyrgd import ops
from pyrgd.activations import parse_activation
from pyrgd.backends.engine import StepEngine
from pyrgd.errors import PyrgdError

pytest.importorskip("pyrgd._cpu", reason="the C++ extension pyrgd._cpu is not built")

ACT = parse_activation("smooth_leaky_relu(0.2)")


def _problem(N, dims, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, dims[0])).astype(dtype)
    Y = rng.standard_normal((N, dims[-1])).astype(dtype)
    W = [(rng.standard_normal((a, b)) / np.sqrt(a)).astype(dtype) for a, b in zip(dims, dims[1:])]
    return X, Y, W


def _engine(X, Y, W, backend, method="auto", mult=None, **kw):
    return ops.step_engine(X, Y, W, activation=ACT, multipliers=mult, backend=backend, method=method, **kw)


def _run(backend, method, X, Y, W, mult, lr, steps):
    W = [w.copy() for w in W]
    eng = _engine(X, Y, W, backend, method, mult)
    losses, norms = [], []
    for _ in range(steps):
        losses.append(eng.evaluate())
        norms.append(eng.update(lr))
    return losses, norms, W, eng


def _oracle_gradients(X, Y, W, act, mult):
    """The textbook backward pass with every matrix whole (float64), independent of pyrgd's tail and kernels."""
    from pyrgd.activations import sigma_and_derivative

    Zs, Fs = [], [X]
    for l, w in enumerate(W):
        Z = Fs[-1] @ w
        Zs.append(Z)
        if l < len(W) - 1:
            S, _ = sigma_and_derivative(act, Z, derivative=False)
            Fs.append(mult[l] * S)
    D = Zs[-1] - Y
    grads = [None] * len(W)
    for l in range(len(W) - 1, -1, -1):
        grads[l] = Fs[l].T @ D
        if l > 0:
            _, dS = sigma_and_derivative(act, Zs[l - 1], value=False)
            D = mult[l - 1] * (D @ W[l].T) * dS
    return grads


@pytest.mark.parametrize("dims", [[5, 90, 3], [5, 150, 9, 5, 2]], ids=["L2", "L4"])
def test_every_engine_computes_the_same_steps(dims):
    """20 steps with multipliers != 1 on the reference, cpu neurons and cpu rows engines: losses, gradient norms and
    weights agree to 1e-10; 'auto' picks rows on the cpu backend, neurons on the reference."""
    X, Y, W = _problem(40, dims)
    mult = [0.9, 1.2, 0.7][: len(dims) - 2]
    ref = _run("reference", "auto", X, Y, W, mult, 2e-3, 20)
    assert ref[3].method == "neurons" and ref[0][-1] < ref[0][0]  # it trains
    for method, expected in (("neurons", "neurons"), ("auto", "rows")):
        got = _run("cpu", method, X, Y, W, mult, 2e-3, 20)
        assert got[3].method == expected and got[3].backend == "cpu"
        assert np.allclose(ref[0], got[0], rtol=1e-10, atol=0)
        assert np.allclose(ref[1], got[1], rtol=1e-10, atol=0)
        assert len(got[1][0]) == len(dims) - 1
        for wa, wb in zip(ref[2], got[2]):
            assert np.allclose(wa, wb, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("backend,method", [("reference", "neurons"), ("cpu", "neurons"), ("cpu", "rows")])
def test_gradients_match_the_oracle_and_update_nothing(backend, method):
    """gradients() equals the textbook backward pass to 1e-11 and leaves the weights untouched; the squared norms
    that update() returns are those of these gradients."""
    X, Y, W = _problem(37, [4, 130, 6, 3, 2], seed=3)
    mult = [0.8, 1.1, 1.3]
    before = [w.copy() for w in W]
    eng = _engine(X, Y, W, backend, method, mult)
    grads = [g.copy() for g in eng.gradients()]
    want = _oracle_gradients(X, Y, before, ACT, mult)
    for g, w in zip(grads, want):
        assert np.linalg.norm(g - w) <= 1e-11 * np.linalg.norm(w)
    assert all(np.array_equal(a, b) for a, b in zip(W, before))
    eng.evaluate()
    sq = eng.update(1e-3)
    assert np.allclose(sq, [float((g * g).sum()) for g in want], rtol=1e-10)
    for w, w0, g in zip(W, before, want):
        assert np.allclose(w, w0 - 1e-3 * g, rtol=1e-10, atol=1e-14)


def test_engine_state_resumes_bit_for_bit():
    """A run of 6 steps and a run of 3 steps, state(), a fresh engine on other weights, load_state(), 3 more steps
    give the same bits (weights and losses), for both methods: the carried H goes with the state."""
    X, Y, W = _problem(50, [3, 200, 8, 1], seed=5, dtype=np.float32)
    for method in ("neurons", "rows"):
        full = _run("cpu", method, X, Y, W, None, 1e-3, 6)
        first = _run("cpu", method, X, Y, W, None, 1e-3, 3)
        st = first[3].state()
        assert st["method"] == method and len(st["weights"]) == 3
        assert ("H" in st["carry"]) == (method == "neurons")
        W2 = [np.zeros_like(w) for w in W]
        eng = _engine(X, Y, W2, "cpu", method)
        eng.load_state(st)
        losses = []
        for _ in range(3):
            losses.append(eng.evaluate())
            eng.update(1e-3)
        assert losses == full[0][3:]
        assert all(np.array_equal(a, b) for a, b in zip(W2, full[2]))


def test_load_state_rejects_a_mismatched_state():
    X, Y, W = _problem(10, [3, 20, 2])
    eng = _engine(X, Y, W, "cpu", "neurons")
    with pytest.raises(PyrgdError, match="state: expected a dict with 'weights'"):
        eng.load_state({"weights": W[:1]})
    with pytest.raises(PyrgdError, match="state: weights\\[1\\] has shape"):
        eng.load_state({"weights": [W[0], W[1][:3]]})
    with pytest.raises(PyrgdError, match="carry\\['H'\\] has shape"):
        eng.load_state({"weights": W, "carry": {"H": np.zeros((3, 2))}})


def test_update_needs_an_evaluation_first():
    X, Y, W = _problem(10, [3, 20, 2])
    for method in ("rows", "neurons"):
        eng = _engine(X, Y, [w.copy() for w in W], "cpu", method)
        assert isinstance(eng, StepEngine)
        with pytest.raises(PyrgdError, match="call evaluate\\(\\) first"):
            eng.update(0.1)
        eng.evaluate()
        eng.update(0.1)
        with pytest.raises(PyrgdError, match="call evaluate\\(\\) first"):  # one update per evaluation
            eng.update(0.1)


def test_sharded_engines_with_allreduce_match_one_engine():
    """Two neurons engines, each on half of the wide layer's neurons (columns of W_1, rows of W_2), in two threads
    whose allreduce sums through a barrier, follow the unsharded engine (to rounding) for 10 steps: the seam a
    distributed engine plugs into."""
    X, Y, W = _problem(30, [4, 64, 6, 2], seed=7)
    full = _run("cpu", "neurons", X, Y, W, [0.9, 1.1], 1e-3, 10)
    shards = [[np.ascontiguousarray(W[0][:, s]), np.ascontiguousarray(W[1][s]), W[2].copy()]
              for s in (slice(0, 32), slice(32, 64))]
    barrier = threading.Barrier(2)
    slots = [None, None]
    out = [None, None]

    def allreduce_for(rank):
        def allreduce(a):
            slots[rank] = a.copy()
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()
            a[...] = total
        return allreduce

    def run(rank):
        eng = _engine(X, Y, shards[rank], "cpu", "neurons", [0.9, 1.1], allreduce=allreduce_for(rank))
        losses, norms = [], []
        for _ in range(10):
            losses.append(eng.evaluate())
            norms.append(eng.update(1e-3))
        out[rank] = (losses, norms)

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for rank in (0, 1):
        assert np.allclose(out[rank][0], full[0], rtol=1e-12)
        assert np.allclose(out[rank][1], full[1], rtol=1e-12)
    joined = [np.hstack([shards[0][0], shards[1][0]]), np.vstack([shards[0][1], shards[1][1]]), shards[0][2]]
    for a, b in zip(joined, full[2]):
        assert np.allclose(a, b, rtol=1e-12, atol=1e-15)


def test_step_engine_checks_its_arguments():
    X, Y, W = _problem(10, [3, 20, 2])
    with pytest.raises(PyrgdError, match="method: expected one of auto, rows, neurons on backend 'cpu'"):
        _engine(X, Y, W, "cpu", "columns")
    with pytest.raises(PyrgdError, match="W: expected a list of at least two"):
        _engine(X, Y, W[:1], "cpu")
    with pytest.raises(PyrgdError, match="W: expected a list"):
        _engine(X, Y, tuple(W), "cpu")
    with pytest.raises(PyrgdError, match="W\\[0\\], W\\[1\\]: must not share memory"):
        shared = np.zeros(3 * 20)
        _engine(X, Y, [shared.reshape(3, 20), shared[20:].reshape(20, 2)], "cpu")
    with pytest.raises(PyrgdError, match="multipliers: expected L - 1 = 1"):
        _engine(X, Y, W, "cpu", mult=[1.0, 2.0])
    with pytest.raises(PyrgdError, match="allreduce: expected None or a function"):
        _engine(X, Y, W, "cpu", allreduce=3)
    with pytest.raises(PyrgdError, match="method: 'rows' cannot run sharded"):
        _engine(X, Y, W, "cpu", "rows", allreduce=lambda a: None)
    sharded = _engine(X, Y, W, "cpu", allreduce=lambda a: None)
    assert sharded.method == "neurons"
    with pytest.raises(PyrgdError, match="gradients: not available on a sharded"):
        sharded.gradients()


def test_cpu_neurons_step_allocates_nothing_of_n_rows():
    """After the first step (which creates the second N x n2 buffer) a whole neurons step on the cpu backend, tail
    included, allocates less than half of one N x n2 array (tracemalloc sees NumPy's and the extension's arrays),
    while a step of the reference backend allocates several."""
    N, dims = 20000, [4, 300, 16, 8, 1]
    X, Y, W = _problem(N, dims, seed=1)
    buf = N * dims[2] * 8
    for backend, bound in (("cpu", 0.5 * buf), ("reference", None)):
        eng = _engine(X, Y, [w.copy() for w in W], backend, "neurons", [1.0, 1.0, 1.0])
        peaks = []
        for _ in range(3):
            tracemalloc.start()
            eng.evaluate()
            eng.update(1e-6)
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        if bound is not None:
            assert max(peaks[1:]) < bound, (backend, peaks)
            assert eng._H is not eng._G and not np.shares_memory(eng._H, eng._G)
        else:
            assert min(peaks) > 2 * buf, peaks  # the measurement sees N x n2 temporaries where they exist
