"""The MPI problem M1: B1's GD step sharded over 2 ranks (``mpiexec -n 2``, 1 thread per rank, pyrgd.distributed).

What runs (:func:`measure_mpi`): ``rounds`` rounds, each timing ``steps`` steps (after one untimed step) of
(a) one process, the neurons method, 1 thread; (b) one process, the neurons method, 2 threads; (c) one process,
method auto (the fastest one-process step; shown, not a target); (d) ``mpiexec -n 2`` of this module's worker
(:func:`worker`), :class:`pyrgd.distributed.ShardedEngine` with 1 thread per rank; and the same for the rows method
(the default of one process and of ``mpiexec pyrgd train`` where every neuron is kept): (e) one process, 1 thread;
(f) one process, 2 threads; (g) 2 ranks of :class:`pyrgd.distributed.ShardedRowsEngine`, 1 thread each. The order
alternates from round to round. Per configuration: the median over rounds of each round's median step time. The
2-rank weights after the timed steps are compared bit for bit with (a)'s and (e)'s. The worker also reports the
communication per step: the bytes rank 0 and the last rank sent, and the seconds rank 0 spent in communication
(waits included).

Targets (pyrgd.bench.report, kind 'mpi_scaling'): 2 ranks >= 1.8x one process on 1 thread and >= 0.9x on 2
threads, the same bits; for each method.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

RANKS = 2
DESCRIPTION = ("B1's GD step (the neurons and the rows method) on mpiexec -n 2, 1 thread per rank, against one "
               "process")
#: seconds a 2-rank launch may take before it is killed (a hang fails the problem, not the run)
TIMEOUT_S = 600


def _one_process(data, activation, threads: int, steps: int, lr: float, method: str):
    from .load import timed_steps

    return timed_steps(data, activation, threads, steps, lr, backend="cpu", method=method)


def _launch(problem, dtype: str, seed: int, steps: int, lr: float, folder: str, method: str = "neurons") -> dict:
    spec = {"problem": problem.to_dict(), "dtype": dtype, "seed": seed, "steps": steps, "lr": lr, "out": folder,
            "method": method}
    path = os.path.join(folder, "spec.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    exe = shutil.which("mpiexec") or os.path.join(os.path.dirname(sys.executable), "mpiexec")
    import pyrgd

    env = dict(os.environ, OMP_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(pyrgd.__file__)))  # the pyrgd under test
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # run in the spec's folder: `python -m` puts the working folder first on sys.path, and a source checkout there
    # (CI runs from one, with pyrgd installed elsewhere) would shadow the pyrgd under test
    p = subprocess.run([exe, "-n", str(RANKS), sys.executable, "-m", "pyrgd.bench.mpi_run", path], env=env,
                       capture_output=True, text=True, timeout=TIMEOUT_S, cwd=folder)
    if p.returncode != 0:
        raise RuntimeError(f"mpiexec -n {RANKS} exited with {p.returncode}: {' '.join(p.stderr.split())[-300:]}")
    with open(os.path.join(folder, "result.json")) as f:
        res = json.load(f)
    with np.load(os.path.join(folder, "weights.npz")) as z:
        res["weights"] = [z[f"W{l}"] for l in range(1, len(z.files) + 1)]
    return res


def measure_mpi(problem, data, lr: float, *, rounds: int = 3, steps: int = 5, seed: int = 0) -> dict:
    """Time M1 (module docstring); returns the row ``candidates["mpi"]``: seconds_1 (one process, 1 thread),
    seconds_2 (one process, 2 threads), seconds_auto_2 (method auto, 2 threads), seconds_ranks (2 ranks; medians),
    speedup_vs_1, speedup_vs_2, same_bits, comm_bytes_per_step, comm_seconds_per_step, comm_share, neurons_per_rank
    (the neurons method), and the same keys with ``_rows`` for the rows method (seconds_rows_1, seconds_rows_2,
    seconds_ranks_rows, speedup_rows_vs_1, ...)."""
    per = {"1": [], "2": [], "auto2": [], "ranks": [], "rows1": [], "rows2": [], "ranks_rows": []}
    comm = {"neurons": [], "rows": []}
    ref, got = {}, {}
    act = problem.activation
    with tempfile.TemporaryDirectory(prefix="pyrgd_m1_") as tmp:
        for r in range(int(rounds)):
            order = ["1", "2", "auto2", "ranks", "rows1", "rows2", "ranks_rows"]
            for what in (order if r % 2 == 0 else order[::-1]):
                method = "rows" if what.startswith("rows") or what == "ranks_rows" else "neurons"
                if what.startswith("ranks"):
                    res = _launch(problem, data.dtype.name, seed, steps, lr, tmp, method)
                    per[what].append(float(np.median(res["seconds"])))
                    comm[method].append(res)
                    got[method] = res["weights"]
                else:
                    t = 1 if what in ("1", "rows1") else 2
                    secs, W = _one_process(data, act, t, steps, lr, "auto" if what == "auto2" else method)
                    per[what].append(float(np.median(secs)))
                    if t == 1:
                        ref[method] = W
    med = {k: float(np.median(v)) for k, v in per.items()}
    row = {"status": "ok", "description": DESCRIPTION, "rounds": int(rounds), "steps": int(steps), "ranks": RANKS,
           "seconds_auto_2": med["auto2"], "seconds_by_round": per}
    for method, sfx, one1, one2, ranks in (("neurons", "", "1", "2", "ranks"),
                                            ("rows", "_rows", "rows1", "rows2", "ranks_rows")):
        c = comm[method]
        comm_s = float(np.median([x["comm_seconds_per_step"] for x in c]))
        row.update({f"seconds{sfx}_1": med[one1], f"seconds{sfx}_2": med[one2], f"seconds_ranks{sfx}": med[ranks],
                    f"speedup{sfx}_vs_1": med[one1] / med[ranks], f"speedup{sfx}_vs_2": med[one2] / med[ranks],
                    f"same_bits{sfx}": all(np.array_equal(a, b) for a, b in zip(ref[method], got[method])),
                    f"comm_bytes_per_step{sfx}": c[-1]["comm_bytes_per_step"],
                    f"comm_seconds_per_step{sfx}": comm_s, f"comm_share{sfx}": comm_s / med[ranks],
                    f"neurons_per_rank{sfx}": c[-1]["neurons_per_rank"]})
    return row


def worker(spec_path: str) -> None:
    """One 2-rank timing (run under mpiexec by :func:`measure_mpi`): rank 0 writes result.json and weights.npz."""
    from mpi4py import MPI

    from .._threads import thread_limits
    from ..activations import parse_activation
    from ..distributed import ShardedEngine, ShardedRowsEngine
    from .problems import Problem, make_data

    comm = MPI.COMM_WORLD
    with open(spec_path) as f:
        spec = json.load(f)
    pd = dict(spec["problem"])
    pd["widths"], pd["candidates"] = tuple(pd["widths"]), tuple(pd["candidates"])
    problem = Problem(**pd)
    data = make_data(problem, spec["dtype"], spec["seed"])
    act = parse_activation(problem.activation)
    mult = [1.0] * len(problem.widths[1:])  # as pyrgd.ops.step_engine's default, which (a)-(c) use
    lr = float(spec["lr"])
    with thread_limits(1):
        engine = ShardedRowsEngine if spec.get("method") == "rows" else ShardedEngine
        eng = engine(comm, data.X, data.Y, [w.copy() for w in data.W], act, mult)
        eng.evaluate()
        eng.update(lr)
        b0, s0 = eng.comm_bytes, eng.comm_seconds
        secs = []
        for _ in range(int(spec["steps"])):
            comm.Barrier()
            t0 = time.perf_counter()
            eng.evaluate()
            eng.update(lr)
            secs.append(time.perf_counter() - t0)
        n = int(spec["steps"])
        sent = comm.allgather((eng.comm_bytes - b0) / n)
        W = eng.full_weights()
        if comm.Get_rank() == 0:
            res = {"seconds": secs, "comm_bytes_per_step": {f"rank{r}": s for r, s in enumerate(sent)},
                   "comm_seconds_per_step": (eng.comm_seconds - s0) / n,
                   "neurons_per_rank": comm.allgather(eng.n_local)}
        else:
            comm.allgather(eng.n_local)
            res = None
    if res is not None:
        np.savez(os.path.join(spec["out"], "weights.npz"), **{f"W{l}": w for l, w in enumerate(W, start=1)})
        with open(os.path.join(spec["out"], "result.json"), "w") as f:
            json.dump(res, f)


def mpi_lines(p: dict) -> list[str]:
    """The report's lines of M1's result ``p``."""
    r = p["candidates"].get("mpi") or {}
    head = (f"{p['name']}: N={p['N']} d={p['d']} widths={p['widths']} {p['activation']}; the GD step on "
            f"mpiexec -n {r.get('ranks', RANKS)}, 1 thread per rank (one-process method auto on 2 threads: "
            f"{r.get('seconds_auto_2', float('nan')):.4g} s/step)")
    if r.get("status") != "ok":
        return [head, f"  {r.get('status', 'not run')}: {r.get('note', '')}"]
    lines = [head]
    for method, sfx in (("neurons", ""), ("rows", "_rows")):
        if f"seconds_ranks{sfx}" not in r:
            continue
        b = r[f"comm_bytes_per_step{sfx}"]
        lines += [
            f"  {method}: one process 1 thread {r[f'seconds{sfx}_1']:.4g} s/step, 2 threads "
            f"{r[f'seconds{sfx}_2']:.4g} s/step; {r['ranks']} ranks {r[f'seconds_ranks{sfx}']:.4g} s/step: "
            f"{r[f'speedup{sfx}_vs_1']:.2f}x 1 thread, {r[f'speedup{sfx}_vs_2']:.2f}x 2 threads (medians of "
            f"{r['rounds']} rounds of {r['steps']} steps); same bits as one process: "
            f"{'yes' if r[f'same_bits{sfx}'] else 'NO'}",
            f"    communication per step: sent {', '.join(f'{k} {v / 1e6:.3g} MB' for k, v in b.items())}; rank 0 "
            f"{r[f'comm_seconds_per_step{sfx}'] * 1e3:.3g} ms in communication "
            f"({100 * r[f'comm_share{sfx}']:.1f}% of a step, waits included); neurons per rank "
            f"{r[f'neurons_per_rank{sfx}']}"]
    return lines


def evaluate(t: dict, p: dict) -> tuple:
    """(status, measured, detail) of a target of kind 'mpi_scaling' (``against``: '1' or '2' threads of one
    process, ``method``: 'neurons' (the default) or 'rows', ``threshold``) on M1's result ``p``; the same bits are
    required too."""
    r = p["candidates"].get("mpi")
    if not r or r.get("status") != "ok":
        return ("FAIL" if r and r.get("status") == "failed" else "SKIP"), None, (r or {}).get("note", "not run")
    method = t.get("method", "neurons")
    sfx = "_rows" if method == "rows" else ""
    if f"seconds_ranks{sfx}" not in r:
        return "SKIP", None, f"the {method} method was not measured"
    x = r[f"speedup{sfx}_vs_{t['against']}"]
    same = r[f"same_bits{sfx}"]
    ok = x >= t["threshold"] and same
    detail = (f"one process {r[f'seconds{sfx}_' + t['against']]:.4g} s/step on {t['against']} thread(s) ({method}), "
              f"{r['ranks']} ranks {r[f'seconds_ranks{sfx}']:.4g} s/step; same bits: {'yes' if same else 'NO'}")
    return ("PASS" if ok else "FAIL"), x, detail


if __name__ == "__main__":  # pragma: no cover - run by measure_mpi under mpiexec
    worker(sys.argv[1])


# ------------------------------------------------------------------------------------------- the projection
def project_step(N: int, d: int, widths, P: int, rate: float, bandwidth: float = 12.5e9, latency: float = 5e-6,
                 itemsize: int = 4, chain: str = "ordered", method: str = "neurons", panel_rows: int = 96,
                 batch: int = 4) -> dict:
    """A model of one sharded step on ``P`` nodes: {'compute_s', 'comm_s', 'comm_share'}.

    Compute: the neurons method's wide-layer flops (6 N n_1 (d + n_2), :func:`pyrgd.bench.problems.fused_flops`)
    divided by P, plus the tail's (replicated), at ``rate`` flop/s per node. Communication of the N x n_2 partials,
    M = N n_2 ``itemsize`` bytes, each message costing ``latency`` + M / ``bandwidth`` (bytes/s): ``chain`` =
    'ordered' (what :class:`pyrgd.distributed.ShardedEngine` does: P - 1 hops, then a broadcast in ceil(log2 P)
    rounds), 'pipelined' (the same order, the chain cut into P segments of rows: about 2 M / bandwidth + 2 P
    latency, not implemented) or 'ring' (MPI's allreduce, not bit-reproducible: 2 M (P - 1) / P / bandwidth +
    2 (P - 1) latency).

    ``method`` = 'rows' (:class:`pyrgd.distributed.ShardedRowsEngine`, chain 'ordered' only): the wide layer's flops
    are 4 N n_1 (d + n_2) (each product once), and the same M bytes go along the chain in about ceil(N / (``batch``
    ``panel_rows``)) meetings per step (batches do not cross the row groups: up to groups - 1 more), each paying the P - 1 + ceil(log2 P) latencies: the latency term is
    multiplied by the meetings, which is what limits this engine on many nodes."""
    from .problems import fused_flops

    widths = [int(w) for w in widths]
    n1, n2 = widths[0], widths[1]
    if method not in ("neurons", "rows"):
        raise ValueError(f"method: expected 'neurons' or 'rows', got {method!r}")
    if method == "rows" and chain != "ordered":
        raise ValueError("chain: the rows engine's chain is 'ordered'")
    wide = 6 * N * n1 * (d + n2)
    tail = fused_flops(N, d, widths, "neurons") - wide
    compute = ((wide if method == "neurons" else wide * 2 // 3) / P + tail) / rate
    M = N * n2 * itemsize
    logp = math.ceil(math.log2(P)) if P > 1 else 0
    meetings = 1 if method == "neurons" else math.ceil(N / (int(batch) * int(panel_rows)))
    if P == 1:
        comm = 0.0
    elif chain == "ordered":
        comm = (P - 1 + logp) * (meetings * latency + M / bandwidth)
    elif chain == "pipelined":
        comm = 2 * M / bandwidth + 2 * P * latency
    elif chain == "ring":
        comm = 2 * M * (P - 1) / P / bandwidth + 2 * (P - 1) * latency
    else:
        raise ValueError(f"chain: expected 'ordered', 'pipelined' or 'ring', got {chain!r}")
    return {"compute_s": compute, "comm_s": comm, "comm_share": comm / (compute + comm)}
