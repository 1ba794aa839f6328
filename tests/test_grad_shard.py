"""One rank's share of the rows method (pyrgd.backends.cpu.network_grad_shard) and the ShardedRowsEngine built on it,
without MPI: shards of a layer run one after the other in one process, their panels' Z_2 completed from each other's
lanes, must give network_grad's bits; bad shards are refused naming the argument; a failing combine ends the call
with its own exception; the planner's per-rank figures are what the engine allocates."""
import tracemalloc

import numpy as np
import pytest

from pyrgd.activations import parse_activation
from pyrgd.errors import PyrgdError

cpu = pytest.importorskip("pyrgd.backends.cpu")
pytest.importorskip("pyrgd._cpu", reason="the C++ extension pyrgd._cpu is not built")
from pyrgd.distributed import (ShardedRowsEngine, distributed_method, rows_geometry,  # noqa: E402
                               rows_shard_bytes, shard_lanes)
from _fake_comm import FakeComm  # noqa: E402


def _problem(N=700, d=12, n1=2048 + 3 * 64 + 17, n2=7, nL=3, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, d)).astype(dtype)
    Y = rng.standard_normal((N, nL)).astype(dtype)
    W = [(rng.standard_normal((d, n1)) * 0.3).astype(dtype), (rng.standard_normal((n1, n2)) * 0.05).astype(dtype),
         (rng.standard_normal((n2, nL)) * 0.3).astype(dtype)]
    return X, Y, W


def _sharded_in_one_process(X, Y, W, act, cuts, with_sq=False):
    """network_grad_shard on the shards [cuts[i], cuts[i+1]) of the layer, in one process: a first pass records each
    shard's lanes per panel, a second pass completes Z_2 from all of them in lane order (what the ranks' chain
    does). Returns [(loss, grads, grad_sq, block_sq)] per shard."""
    N, d = X.shape
    n1, n2 = W[0].shape[1], W[1].shape[1]
    geo = rows_geometry(N, d, n1, n2, X.dtype, act)
    args = (geo["panel_rows"], geo["lane_blocks"], geo["groups"])
    shards = [[np.ascontiguousarray(W[0][:, a:b]), np.ascontiguousarray(W[1][a:b])] + W[2:]
              for a, b in zip(cuts, cuts[1:])]
    lanes = [{} for _ in shards]
    for k, w in enumerate(shards):
        def record(r0, rows, parts, f2, k=k):
            assert not parts.flags.writeable and parts.shape == (parts.shape[0], rows, n2)
            lanes[k][r0] = parts.copy()
            f2[...] = 0
        cpu.network_grad_shard(X, Y, w, act, [1.0, 1.0], *args, record)

    def complete(r0, rows, parts, f2):
        every = [p for k in range(len(shards)) for p in lanes[k][r0]]
        f2[...] = every[0]
        for p in every[1:]:
            np.add(f2, p, out=f2)
    out = []
    for w in shards:
        bsq = np.empty(2 * (-(-w[0].shape[1] // 64))) if with_sq else None
        loss, g, sq = cpu.network_grad_shard(X, Y, w, act, [1.0, 1.0], *args, complete, block_sq=bsq)
        out.append((loss, g, sq, bsq))
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act_name", ["tanh", "relu", "smooth_leaky_relu(0.2)"])
@pytest.mark.parametrize("threads", [1, 2])
def test_shards_give_the_bits_of_network_grad(dtype, act_name, threads):
    act = parse_activation(act_name)
    X, Y, W = _problem(dtype=dtype)
    n1 = W[0].shape[1]
    geo = rows_geometry(X.shape[0], X.shape[1], n1, W[1].shape[1], dtype, act)
    per_lane = geo["lane_blocks"] * 64
    cuts = [0, 5 * per_lane, 9 * per_lane, n1]  # three shards of whole lanes, the last with the partial block
    old = cpu.get_num_threads()
    cpu.set_num_threads(threads)
    try:
        loss, g, sq = cpu.network_grad(X, Y, W, act, [1.0, 1.0])
        parts = _sharded_in_one_process(X, Y, W, act, cuts, with_sq=True)
    finally:
        cpu.set_num_threads(old)
    for loss_k, g_k, sq_k, _ in parts:
        assert loss_k == loss and np.array_equal(g_k[2], g[2]) and sq_k[2:] == sq[2:]
    assert np.array_equal(np.concatenate([p[1][0] for p in parts], axis=1), g[0])
    assert np.array_equal(np.concatenate([p[1][1] for p in parts], axis=0), g[1])
    # the blocks' squared norms, summed in block order over the shards, are network_grad's norms, bit for bit
    t1 = t2 = 0.0
    for *_, bsq in parts:
        nb = bsq.size // 2
        for v in bsq[:nb]:
            t1 += float(v)
        for v in bsq[nb:]:
            t2 += float(v)
    assert (t1, t2) == (sq[0], sq[1])


def test_a_failing_combine_ends_the_call_with_its_exception():
    act = parse_activation("tanh")
    X, Y, W = _problem(N=500)
    geo = rows_geometry(500, 12, W[0].shape[1], 7, X.dtype, act)
    calls = []

    class Broken(Exception):
        pass

    def combine(r0, rows, parts, f2):
        calls.append(r0)
        if len(calls) == 2:
            raise Broken("the other ranks are gone")
        f2[...] = parts[0]
    with pytest.raises(Broken, match="the other ranks are gone"):
        cpu.network_grad_shard(X, Y, W, act, [1.0, 1.0], geo["panel_rows"], geo["lane_blocks"], geo["groups"],
                               combine)
    from pyrgd import _cpu

    # one call per batch of GRAD_SHARD_BATCH panels (of a row group), and none after the one that failed
    assert calls == [0, _cpu.GRAD_SHARD_BATCH * geo["panel_rows"]]
    # and the extension still works
    assert np.isfinite(cpu.network_grad(X, Y, W, act, [1.0, 1.0])[0])


def test_views_kept_past_the_call_stay_valid():
    """combine's arrays view the workspace; without one given, the call makes it a NumPy array that the views keep
    alive, so a view kept past the call (by the callback, or in a traceback) still reads what it held."""
    act = parse_activation("tanh")
    X, Y, W = _problem()
    geo = rows_geometry(X.shape[0], X.shape[1], W[0].shape[1], 7, X.dtype, act)
    kept, copies = [], []

    def combine(r0, rows, parts, f2):
        f2[...] = parts[0]
        kept.append((parts, f2))
        copies.append((parts.copy(), f2.copy()))
    cpu.network_grad_shard(X, Y, W, act, [1.0, 1.0], geo["panel_rows"], geo["lane_blocks"], geo["groups"], combine)
    import gc

    gc.collect()
    parts, f2 = kept[-1]
    assert np.array_equal(parts, copies[-1][0]) and np.array_equal(f2, copies[-1][1])


def test_bad_shards_are_refused_naming_the_argument():
    act = parse_activation("tanh")
    X, Y, W = _problem(N=300)
    geo = rows_geometry(300, 12, W[0].shape[1], 7, X.dtype, act)
    R, B, G = geo["panel_rows"], geo["lane_blocks"], geo["groups"]

    def ok(r0, rows, parts, f2):
        f2[...] = 0
    call = lambda *a, **k: cpu.network_grad_shard(X, Y, W, act, [1.0, 1.0], *a, **k)  # noqa: E731
    with pytest.raises(PyrgdError, match="panel_rows: a shard needs the whole layer's panel rows"):
        call(0, B, G, ok)
    with pytest.raises(PyrgdError, match="lane_blocks: expected"):
        call(R, 0, G, ok)
    with pytest.raises(PyrgdError, match="lane_blocks: 1 blocks a lane make 36 lanes"):  # more than 16 lanes
        call(R, 1, G, ok)
    with pytest.raises(PyrgdError, match=r"groups: expected 1\.\.panels"):
        call(R, B, 10 ** 4, ok)
    with pytest.raises(PyrgdError, match="combine: expected None or a callable"):
        call(R, B, G, 42)
    with pytest.raises(PyrgdError, match="block_sq: expected None or a writeable, aligned, contiguous float64 array"):
        call(R, B, G, ok, block_sq=np.empty(3))
    nb = 2 * (-(-W[0].shape[1] // 64))
    with pytest.raises(PyrgdError, match="block_sq: expected None or a numpy.ndarray, got list"):
        call(R, B, G, ok, block_sq=[0.0] * nb)  # a copy would receive the norms, the list never
    W1_before = W[0].copy()
    with pytest.raises(PyrgdError, match="block_sq, weights\\[0\\]: must not share memory"):
        call(R, B, G, ok, block_sq=W[0].reshape(-1)[:nb])
    assert np.array_equal(W[0], W1_before)  # refused before anything was written
    work = np.empty(4 * 10 ** 6)
    with pytest.raises(PyrgdError, match="block_sq, workspace: must not share memory"):
        call(R, B, G, ok, workspace=work, block_sq=work[:nb])
    with pytest.raises(PyrgdError, match="workspace: expected at least"):
        call(R, B, G, ok, workspace=np.empty(10))


def test_the_method_a_distributed_run_shards():
    tanh = parse_activation("tanh")
    # the rows method keeps every neuron: 'auto' shards it, up to one rank per lane
    geo = rows_geometry(1000, 16, 2300, 8, np.float32, tanh)
    assert geo["lane_blocks"] == 3 and geo["lanes"] == 12
    assert distributed_method(1000, 16, [2300, 8, 1], np.float32, tanh, "auto", 12) == "rows"
    assert distributed_method(1000, 16, [2300, 8, 1], np.float32, tanh, "auto", 13) == "neurons"
    assert distributed_method(1000, 16, [2300, 8, 1], np.float32, tanh, "neurons", 2) == "neurons"
    with pytest.raises(PyrgdError, match="13 ranks but the rows method's wide layer has 12 lanes"):
        distributed_method(1000, 16, [2300, 8, 1], np.float32, tanh, "rows", 13)
    # a layer whose panels recompute some neurons: no rows shard
    assert rows_geometry(256, 8, 32768, 8, np.float32, tanh) is None
    assert distributed_method(256, 8, [32768, 8, 1], np.float32, tanh, "auto", 2) == "neurons"
    assert [list(r) for r in shard_lanes(12, 5)] == [[0, 1], [2, 3], [4, 5, 6], [7, 8], [9, 10, 11]]


def test_one_rank_engine_steps_as_the_rows_engine_and_resumes_from_its_state():
    act = parse_activation("smooth_leaky_relu(0.2)")
    X, Y, W = _problem(dtype=np.float32)
    ref = cpu.RowsEngine(X, Y, [w.copy() for w in W], act, [1.0, 1.0])
    eng = ShardedRowsEngine(FakeComm(), X, Y, [w.copy() for w in W], act, [1.0, 1.0])
    assert eng.method == "rows" and eng.n_local == W[0].shape[1]
    for _ in range(3):
        assert eng.evaluate() == ref.evaluate()
        assert eng.update(1e-3) == ref.update(1e-3)
    state = eng.state()
    assert state["method"] == "rows" and all(np.array_equal(a, b) for a, b in zip(state["weights"], ref.W))
    again = ShardedRowsEngine(FakeComm(), X, Y, [w.copy() for w in W], act, [1.0, 1.0])
    again.load_state(state)
    assert again.evaluate() == ref.evaluate()
    with pytest.raises(PyrgdError, match=r"state: weights\[1\] has shape"):
        again.load_state({"weights": [state["weights"][0], state["weights"][1][:5]] + state["weights"][2:]})
    with pytest.raises(PyrgdError, match="gradients: not available on a sharded"):
        eng.gradients()


@pytest.mark.parametrize("size, rank", [(1, 0), (2, 1), (3, 2)])
def test_rank_figures_are_what_the_rows_engine_allocates(size, rank):
    act = parse_activation("smooth_leaky_relu(0.2)")
    X, Y, W = _problem(N=1024, dtype=np.float32)
    N, d = X.shape
    widths = [w.shape[1] for w in W]
    warm = ShardedRowsEngine(FakeComm(0, 1), X, Y, [w.copy() for w in W], act, [1.0, 1.0])
    warm.evaluate()
    warm.update(1e-4)
    del warm
    want = rows_shard_bytes(N, d, widths, np.float32, act, size, rank)
    tracemalloc.start()
    e = ShardedRowsEngine(FakeComm(rank, size), X, Y, [w.copy() for w in W], act, [1.0, 1.0])
    e.evaluate()
    e.update(1e-4)
    e.evaluate()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert e.n_local == want["neurons"] and len(e.lanes) == want["lanes"]
    assert sum(w.nbytes for w in e.W) == want["shard"]
    assert sum(g.nbytes for g in e._grads) + e._work.nbytes == want["buffers"]
    assert abs(held - (want["shard"] + want["buffers"])) < 8 << 10, (held, want)
