"""The load problem T_load: B1's fused GD step with 1 and with 2 threads while another process keeps a core busy.

Clusters and laptops are shared machines: the target is that two threads stay faster than one there too (at least
1.3x, and never slower in any round), with the same bits. Under a fair scheduler two threads beside one busy process
get one core (both on one CPU), 4/3 (rotated) or 3/2 (one CPU each, the busy process sharing one), against one core for
one thread; network_grad's row groups and pinning (docs/performance.md, "Under load") aim at the 3/2.

What runs (:func:`measure_load`): the busy process is a child Python spinning on the clock for at most
``BUSY_SECONDS`` (it ends by itself even if this process is killed) and is killed at the end; after
``SETTLE_SECONDS``, ``rounds`` rounds each time ``steps`` fused steps with 1 thread and with 2 (fresh engines on
copies of the same initial weights; the order of the two alternates from round to round), after one untimed step
each. Per thread count: the median over rounds of each round's median step time. The weights after the timed steps
with 1 and with 2 threads are compared bit for bit. The busy process's CPU time is read from /proc to show it ran.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import numpy as np

#: the busy process ends by itself after this many seconds
BUSY_SECONDS = 300.0
#: wait this long after starting it (the interpreter's start) before timing
SETTLE_SECONDS = 0.5
#: the thread counts compared
THREADS = (1, 2)
DESCRIPTION = "the fused GD step (pyrgd.ops.step_engine) with 1 and 2 threads beside one busy process"

_SPIN = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end:\n    pass\n"


@contextlib.contextmanager
def busy_process(seconds: float = BUSY_SECONDS):
    """A child process spinning on one core for at most ``seconds``; killed when the block ends. Yields its Popen."""
    proc = subprocess.Popen([sys.executable, "-c", _SPIN.format(s=float(seconds))], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (Linux /proc), or None where unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def timed_steps(data, activation, threads: int, steps: int, lr: float, backend: str = "cpu", method: str = "auto"):
    """(seconds of each of ``steps`` timed GD steps of a new step engine on copies of ``data``'s weights, the weights
    after them) with ``threads`` threads, after one untimed step. Also M1's one-process timing (mpi_run)."""
    from .. import ops
    from .._threads import thread_limits

    W = [w.copy() for w in data.W]
    with thread_limits(threads):
        eng = ops.step_engine(data.X, data.Y, W, activation=activation, backend=backend, method=method)
        eng.evaluate()
        eng.update(lr)  # untimed: the workspace, the first touch of the pages
        out = []
        for _ in range(steps):
            t0 = time.perf_counter()
            eng.evaluate()
            eng.update(lr)
            out.append(time.perf_counter() - t0)
    return out, W


def measure_load(data, activation: str, lr: float, *, rounds: int = 5, steps: int = 5, backend: str = "cpu",
                 busy_seconds: float = BUSY_SECONDS) -> dict:
    """Time the fused step with each of THREADS beside a busy process (see the module docstring); returns the row
    ``candidates["load"]`` of the problem: seconds_1, seconds_2 (medians), speedup (seconds_1 / seconds_2),
    round_speedups (per round), min_round_speedup, same_bits, busy_cpu_seconds, busy_wall_seconds, wait_policy."""
    from ..backends import cpu

    per = {t: [] for t in THREADS}
    final = {}
    with busy_process(busy_seconds) as proc:
        time.sleep(SETTLE_SECONDS)
        c0, t0 = cpu_seconds(proc.pid), time.perf_counter()
        for r in range(int(rounds)):
            for t in (THREADS if r % 2 == 0 else THREADS[::-1]):
                secs, W = timed_steps(data, activation, t, int(steps), lr, backend)
                per[t].append(float(np.median(secs)))
                final[t] = W
        c1, t1 = cpu_seconds(proc.pid), time.perf_counter()
        alive = proc.poll() is None
    s1, s2 = (float(np.median(per[t])) for t in THREADS)
    ratios = [a / b for a, b in zip(per[THREADS[0]], per[THREADS[1]])]
    same = all(np.array_equal(a, b) for a, b in zip(final[THREADS[0]], final[THREADS[1]]))
    return {"status": "ok", "description": DESCRIPTION, "rounds": int(rounds), "steps": int(steps),
            "seconds_1": s1, "seconds_2": s2, "seconds_by_round": {str(t): per[t] for t in THREADS},
            "speedup": s1 / s2, "round_speedups": ratios, "min_round_speedup": min(ratios), "same_bits": same,
            "busy_cpu_seconds": (c1 - c0) if c0 is not None and c1 is not None else None,
            "busy_wall_seconds": t1 - t0, "busy_alive_at_end": alive, "wait_policy": cpu.WAIT_POLICY}


def load_lines(p: dict) -> list[str]:
    """The report's lines of a load problem's result ``p``."""
    r = p["candidates"].get("load") or {}
    head = (f"{p['name']}: N={p['N']} d={p['d']} widths={p['widths']} {p['activation']}; the fused step with 1 and 2 "
            f"threads beside one busy process")
    if r.get("status") != "ok":
        return [head, f"  {r.get('status', 'not run')}: {r.get('note', '')}"]
    busy = r.get("busy_cpu_seconds")
    share = (f"{busy:.3g} CPU s in {r['busy_wall_seconds']:.3g} s"
             if busy is not None else "its CPU time unreadable")
    rounds = ", ".join(f"{x:.2f}" for x in r["round_speedups"])
    return [head,
            f"  1 thread {r['seconds_1']:.4g} s/step, 2 threads {r['seconds_2']:.4g} s/step (medians of {r['rounds']} "
            f"rounds of {r['steps']} steps, alternating order): {r['speedup']:.2f}x; per round {rounds}; "
            f"same bits: {'yes' if r['same_bits'] else 'NO'}; busy process: {share}; wait policy "
            f"{r.get('wait_policy')}"]


def evaluate(t: dict, p: dict) -> tuple:
    """(status, measured, detail) of the target ``t`` (kind 'load_scaling') on the load problem's result ``p``:
    speedup >= threshold, every round's speedup >= 1 and the same bits."""
    r = p["candidates"].get("load")
    if not r or r.get("status") != "ok":
        return ("FAIL" if r and r.get("status") == "failed" else "SKIP"), None, (r or {}).get("note", "not run")
    ok = r["speedup"] >= t["threshold"] and r["min_round_speedup"] >= 1.0 and r["same_bits"]
    detail = (f"1 thread {r['seconds_1']:.4g} s, 2 threads {r['seconds_2']:.4g} s per step beside a busy process; "
              f"slowest round {r['min_round_speedup']:.2f}x (never slower: "
              f"{'yes' if r['min_round_speedup'] >= 1.0 else 'NO'}); same bits: {'yes' if r['same_bits'] else 'NO'}")
    return ("PASS" if ok else "FAIL"), r["speedup"], detail
