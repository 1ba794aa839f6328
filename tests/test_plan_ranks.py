"""The plan of a distributed run, per rank (pyrgd.plan.plan_run with ranks, pyrgd.distributed.shard_bytes,
`pyrgd train --dry-run --ranks P`): the figures are what ShardedEngine allocates on each rank, they fall as the
ranks grow, the uneven split plans its largest rank, and train refuses per rank, naming the rank and the part."""
import json
import tracemalloc

import numpy as np
import pytest

import pyrgd
from pyrgd import plan as P
from pyrgd.activations import parse_activation
from pyrgd.cli import EXIT_BAD_INPUT, main
from pyrgd.distributed import NEURON_GROUP, ShardedEngine, shard_bytes
from pyrgd.errors import PyrgdError, ResourceError
from _fake_comm import FakeComm

pytest.importorskip("pyrgd._cpu", reason="the C++ extension pyrgd._cpu is not built")
ACT = parse_activation("smooth_leaky_relu(0.2)")


def _problem(N=1024, d=12, widths=(2300, 16, 4, 2), dtype=np.float32):
    """3 groups of neurons (the last one partial: 252 neurons) and a 3-layer tail."""
    rng = np.random.default_rng(0)
    net = pyrgd.PyramidalNet(d, list(widths), activation="smooth_leaky_relu(0.2)", dtype=np.dtype(dtype).name,
                             seed=1)
    X = rng.standard_normal((N, d)).astype(dtype) / d ** 0.5
    Y = rng.standard_normal((N, widths[-1])).astype(dtype)
    return net, X, Y


def _engine_arrays(e):
    return e._W1 + [e._W2] + e._tail + e._parts + [e._H, e._G] + list(e._tail_grads)


@pytest.mark.parametrize("size, rank", [(1, 0), (2, 0), (2, 1), (3, 0), (3, 2)])
def test_rank_figures_are_what_the_sharded_engine_allocates(size, rank):
    """After evaluate, update, evaluate (the tail's gradients held) the engine's arrays are exactly the planned
    shard and buffers, and tracemalloc sees the engine allocate that much and no more (a few KiB of Python
    objects)."""
    net, X, Y = _problem()
    N, d, widths = X.shape[0], X.shape[1], net.widths
    W = [w.copy() for w in net.weights]
    warm = ShardedEngine(FakeComm(0, 1), X, Y, W, net.activation, net.multipliers)  # first-call allocations
    warm.evaluate()
    warm.update(1e-4)
    del warm
    want = shard_bytes(N, d, widths, 4, size, rank)
    tracemalloc.start()
    e = ShardedEngine(FakeComm(rank, size), X, Y, W, net.activation, net.multipliers)
    e.evaluate()
    e.update(1e-4)
    e.evaluate()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    arrays = _engine_arrays(e)
    assert not any(np.shares_memory(a, b) for i, a in enumerate(arrays) for b in arrays[i + 1:])
    assert sum(a.nbytes for a in e._W1 + [e._W2] + e._tail) == want["shard"]
    assert sum(a.nbytes for a in e._parts + [e._H, e._G] + list(e._tail_grads)) == want["buffers"]
    assert len(e._parts) == want["groups"] and e.n_local == want["neurons"]
    assert abs(held - (want["shard"] + want["buffers"])) < 8 << 10, (held, want)
    assert peak - (want["shard"] + want["buffers"]) < 16 << 10, (peak, want)
    # and the plan of that rank carries these figures (the shard twice: the engine's and the last finite copy)
    plan = P.plan_run(N, d, widths, "float32", ACT, "cpu", "neurons", 1e-4, 0, 10, ranks=size, rank=rank,
                      timing=False)
    assert plan.method == "neurons" and plan.rank == rank and plan.rank_neurons == e.n_local
    assert plan.part("step").bytes == want["buffers"] and plan.part("shard").bytes == 2 * want["shard"]
    assert plan.part("gather").bytes == want["gather"]


def test_the_gather_figure_is_what_full_weights_holds_at_its_peak():
    """full_weights() over a real communicator (mpi4py's COMM_SELF, which pickles as COMM_WORLD does): its peak
    allocation is the planned gather, to 3%."""
    pytest.importorskip("mpi4py")
    from mpi4py import MPI

    net, X, Y = _problem()
    e = ShardedEngine(MPI.COMM_SELF, X, Y, [w.copy() for w in net.weights], net.activation, net.multipliers)
    e.full_weights()  # first-call allocations of mpi4py's pickling
    tracemalloc.start()
    full = e.full_weights()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert all(np.array_equal(a, b) for a, b in zip(full, net.weights))
    want = shard_bytes(X.shape[0], X.shape[1], net.widths, 4, 1, 0)["gather"]
    assert peak == pytest.approx(want, rel=0.03), (peak, want)


def test_one_rank_is_one_process_plus_what_the_sharded_engine_adds():
    """On 1 rank the plan is one process's 'neurons' plan (data, tracking route and parts, lr) plus exactly what
    the sharded engine holds on top of it: its own copy of the weights, one N x n_2 part per group, the tail's
    gradients and the gather. (A distributed rank never needs less than one process: every rank keeps the full
    weights.)"""
    N, d, widths = 512, 16, [3000, 8, 4, 1]
    one = P.plan_run(N, d, widths, "float64", ACT, "cpu", "neurons", "auto", "auto", 100, timing=False)
    r1 = P.plan_run(N, d, widths, "float64", ACT, "cpu", "neurons", "auto", "auto", 100, timing=False, ranks=1)
    assert r1.tracking_route == one.tracking_route and r1.estimate_block == one.estimate_block
    for name in ("data", "tracking", "lr"):
        assert r1.part(name).bytes == one.part(name).bytes, name
    dims = [d] + widths
    w = sum(a * b for a, b in zip(dims, dims[1:])) * 8
    tail = (8 * 4 + 4 * 1) * 8
    groups = -(-3000 // NEURON_GROUP)
    assert r1.rank_groups == groups == 3 and r1.rank_neurons == 3000
    assert r1.part("weights").bytes + r1.part("shard").bytes == one.part("weights").bytes + w
    assert r1.part("step").bytes == one.part("step").bytes + groups * N * 8 * 8 + tail
    assert r1.total_bytes == one.total_bytes + w + groups * N * 8 * 8 + tail + r1.part("gather").bytes
    assert r1.per_rank_bytes == [r1.total_bytes]


@pytest.mark.parametrize("track_every", [0, "auto"])
def test_per_rank_memory_falls_as_the_ranks_grow(track_every):
    N, d, widths = 2048, 32, [4 * NEURON_GROUP, 64, 1]
    plans = [P.plan_run(N, d, widths, "float32", ACT, "cpu", "neurons", 0.01, track_every, 10, timing=False,
                        ranks=n) for n in (1, 2, 4)]
    totals = [p.total_bytes for p in plans]
    assert totals[0] > totals[1] > totals[2], totals
    for name in ("shard", "step", "gather"):
        b = [p.part(name).bytes for p in plans]
        assert b[0] > b[1] > b[2], (name, b)
    assert [p.rank_groups for p in plans] == [4, 2, 1]
    for p in plans:  # the plan is of the rank that needs the most
        assert p.total_bytes == max(p.per_rank_bytes) and len(p.per_rank_bytes) == p.ranks
    # what docs/guide.md says: every rank keeps the full weights, so rank 0 needs at least one process's neurons plan
    one = P.plan_run(N, d, widths, "float32", ACT, "cpu", "neurons", 0.01, track_every, 10, timing=False)
    assert all(p.per_rank_bytes[0] >= one.total_bytes for p in plans)


def test_an_uneven_split_plans_its_largest_rank():
    """3 groups on 2 ranks: rank 0 owns 1, rank 1 owns 2 (the last partial); without tracking rank 1 needs the
    most, and the plan says so; with rank 0's certificates large enough, rank 0 does."""
    N, d, widths = 1024, 12, [2 * NEURON_GROUP + 300, 16, 1]
    p = P.plan_run(N, d, widths, "float32", ACT, "cpu", "neurons", 0.01, 0, 10, timing=False, ranks=2)
    assert p.rank == 1 and p.rank_groups == 2 and p.rank_neurons == NEURON_GROUP + 300
    assert p.per_rank_bytes[1] > p.per_rank_bytes[0] and p.total_bytes == p.per_rank_bytes[1]
    s1 = shard_bytes(N, d, widths, 4, 2, 1)
    assert p.part("step").bytes == s1["buffers"] == ((2 + 2) * N * 16 + 16) * 4
    r0 = P.plan_run(N, d, widths, "float32", ACT, "cpu", "neurons", 0.01, 0, 10, timing=False, ranks=2, rank=0)
    assert r0.rank_groups == 1 and r0.total_bytes == p.per_rank_bytes[0]
    exact = P.plan_run(N, d, widths, "float32", ACT, "cpu", "neurons", 0.01, 1, 10, timing=False, ranks=2,
                       route="exact")
    assert exact.rank == 0 and exact.part("tracking").bytes > 0  # the N x N Gram is rank 0's
    assert P.plan_run(N, d, widths, "float32", ACT, "cpu", "neurons", 0.01, 1, 10, timing=False, ranks=2, rank=1,
                      route="exact").part("tracking").bytes == 0
    assert "rank 0" in exact.format() and "the rank that needs the most" in exact.format()


def test_bad_ranks_are_refused_naming_the_argument(monkeypatch):
    args = (4096, 8, [2 * NEURON_GROUP, 8, 1], "float32", ACT, "cpu")
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(PyrgdError, match=r"ranks: expected an integer >= 1, got"):
            P.plan_run(*args, timing=False, ranks=bad)
    with pytest.raises(PyrgdError, match=r"ranks: 3 ranks but the wide layer has 2 groups of 1024 neurons"):
        P.plan_run(*args, "neurons", timing=False, ranks=3)
    with pytest.raises(PyrgdError, match=r"ranks: 17 ranks but the rows method's wide layer has 16 lanes"):
        P.plan_run(*args, "rows", timing=False, ranks=17)
    with pytest.raises(PyrgdError, match=r"rank: expected 0 to 1 \(of 2 ranks\), got 2"):
        P.plan_run(*args, timing=False, ranks=2, rank=2)
    # a layer whose panels cannot keep every neuron (the rows method recomputes some): 'rows' cannot be sharded,
    # and 'auto' shards the neurons method
    wide = (256, 8, [32768, 8, 1], "float32", ACT, "cpu")
    with pytest.raises(PyrgdError, match="method: 'rows' over ranks needs every neuron kept"):
        P.plan_run(*wide, "rows", timing=False, ranks=2)
    assert P.plan_run(*wide, "auto", timing=False, ranks=2).method == "neurons"
    with pytest.raises(PyrgdError, match="ranks: a distributed run needs the cpu or the cuda backend, got "
                                         "backend 'reference'"):
        P.plan_run(*args[:5], "reference", timing=False, ranks=2)
    monkeypatch.setattr(P, "available_memory", lambda backend: (6 << 30, "host"))
    shared = P.plan_run(*args, timing=False, ranks=2, sharing=3)
    assert shared.available == (6 << 30) // 3 and "1/3 of its host's" in shared.format()


def test_train_refuses_per_rank_naming_the_rank_and_the_part(monkeypatch):
    """Memory between one process's 'neurons' plan (what a distributed run was checked against before) and this
    rank's plan: train(comm=...) refuses before the engine exists, naming the rank and its largest part."""
    net, X, Y = _problem(N=256, widths=(3 * NEURON_GROUP, 8, 1))
    N, d = X.shape
    one = P.plan_run(N, d, net.widths, "float32", ACT, "cpu", "neurons", 1e-4, 0, 3, timing=False)
    rank1 = P.plan_run(N, d, net.widths, "float32", ACT, "cpu", "neurons", 1e-4, 0, 3, timing=False, ranks=2,
                       rank=1)
    avail = int((one.total_bytes + rank1.total_bytes) / 2 / P.MEMORY_FRACTION)
    assert one.total_bytes <= P.MEMORY_FRACTION * avail < rank1.total_bytes
    monkeypatch.setattr(P, "available_memory", lambda backend: (avail, "host"))
    built = []
    monkeypatch.setattr(ShardedEngine, "__init__", lambda self, *a: built.append(a) or 1 / 0)
    before = [w.copy() for w in net.weights]
    with pytest.raises(ResourceError) as e:
        pyrgd.train(net, X, Y, lr=1e-4, steps=3, track_every=0, progress=False, comm=FakeComm(1, 2),
                    method="neurons")
    msg = str(e.value)
    assert msg.startswith("the run does not fit in memory: rank 1 of 2 needs about")
    assert "the largest part is" in msg and "to change it:" in msg
    assert not built and all(np.array_equal(a, b) for a, b in zip(before, net.weights))
    # with room for the rank (not for the sum of the ranks), the check passes and the engine is built
    monkeypatch.setattr(P, "available_memory", lambda backend: (int(rank1.total_bytes / P.MEMORY_FRACTION) + 1,
                                                                "host"))
    assert 2 * rank1.total_bytes > rank1.total_bytes / P.MEMORY_FRACTION + 1
    with pytest.raises(PyrgdError, match="division by zero"):  # the engine's failure, agreed by every rank
        pyrgd.train(net, X, Y, lr=1e-4, steps=3, track_every=0, progress=False, comm=FakeComm(1, 2),
                    method="neurons")
    assert len(built) == 1


def test_cli_dry_run_ranks_prints_the_per_rank_plan(capsys):
    flags = ["train", "--N", "256", "--d", "8", "--widths", "3000,8,1", "--lr", "0.01", "--track-every", "0",
             "--dry-run", "--method", "neurons"]
    assert main(flags + ["--ranks", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("plan: N = 256") and "method neurons" in out
    assert "per rank, on 2 ranks: rank 1 (1976 neurons in 2 groups), the rank that needs the most" in out
    for name in ("shard", "step", "gather"):
        assert f"\n{name} " in out
    assert main(flags + ["--ranks", "2", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    want = P.plan_run(256, 8, [3000, 8, 1], "float64", ACT, "cpu", "neurons", 0.01, 0, 20000, timing=False,
                      ranks=2)
    assert d["ranks"] == 2 and d["rank"] == 1 and d["per_rank_bytes"] == want.per_rank_bytes
    assert d["total_bytes"] == want.total_bytes
    assert main(flags) == 0  # without --ranks: one process's plan, as before
    assert "per rank" not in capsys.readouterr().out
    # the default method: one process's (rows), sharded by lanes of 3 blocks (47 blocks: 16 lanes, 8 a rank)
    assert main(flags[:-2] + ["--ranks", "2"]) == 0
    out = capsys.readouterr().out
    assert "method rows" in out and "per rank, on 2 ranks: rank 0 (1536 neurons in 8 lanes)" in out


@pytest.mark.parametrize("bad", ["0", "-1", "2.5", "x", ""])
def test_cli_bad_ranks_is_one_line_naming_the_argument(capsys, bad):
    assert main(["train", "--N", "64", "--widths", "2048,8,1", "--dry-run", "--ranks", bad]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument --ranks: expected a positive integer" in err


def test_cli_ranks_needs_dry_run_and_enough_groups(capsys):
    assert main(["train", "--N", "64", "--widths", "2048,8,1", "--ranks", "2"]) == EXIT_BAD_INPUT
    assert "--ranks: plans a run on 2 ranks with --dry-run" in capsys.readouterr().err
    assert main(["train", "--N", "64", "--widths", "2048,8,1", "--dry-run", "--ranks", "3", "--method",
                 "neurons"]) == EXIT_BAD_INPUT
    assert "--ranks: 3 ranks but the wide layer has 2 groups" in capsys.readouterr().err


def test_gpu_ranks_plan_the_neurons_shard_against_their_share_of_the_gpu(monkeypatch):
    """GPU ranks (backend cuda) shard the neurons method; the plan holds the same shard as on the cpu, and the
    memory available to a rank is its share of the GPU's (planning needs no GPU)."""
    import importlib

    import pyrgd.ops

    args = (4096, 16, [4 * NEURON_GROUP, 8, 1], "float32", ACT, "cuda")
    # the cuda backend's plan is arithmetic: its module, without the check that CuPy and a GPU are there
    monkeypatch.setattr(pyrgd.ops, "get_backend", lambda name: importlib.import_module(f"pyrgd.backends.{name}"))
    monkeypatch.setattr(P, "available_memory", lambda backend: ((8 << 30, "GPU") if backend == "cuda" else
                                                                (1 << 40, "host")))
    plan = P.plan_run(*args, "auto", timing=False, ranks=2, sharing=2)
    assert plan.method == "neurons" and plan.backend == "cuda"
    assert plan.available == (8 << 30) // 2 and "1/2 of its GPU's" in plan.format()
    s = shard_bytes(4096, 16, [4 * NEURON_GROUP, 8, 1], 4, 2, plan.rank)
    assert plan.part("shard").bytes == 2 * s["shard"]
    # the cpu shard's buffers, and what the cuda step allocates per call: a forward result (N x n_2), the tail's
    # cache, scratch
    assert plan.part("step").bytes >= s["buffers"] + 2 * 4096 * 8 * 4 + (8 << 20)
    assert "the cuda step's temporaries" in plan.part("step").what
    assert plan.rank_neurons == 2 * NEURON_GROUP
    with pytest.raises(PyrgdError, match="method: 'rows' runs on the cpu backend; ranks on cuda take 'neurons'"):
        P.plan_run(*args, "rows", timing=False, ranks=2)


def test_distributed_engines_refuse_arrays_of_no_backend():
    from pyrgd.distributed import rank_backend

    assert rank_backend(np.zeros((2, 2))) == "cpu"
    with pytest.raises(PyrgdError, match="X: a distributed run needs NumPy or CuPy arrays, got list"):
        rank_backend([[0.0]])
