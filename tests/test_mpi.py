"""Neuron-sharded GD over MPI (pyrgd.distributed): `mpiexec -n P` runs in subprocesses against one process.

The ranks' weights must be the bits of one process running the same method (the rows method sharded by lanes, the
default where it keeps every neuron, or the neurons method sharded by groups); a stopped run must resume on 1 and
on 2 ranks to the bits of an uninterrupted run; an error on one rank must end every rank with one message (each
launch has a timeout, so a hang fails the test instead of stalling the suite)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import pyrgd
from pyrgd.errors import PyrgdError

TIMEOUT = 120  # seconds per launch: a hang fails here

# a small problem: 3 groups of 1024 neurons (the last one partial), a 3-layer tail, float32
PROBLEM = textwrap.dedent("""
    import numpy as np, pyrgd
    def make():
        rng = np.random.default_rng(3)
        X = rng.standard_normal((96, 12)).astype(np.float32)
        Y = rng.standard_normal((96, 2)).astype(np.float32)
        net = pyrgd.PyramidalNet(12, [2300, 8, 4, 2], activation="smooth_leaky_relu(0.2)", dtype="float32", seed=5)
        return net, X, Y
""")


def _problem():
    ns = {}
    exec(PROBLEM, ns)
    return ns["make"]()


def _launch(mpiexec, n, args, cwd, timeout=TIMEOUT):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([mpiexec, "-n", str(n)] + args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _script(tmp_path, body):
    p = tmp_path / "run_ranks.py"
    p.write_text(PROBLEM + textwrap.dedent(body))
    return str(p)


def _weights(path):
    with np.load(path) as z:
        return [z[k] for k in sorted(z.files) if k.startswith("W")]


def _same_bits(a, b):
    return len(a) == len(b) and all(x.dtype == y.dtype and np.array_equal(x.view(np.uint8), y.view(np.uint8))
                                    for x, y in zip(a, b))


TRAIN = """
    import sys
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    net, X, Y = make()
    r = pyrgd.train(net, X, Y, lr=8e-5, steps=int(sys.argv[1]), progress=False, comm=comm, method=sys.argv[3])
    if comm.Get_rank() == 0:
        np.savez(sys.argv[2], **{f"W{l}": w for l, w in enumerate(net.weights, start=1)},
                 loss=np.array(r.history["loss"]), grad_sq=np.array(r.history["grad_norm_1"]),
                 engine=r.summary["distributed"]["engine"], method=r.summary["method"])
"""


@pytest.mark.parametrize("method,engine,ranks", [("auto", "ShardedRowsEngine", (1, 2, 3)),
                                                 ("neurons", "ShardedEngine", (1, 2))])
def test_ranks_give_the_bits_of_one_process(mpiexec, tmp_path, method, engine, ranks):
    script = _script(tmp_path, TRAIN)
    net, X, Y = _problem()
    ref = pyrgd.train(net, X, Y, lr=8e-5, steps=25, method=method, progress=False, track_every=0)
    assert ref.status == "max_steps" and ref.history["loss"][-1] < 0.9 * ref.history["loss"][0]
    for n in ranks:
        out = tmp_path / f"w{n}.npz"
        p = _launch(mpiexec, n, [sys.executable, script, "25", str(out), method], tmp_path)
        assert p.returncode == 0, p.stderr
        got = np.load(out)
        assert str(got["engine"]) == f"pyrgd.distributed.{engine}" and str(got["method"]) == ref.summary["method"]
        assert _same_bits(_weights(out), net.weights), f"{n} ranks"
        assert np.array_equal(got["loss"], np.array(ref.history["loss"]))
        if method == "auto":  # the rows engine sums the squared norms over the blocks as one process does
            assert np.array_equal(got["grad_sq"], np.array(ref.history["grad_norm_1"]), equal_nan=True)


def test_cli_quickstart_on_two_ranks_writes_the_one_process_weights(mpiexec, tmp_path):
    args = ["--preset", "quickstart", "--set", "train.steps=30", "--no-progress"]
    p = _launch(mpiexec, 2, [sys.executable, "-m", "pyrgd", "train", *args, "--out", "two"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("status ") == 1  # rank 0 alone prints the summary
    assert "ranks         2 (neurons per rank 1024, 1024); certificates on rank 0" in p.stdout
    from pyrgd.cli import main

    assert main(["train", *args, "--out", str(tmp_path / "one")]) == 0  # one process, its default method
    assert _same_bits(_weights(tmp_path / "two" / "weights.npz"), _weights(tmp_path / "one" / "weights.npz"))
    import json

    s = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s["distributed"]["ranks"] == 2 and s["distributed"]["neurons_per_rank"] == [1024, 1024]
    from pyrgd.distributed import threads_per_rank

    assert s["threads"] == threads_per_rank(2)  # the host's CPUs shared by its 2 ranks, not each taking all
    assert s["distributed"]["engine"] == "pyrgd.distributed.ShardedRowsEngine" and s["method"] == "rows"
    assert "rank 0" in s["tracking"]["distributed"]
    # the quickstart's certificate at step 0 (track_every 50), taken on rank 0: as one process's
    import csv

    def cert(folder):
        with open(tmp_path / folder / "certificates.csv") as f:
            rows = list(csv.DictReader(f))
        return [{k: v for k, v in r.items() if k != "time"} for r in rows]

    assert len(cert("two")) == 1 and cert("two") == cert("one")
    # the folder's config says what ran, so that a plain `pyrgd train --resume` continues it in one process
    assert 'method = "rows"' in (tmp_path / "two" / "config.toml").read_text()


STOP_AND_RESUME = """
    import sys
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    net, X, Y = make()
    mode, folder, method = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "stop":  # stopped by its callback after 14 steps, a checkpoint every 5
        r = pyrgd.train(net, X, Y, lr=8e-5, steps=30, progress=False, comm=comm, out=folder, checkpoint_every=5,
                        callback=lambda rec: rec["step"] >= 14, method=method)
    else:
        r = pyrgd.train(net, X, Y, lr="auto", steps=30, progress=False, comm=comm, out=folder, resume=folder,
                        checkpoint_every=5, method=method)
    lines = comm.gather(f"STATUS {comm.Get_rank()} {r.status} {len(r.history['loss']) - 1}")
    if comm.Get_rank() == 0:  # one writer: the ranks' lines cannot interleave
        print("\\n".join(lines), flush=True)
"""


@pytest.mark.parametrize("method", ["auto", "neurons"])
def test_a_stopped_two_rank_run_resumes_on_one_and_on_two_ranks(mpiexec, tmp_path, method):
    script = _script(tmp_path, STOP_AND_RESUME)
    net, X, Y = _problem()
    pyrgd.train(net, X, Y, lr=8e-5, steps=30, method=method, progress=False, track_every=0)
    run = tmp_path / "run"
    p = _launch(mpiexec, 2, [sys.executable, script, "stop", str(run), method], tmp_path)
    assert p.returncode == 0, p.stderr
    assert "STATUS 0 stopped_by_callback 15" in p.stdout and "STATUS 1 stopped_by_callback 15" in p.stdout
    assert not _same_bits(_weights(run / "weights.npz"), net.weights)  # stopped short of the end
    for copy in ("run1", "run2", "run_one"):
        shutil.copytree(run, tmp_path / copy)
    for n in (1, 2):
        p = _launch(mpiexec, n, [sys.executable, script, "resume", str(tmp_path / f"run{n}"), method], tmp_path)
        assert p.returncode == 0, p.stderr
        assert "STATUS 0 max_steps 30" in p.stdout
        assert _same_bits(_weights(tmp_path / f"run{n}" / "weights.npz"), net.weights), f"resumed on {n} ranks"
    # and in one process, the same method, from the checkpoint of 2 ranks
    net1, X, Y = _problem()
    pyrgd.train(net1, X, Y, steps=30, method=method, progress=False, track_every=0, resume=str(tmp_path / "run_one"))
    assert _same_bits(net1.weights, net.weights)


MEMORY_PER_RANK = """
    import sys
    from mpi4py import MPI
    from pyrgd import plan as P
    from pyrgd.distributed import ranks_on_this_host
    from pyrgd.errors import ResourceError
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    share = ranks_on_this_host(comm)  # the ranks on this host split its memory
    net, X, Y = make()
    need = P.plan_run(96, 12, net.widths, "float32", net.activation, "cpu", "auto", 8e-5, 0, 5, timing=False,
                      ranks=comm.Get_size(), rank=rank).total_bytes
    # rank 1 alone lacks the memory: every rank refuses, with rank 1's message, and none waits on the others
    room = need // 2 if rank == 1 else 100 * need
    P.available_memory = lambda backend: (share * room, "host")
    lines = []
    try:
        pyrgd.train(net, X, Y, lr=8e-5, steps=5, progress=False, comm=comm, track_every=0)
    except ResourceError as e:
        lines.append(f"REFUSED {rank} {e}")
    # room for each rank's own share, not for the sum of the ranks: the run goes on
    P.available_memory = lambda backend: (share * int(need / P.MEMORY_FRACTION * 1.05), "host")
    r = pyrgd.train(net, X, Y, lr=8e-5, steps=5, progress=False, comm=comm, track_every=0)
    plan = r.summary["plan"]
    lines.append(f"PLAN {rank} {plan['ranks']} {plan['rank']} {plan['ranks_sharing_host'] == share} "
                 f"{plan['total_bytes'] == need}")
    every = comm.gather(lines)  # rank 0 prints every rank's lines: no interleaved output
    if rank == 0:
        print("\\n".join(line for rank_lines in every for line in rank_lines))
        np.savez(sys.argv[1], **{f"W{l}": w for l, w in enumerate(net.weights, start=1)})
"""


def test_memory_is_checked_per_rank_and_refused_on_every_rank(mpiexec, tmp_path):
    p = _launch(mpiexec, 2, [sys.executable, _script(tmp_path, MEMORY_PER_RANK), str(tmp_path / "w.npz")], tmp_path)
    assert p.returncode == 0, p.stderr
    lines = [line for line in p.stdout.splitlines() if line.startswith("REFUSED")]
    assert sorted(line.split()[1] for line in lines) == ["0", "1"]
    for line in lines:  # rank 1's message on both ranks
        assert "the run does not fit in memory: rank 1 of 2 needs about" in line and "the largest part is" in line
    assert "PLAN 0 2 0 True True" in p.stdout and "PLAN 1 2 1 True True" in p.stdout
    net, X, Y = _problem()
    pyrgd.train(net, X, Y, lr=8e-5, steps=5, progress=False, track_every=0)
    assert _same_bits(_weights(tmp_path / "w.npz"), net.weights)


CALLBACK_ERROR = """
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    net, X, Y = make()
    def cb(rec):
        if comm.Get_rank() == 1 and rec["step"] == 4:
            raise ValueError("broken callback on this rank")
    try:
        pyrgd.train(net, X, Y, lr=8e-5, steps=1000, progress=False, comm=comm, callback=cb)
    except pyrgd.PyrgdError as e:
        if comm.Get_rank() == 0:
            print("ERROR", e)
        raise SystemExit(3)
    print("FINISHED", comm.Get_rank())
"""


def test_an_error_on_one_rank_ends_both_with_one_message(mpiexec, tmp_path):
    p = _launch(mpiexec, 2, [sys.executable, _script(tmp_path, CALLBACK_ERROR)], tmp_path)
    assert p.returncode == 3
    assert "FINISHED" not in p.stdout
    assert p.stdout.count("ERROR") == 1
    assert "ERROR rank 1: callback: ValueError: broken callback on this rank" in p.stdout


# rank 1 fails inside a step: in the neurons engine's update, or in the rows engine's combine (called by the kernel
# between two panels, while rank 0 waits for its part of Z_2)
STEP_ERROR = """
    import sys
    from mpi4py import MPI
    from pyrgd.distributed import ShardedEngine, ShardedRowsEngine
    comm = MPI.COMM_WORLD
    method = sys.argv[1]
    cls, name = (ShardedEngine, "_update") if method == "neurons" else (ShardedRowsEngine, "_combine")
    original = getattr(cls, name)
    def failing(self, *args, _n=[0]):
        _n[0] += 1
        if comm.Get_rank() == 1 and _n[0] == 3:
            raise RuntimeError("kernel failed on this rank")
        return original(self, *args)
    setattr(cls, name, failing)
    net, X, Y = make()
    pyrgd.train(net, X, Y, lr=8e-5, steps=1000, progress=False, comm=comm, method=method)
    print("FINISHED", comm.Get_rank())
"""


@pytest.mark.parametrize("method", ["auto", "neurons"])
def test_an_error_inside_a_step_aborts_every_rank(mpiexec, tmp_path, method):
    p = _launch(mpiexec, 2, [sys.executable, _script(tmp_path, STEP_ERROR), method], tmp_path)
    assert p.returncode != 0
    assert "FINISHED" not in p.stdout
    assert p.stderr.count("pyrgd: error: rank 1: RuntimeError: kernel failed on this rank") == 1


def test_cli_error_before_training_is_one_line_from_rank_zero(mpiexec, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    p = _launch(mpiexec, 2, [sys.executable, "-m", "pyrgd", "train", "--preset", "quickstart", "--out", "full",
                             "--no-progress"], tmp_path)
    assert p.returncode == 2
    assert p.stderr.count("pyrgd: error:") == 1 and "is not empty" in p.stderr


def test_cli_error_on_one_rank_alone_ends_every_rank(mpiexec, tmp_path):
    """A data file that only rank 1 cannot read (a node-local path): rank 1 fails before any collective while
    rank 0 waits in one. Every rank ends (no hang), with rank 1's message."""
    import numpy as np

    for folder in ("A", "B"):
        (tmp_path / folder).mkdir()
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "A" / "d.npz", X=rng.standard_normal((64, 16)), Y=rng.standard_normal((64, 1)))
    (tmp_path / "B" / "d.npz").write_bytes(b"junk")
    (tmp_path / "cfg.toml").write_text('[data]\nsource = "file"\npath = "d.npz"\n[model]\nwidths = [512, 8, 1]\n'
                                       '[train]\nsteps = 5\n')
    cmd = [sys.executable, "-m", "pyrgd", "train", "--config", str(tmp_path / "cfg.toml"), "--out",
           str(tmp_path / "run"), "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    p = subprocess.run([mpiexec, "-n", "1", "-wdir", str(tmp_path / "A")] + cmd + [":", "-n", "1", "-wdir",
                       str(tmp_path / "B")] + cmd, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "pyrgd: error: rank 1: data.path" in p.stderr, p.stderr


ONE_RANK_FAILS_EARLY = """
    import sys
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    net, X, Y = make()
    kw = {}
    if sys.argv[1] == "out":  # rank 1's out lies under a file
        open("afile", "w").close()
        kw["out"] = "afile/run" if comm.Get_rank() == 1 else "fine"
    def cb(rec):
        if sys.argv[1] == "exit" and comm.Get_rank() == 1 and rec["step"] == 3:
            sys.exit(3)
    try:
        pyrgd.train(net, X, Y, lr=8e-5, steps=50, progress=False, comm=comm, callback=cb, track_every=0, **kw)
    except pyrgd.PyrgdError as e:
        print("ERROR", comm.Get_rank(), " ".join(str(e).split()))
        raise SystemExit(3)
    print("FINISHED", comm.Get_rank())
"""


@pytest.mark.parametrize("mode, message", [("out", "rank 1: out: cannot create the run folder afile/run"),
                                           ("exit", "rank 1: callback: SystemExit: 3")])
def test_python_api_failure_on_one_rank_alone_ends_every_rank(mpiexec, tmp_path, mode, message):
    """pyrgd.train(comm=...): a run folder only rank 1 cannot make, or sys.exit() in rank 1's callback, ends every
    rank with rank 1's message instead of leaving rank 0 in a collective."""
    p = _launch(mpiexec, 2, [sys.executable, _script(tmp_path, ONE_RANK_FAILS_EARLY), mode], tmp_path, timeout=120)
    assert p.returncode == 3, p.stdout + p.stderr
    assert "FINISHED" not in p.stdout
    assert p.stdout.count(message) == 2, p.stdout  # on both ranks


SIGNAL_ON_ONE_RANK = """
    import os, signal
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    net, X, Y = make()
    def cb(rec):
        if comm.Get_rank() == 1 and rec["step"] == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler preempting rank 1's node
    r = pyrgd.train(net, X, Y, lr=8e-5, steps=1000, progress=False, comm=comm, callback=cb, track_every=0,
                    out="run", checkpoint_every=0)
    print("STATUS", comm.Get_rank(), r.status, r.summary["steps"])
"""


def test_a_signal_to_one_rank_alone_stops_every_rank(mpiexec, tmp_path):
    p = _launch(mpiexec, 2, [sys.executable, _script(tmp_path, SIGNAL_ON_ONE_RANK)], tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "STATUS 0 terminated 5" in p.stdout and "STATUS 1 terminated 5" in p.stdout, p.stdout
    assert (tmp_path / "run" / "checkpoint.npz").is_file()  # a stop by a signal writes one for --resume


SWEEP_GRID = """
[grid]
N = [16, 32]
n1_over_N = [1, 2]
seed = [0, 1, 2]
[data]
d = 8
inputs = "sphere"
[model]
activation = "relu"
[train]
steps = 300
rel_tol = 1e-3
"""


def _rows_without_times(path):
    import csv

    with open(path) as f:
        return [{k: v for k, v in r.items() if k not in ("wall_time_s", "cell_time_s")} for r in csv.DictReader(f)]


def test_sweep_farms_its_cells_over_ranks_with_one_process_results(mpiexec, tmp_path):
    (tmp_path / "g.toml").write_text(SWEEP_GRID)
    p = _launch(mpiexec, 2, [sys.executable, "-m", "pyrgd", "sweep", "--grid", "g.toml", "--out", "two",
                             "--no-progress"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("12 cells; results.csv") == 1  # rank 0 alone prints
    from pyrgd.sweep import run_sweep

    run_sweep(str(tmp_path / "g.toml"), tmp_path / "one", resume=False, plots=False)
    two, one = _rows_without_times(tmp_path / "two" / "results.csv"), _rows_without_times(tmp_path / "one" /
                                                                                      "results.csv")
    assert len(two) == 12 and two == one  # the same cells, results and order as one process
    assert (tmp_path / "two" / "summary.csv").read_text() == (tmp_path / "one" / "summary.csv").read_text()
    # a folder that holds a sweep is refused on every rank with rank 0's message, one line
    p = _launch(mpiexec, 2, [sys.executable, "-m", "pyrgd", "sweep", "--grid", "g.toml", "--out", "two",
                             "--no-progress"], tmp_path)
    assert p.returncode == 2 and p.stderr.count("pyrgd: error:") == 1 and "already holds a sweep" in p.stderr


SWEEP_ERROR = """
    import sys
    from mpi4py import MPI
    from pyrgd.sweep import run_sweep, runner
    comm = MPI.COMM_WORLD
    cell = runner.run_cell
    def failing(cfg, C=1.0, _n=[0]):
        _n[0] += 1
        if comm.Get_rank() == 1 and _n[0] == 2:  # rank 1's second cell, before it trains
            if sys.argv[3] == "error":
                raise ValueError("a cell failed on this rank")
            raise KeyboardInterrupt  # as a Ctrl-C outside train (building the cell, its certificates)
        return cell(cfg, C=C)
    runner.run_cell = failing
    def report(line, code):  # rank 0 prints every rank's line (no interleaved output), every rank exits
        lines = comm.gather(line)
        if comm.Get_rank() == 0:
            print("\\n".join(lines), flush=True)
        raise SystemExit(code)
    try:
        run_sweep(sys.argv[1], sys.argv[2], resume=False, plots=False, comm=comm)
    except pyrgd.PyrgdError as e:
        report(f"ERROR {comm.Get_rank()} {e}", 3)
    except KeyboardInterrupt:
        report(f"STOPPED {comm.Get_rank()}", 130)
"""


@pytest.mark.parametrize("mode", ["error", "signal"])
def test_a_failing_cell_on_one_rank_ends_the_sweep_on_every_rank(mpiexec, tmp_path, mode):
    (tmp_path / "g.toml").write_text(SWEEP_GRID)
    p = _launch(mpiexec, 2, [sys.executable, _script(tmp_path, SWEEP_ERROR), str(tmp_path / "g.toml"),
                             str(tmp_path / "out"), mode], tmp_path)
    rows = _rows_without_times(tmp_path / "out" / "results.csv")
    if mode == "error":
        assert p.returncode == 3
        for r in (0, 1):
            assert f"ERROR {r} rank 1: ValueError: a cell failed on this rank" in p.stdout
        assert len(rows) == 2  # the first round's cells (one per rank) were written before the failure
    else:  # every rank stops after the round (none waits on rank 1); rank 0's cell of that round is kept
        assert p.returncode == 130 and "STOPPED 0" in p.stdout and "STOPPED 1" in p.stdout
        assert len(rows) == 3


# ------------------------------------------------------------------------------------- without launching ranks
def test_threads_per_rank_share_the_hosts_cpus(monkeypatch):
    from pyrgd.distributed import threads_per_rank

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert [threads_per_rank(r) for r in (1, 2, 3, 16, 40)] == [16, 8, 5, 1, 1]


def test_shards_are_whole_groups_and_too_many_ranks_are_refused():
    from pyrgd.distributed import groups_of, shard_groups

    assert groups_of(2300) == [(0, 1024), (1024, 2048), (2048, 2300)]
    assert shard_groups(2300, 2) == [range(0, 1), range(1, 3)]
    with pytest.raises(PyrgdError, match="comm: 3 ranks but the wide layer has 2 groups"):
        shard_groups(2048, 3)


def test_train_refuses_a_bad_comm_and_what_cannot_be_sharded():
    net, X, Y = _problem()
    with pytest.raises(PyrgdError, match="comm: expected an mpi4py communicator"):
        pyrgd.train(net, X, Y, steps=1, progress=False, comm=object())

    class OneRank:  # the parts of a communicator that train checks before anything runs
        def Get_rank(self):
            return 0

        def Get_size(self):
            return 1

        Send = Recv = Bcast = Get_rank

        def allgather(self, obj):
            return [obj] * self.Get_size()

    with pytest.raises(PyrgdError, match="update: a distributed run"):
        pyrgd.train(net, X, Y, steps=1, progress=False, comm=OneRank(), update="momentum")
    class ThirteenRanks(OneRank):  # more ranks than the rows method's 12 lanes (n1 = 2300: 36 blocks of 64, 3 a lane)
        def Get_size(self):
            return 13

    with pytest.raises(PyrgdError, match="ranks: 13 ranks but the rows method's wide layer has 12 lanes"):
        pyrgd.train(net, X, Y, steps=1, progress=False, comm=ThirteenRanks(), method="rows")
    with pytest.raises(PyrgdError, match="method: expected one of auto, rows, neurons, got 'columns'"):
        pyrgd.train(net, X, Y, steps=1, progress=False, comm=OneRank(), method="columns")


def test_bench_m1_tiny_times_two_ranks_with_the_same_bits(mpiexec):
    from pyrgd.bench.problems import select_problems
    from pyrgd.bench.report import evaluate_targets
    from pyrgd.bench.runner import Options, run_mpi_problem

    (p,) = select_problems("M1", tiny=True)
    res = run_mpi_problem(p, Options(tiny=True, progress=False))
    row = res["candidates"]["mpi"]
    assert row["status"] == "ok", row.get("note")
    assert row["same_bits"] and row["neurons_per_rank"] == [1024, 1024]
    # rank 0 sends the running sum H (N x n2 float32) along the chain once per step (the last rank broadcasts it),
    # and the two float64 squared norms of its one group to the allgather
    assert row["comm_bytes_per_step"]["rank0"] == p.N * p.widths[1] * 4 + 2 * 8
    assert row["seconds_ranks"] > 0 and row["speedup_vs_1"] == row["seconds_1"] / row["seconds_ranks"]
    # the rows method (one process's default), sharded by lanes: the same bits as one process's rows method; per
    # step each rank sends the running sum of every panel's rows, R x n2 float32 values each: N n2 values in all
    assert row["same_bits_rows"] and row["neurons_per_rank_rows"] == [1024, 1024]
    assert row["comm_bytes_per_step_rows"]["rank0"] == p.N * p.widths[1] * 4 + 2 * 16 * 8
    assert row["speedup_rows_vs_2"] == row["seconds_rows_2"] / row["seconds_ranks_rows"]
    targets = {t["id"]: t for t in evaluate_targets({"device": "cpu", "problems": [res]})}
    assert targets["M1_vs_1"]["status"] == ("PASS" if row["speedup_vs_1"] >= 1.8 else "FAIL")
    assert targets["M1_vs_2"]["measured"] == row["speedup_vs_2"]
    assert targets["M1r_vs_1"]["status"] == ("PASS" if row["speedup_rows_vs_1"] >= 1.8 else "FAIL")
    assert targets["M1r_vs_2"]["measured"] == row["speedup_rows_vs_2"]


def test_projection_of_the_communication_share():
    from pyrgd.bench.mpi_run import project_step

    shape = dict(N=1 << 20, d=64, widths=[1 << 17, 64, 32, 10], rate=390e9)
    share = [project_step(P=P, **shape)["comm_share"] for P in (2, 8, 64)]
    assert share[0] < share[1] < share[2]  # strong scaling: the share grows with the nodes
    # the documented threshold: on 64 nodes the ordered chain passes 10% of a step just below n1 = 94 P (P - 1 + 6)
    n1 = 94 * 64 * 69
    assert project_step(1 << 20, 64, [int(n1 * 0.95), 64, 32, 10], 64, 390e9)["comm_share"] > 0.10
    assert project_step(1 << 20, 64, [int(n1 * 1.05), 64, 32, 10], 64, 390e9)["comm_share"] < 0.10
    # pipelining the chain (same order, same bits) removes most of it; one node communicates nothing
    assert project_step(P=64, chain="pipelined", **shape)["comm_share"] < share[2] / 10
    assert project_step(P=1, **shape)["comm_s"] == 0.0
    with pytest.raises(ValueError, match="chain"):
        project_step(P=2, chain="tree", **shape)
    # the rows engine: two thirds of the compute, the same bytes, the latency paid once per meeting (N / (4 x 96))
    rows, neurons = project_step(P=64, method="rows", **shape), project_step(P=64, **shape)
    assert rows["compute_s"] < neurons["compute_s"] and rows["comm_share"] > neurons["comm_share"]
    meetings = -(-(1 << 20) // (4 * 96))
    assert rows["comm_s"] - neurons["comm_s"] == pytest.approx((63 + 6) * (meetings - 1) * 5e-6)
    with pytest.raises(ValueError, match="method"):
        project_step(P=2, method="columns", **shape)


@pytest.mark.slow
def test_a_two_rank_run_killed_by_sigterm_resumes_on_one_and_two_ranks(mpiexec, tmp_path):
    import json
    import signal
    import time

    env = dict(os.environ, OMP_NUM_THREADS="1")
    flags = ["--preset", "quickstart", "--set", "train.rel_tol=0", "--no-progress"]
    proc = subprocess.Popen([mpiexec, "-n", "2", sys.executable, "-m", "pyrgd", "train", *flags, "--steps", "1000000",
                             "--out", "run"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        t0 = time.monotonic()
        while not (tmp_path / "run" / "config.toml").exists() and time.monotonic() - t0 < TIMEOUT:
            time.sleep(0.1)
        time.sleep(2.0)  # some steps
        proc.send_signal(signal.SIGTERM)  # mpiexec passes it to every rank
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "terminated", (out, err)
    k = s["steps"] + 20
    shutil.copytree(tmp_path / "run", tmp_path / "run1")
    for n, run in ((1, "run1"), (2, "run")):
        p = _launch(mpiexec, n, [sys.executable, "-m", "pyrgd", "train", "--resume", run, "--steps", str(k),
                                 "--no-progress"], tmp_path)
        assert p.returncode == 0, p.stderr
    from pyrgd.cli import main

    assert main(["train", *flags, "--steps", str(k), "--track-every", "0",
                 "--out", str(tmp_path / "one")]) == 0
    want = _weights(tmp_path / "one" / "weights.npz")
    for run in ("run1", "run"):
        assert json.loads((tmp_path / run / "summary.json").read_text())["steps"] == k
        assert _same_bits(_weights(tmp_path / run / "weights.npz"), want), run
