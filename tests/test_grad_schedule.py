"""How network_grad's threads share a step (csrc/cpu/grad_kernels.cpp): row groups, the team and groups schedules,
the choice between them (set_grad_schedule), the workspace's slot per thread and the pinning of a team that uses
every allowed CPU.

What must hold: the bits of the loss, every gradient and the squared norms are the same for any number of threads,
either schedule and any workspace (the groups and lanes are fixed by the shapes); the row groups follow their rule
(1 where neurons are recomputed, else 4..8 within the byte budget); a workspace without a slot per thread makes the
call run the team; and a call leaves every thread's CPU affinity as it found it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

from pyrgd.activations import parse_activation
from pyrgd.errors import PyrgdError

_cpu = pytest.importorskip("pyrgd._cpu", reason="the C++ extension pyrgd._cpu is not built")
from pyrgd.backends import cpu  # noqa: E402  (after the skip: needs the extension)
from pyrgd import ops  # noqa: E402
from pyrgd._threads import thread_limits  # noqa: E402

# (N, [d, n1, n2, ..., nL], activation, dtype, panel_rows, kept): several panels each, so that there are groups
CASES = [
    (3000, [16, 1024, 32, 10], "smooth_leaky_relu(0.2)", np.float32, 0, None),
    (1000, [7, 300, 5, 1], "relu", np.float64, 48, None),
    (777, [5, 130, 3, 2], "softplus", np.float32, 16, None),
    (500, [3, 70, 4, 1], "erf", np.float32, 96, None),  # 6 panels: one group
    (1001, [6, 200, 9, 4, 2], "tanh", np.float64, 96, None),
    (2000, [9, 2048, 8, 1], "relu", np.float32, 64, 1024),  # neurons recomputed: one group
]
IDS = [f"N{c[0]}-n1_{c[1][1]}-{c[2]}-{np.dtype(c[3]).name}" for c in CASES]


@pytest.fixture(autouse=True)
def _restore_schedule():
    yield
    cpu.set_grad_schedule("auto")


def make(N, dims, dtype, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, dims[0])).astype(dtype)
    W = [(rng.standard_normal((a, b)) / np.sqrt(a)).astype(dtype) for a, b in zip(dims, dims[1:])]
    Y = rng.standard_normal((N, dims[-1])).astype(dtype)
    return X, Y, W


def run(X, Y, W, act, panel_rows, kept, threads, slots_for):
    """network_grad on `threads` threads with a workspace sized for `slots_for` threads (None: the kernel's own)."""
    N, d = X.shape
    n1, n2 = W[0].shape[1], W[1].shape[1]
    with thread_limits(threads):
        work = None
        if slots_for is not None:
            size = cpu.grad_workspace_size(N, d, n1, n2, act, X.dtype.itemsize, panel_rows, kept, threads=slots_for)
            work = np.empty(size, X.dtype)
        loss, grads, sq = cpu.network_grad(X, Y, W, act, [1.0] * (len(W) - 1), panel_rows=panel_rows,
                                           kept_neurons=kept, workspace=work)
        return (loss, grads, sq), cpu.last_grad_schedule()


def same_bits(a, b):
    return a[0] == b[0] and a[2] == b[2] and all(np.array_equal(x, y) for x, y in zip(a[1], b[1]))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_same_bits_for_every_schedule_and_thread_count(case):
    N, dims, name, dtype, panel_rows, kept = case
    act = parse_activation(name)
    X, Y, W = make(N, dims, dtype)
    ref, _ = run(X, Y, W, act, panel_rows, kept, 1, None)
    ran = set()
    for schedule in ("team", "groups", "auto"):
        cpu.set_grad_schedule(schedule)
        for threads in (2, 3, 4):
            for slots_for in (None, 1, threads):
                out, what = run(X, Y, W, act, panel_rows, kept, threads, slots_for)
                assert same_bits(out, ref), (schedule, threads, slots_for)
                ran.add(what)
    groups = cpu.grad_row_groups(N, dims[0], dims[1], dims[2], act, np.dtype(dtype).itemsize, panel_rows, kept)
    # where there are groups enough for two threads, the groups schedule really ran (else the test proves nothing)
    assert ran == ({"team", "groups"} if groups >= 4 else {"team"})


def test_row_groups_rule():
    act = parse_activation("smooth_leaky_relu(0.2)")
    # B1's shapes: 43 panels of 96 rows, 2 MiB of gradients per group: the most groups
    assert cpu.grad_row_groups(4096, 64, 4096, 64, act, 4) == 8
    # one panel: one group
    assert cpu.grad_row_groups(50, 8, 256, 8, act, 4) == 1
    # neurons recomputed (kept below n1): one group (their passes need G of every row)
    assert cpu.grad_row_groups(2000, 9, 2048, 8, act, 4, 64, 1024) == 1
    # eight panels: four groups of two; seven: one (no two groups of two panels for each of two threads)
    assert cpu.grad_row_groups(800, 8, 256, 8, act, 4, 100) == 4
    assert cpu.grad_row_groups(700, 8, 256, 8, act, 4, 100) == 1
    # gradients of 32 MiB per group (d + n2 = 2, n1 = 2^21, float64): the budget allows one extra group only -> 1
    assert cpu.grad_row_groups(64, 1, 1 << 21, 1, act, 8, 1) == 1
    # 4 MiB per group (d + n2 = 128, n1 = 4096, float64): 1 + 32 / 4 = 9 -> 8
    assert cpu.grad_row_groups(4096, 64, 4096, 64, act, 8) == 8


def test_workspace_has_a_slot_per_thread_only_where_groups_can_run():
    act = parse_activation("smooth_leaky_relu(0.2)")
    one = cpu.grad_workspace_size(4096, 64, 4096, 64, act, 4, threads=1)
    two = cpu.grad_workspace_size(4096, 64, 4096, 64, act, 4, threads=2)
    four = cpu.grad_workspace_size(4096, 64, 4096, 64, act, 4, threads=4)
    R = cpu.grad_panel_rows(4096, 4096, 64, 4, act)
    # a slot: S and sigma' of one panel, the 16 lanes' Z_2, Z_2 and G of the panel (elements, each array aligned)
    slot = R * 4096 * 2 + (16 + 2) * R * 64
    assert slot <= two - one <= slot + 5 * 16 and four - one == 3 * (two - one)
    # 8 groups: 5 threads cannot have two each -> one slot
    assert cpu.grad_workspace_size(4096, 64, 4096, 64, act, 4, threads=5) == one
    # one group: never a second slot
    assert (cpu.grad_workspace_size(700, 8, 256, 8, act, 4, 100, threads=2)
            == cpu.grad_workspace_size(700, 8, 256, 8, act, 4, 100, threads=1))
    with pytest.raises((PyrgdError, ValueError), match="threads"):
        cpu.grad_workspace_size(4096, 64, 4096, 64, act, 4, threads=0)


def test_a_workspace_with_one_slot_runs_the_team():
    act = parse_activation("smooth_leaky_relu(0.2)")
    X, Y, W = make(3000, [16, 1024, 32, 10], np.float32)
    cpu.set_grad_schedule("groups")
    _, what = run(X, Y, W, act, 0, None, 2, 1)
    assert what == "team"
    _, what = run(X, Y, W, act, 0, None, 2, 2)
    assert what == "groups"


def test_auto_tries_the_team_then_groups_then_keeps_the_faster():
    act = parse_activation("softplus")
    X, Y, W = make(1777, [5, 136, 3, 2], np.float32, seed=3)  # shapes of their own: the chooser starts afresh
    cpu.set_grad_schedule("auto")
    seen = [run(X, Y, W, act, 16, None, 2, 2)[1] for _ in range(24)]
    assert seen[:2] == ["team", "groups"]
    # afterwards the faster one, the other every 10th call at least: both keep running
    assert "team" in seen[2:] and "groups" in seen[2:]


def test_set_grad_schedule_checks_its_argument():
    assert cpu.get_grad_schedule() == "auto"
    cpu.set_grad_schedule("team")
    assert cpu.get_grad_schedule() == "team"
    with pytest.raises(PyrgdError, match="schedule"):
        cpu.set_grad_schedule("fast")
    assert cpu.get_grad_schedule() == "team"


def test_rows_engine_grows_its_workspace_with_the_threads():
    X, Y, W = make(3000, [16, 1024, 32, 10], np.float32)
    with thread_limits(1):
        eng = ops.step_engine(X, Y, [w.copy() for w in W], activation="tanh", method="rows")
        eng.evaluate()
        small = eng._work.size
    with thread_limits(2):
        eng.update(1e-3)
        eng.evaluate()
        assert eng._work.size > small
    act = parse_activation("tanh")
    assert eng._work.size == cpu.grad_workspace_size(3000, 16, 1024, 32, act, 4, threads=2)


@pytest.mark.skipif(not sys.platform.startswith("linux") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux affinity masks and two CPUs")
def test_affinity_is_restored_after_pinned_groups():
    """With the process on two CPUs and two threads, the groups pin one thread per CPU for the call and give every
    thread its mask back afterwards (the Python thread and the OpenMP workers)."""
    code = textwrap.dedent(
        """
        import os, numpy as np
        from pyrgd.backends import cpu
        from pyrgd.activations import parse_activation
        two = sorted(os.sched_getaffinity(0))[:2]
        os.sched_setaffinity(0, two)
        cpu.set_num_threads(2)
        cpu.set_grad_schedule("groups")
        def masks():
            out = {}
            for t in os.listdir("/proc/self/task"):
                for line in open(f"/proc/self/task/{t}/status"):
                    if line.startswith("Cpus_allowed_list"):
                        out[t] = line.split()[1]
            return out
        rng = np.random.default_rng(0)
        X = rng.standard_normal((3000, 16)).astype(np.float32); Y = rng.standard_normal((3000, 10)).astype(np.float32)
        W = [rng.standard_normal(s).astype(np.float32) * 0.1 for s in ((16, 1024), (1024, 32), (32, 10))]
        act = parse_activation("tanh")
        work = np.empty(cpu.grad_workspace_size(3000, 16, 1024, 32, act, 4, threads=2), np.float32)
        cpu.network_grad(X, Y, W, act, [1.0, 1.0], workspace=work)  # starts the OpenMP workers
        assert cpu.last_grad_schedule() == "groups"
        before = masks()
        for _ in range(3):
            cpu.network_grad(X, Y, W, act, [1.0, 1.0], workspace=work)
        after = masks()
        assert len(before) >= 2 and before == after, (before, after)
        assert sorted(os.sched_getaffinity(0)) == two
        print("OK")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_PROC_BIND"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                       cwd=tempfile.gettempdir())  # not the source tree: its pyrgd/ has no built _cpu
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == ["OK"]
