"""The train problems (group L, :mod:`pyrgd.bench.problems`): :func:`pyrgd.train` with its defaults, in a fresh
process, with its peak memory, its time by part and the time of one bare engine step.

What runs: ``pyrgd.train(net, X, Y, steps=problem.steps, backend=..., progress=False)``: every other argument at
its default (lr="auto", track_every="auto", the tracking route, the method); ``backend`` is what ``pyrgd bench
--backend`` asks for ("auto" unless given); no progress bar (a display, not part of the computation). One exception,
:data:`GIVEN_LR`: B1_track runs with the benchmark's step size. Its random targets make lr="auto" (0.5 /
lambda_max at initialization) unstable: the top eigenvalue grows by more than 4x within 150 steps and the run
diverged at step 146, so it would not last the 200 steps whose tracking cost it measures (the rule's own cost is
L2's). X (N, d),
Y (N, n_L) and the initial weights are the benchmark's (:func:`pyrgd.bench.problems.make_data`), the net a
:class:`pyrgd.PyramidalNet` of the problem's activation holding them.

Where: one fresh Python process per problem (``python -m pyrgd.bench.train_runs SPEC``, started and read by the
machinery of the candidates' peak memory, :func:`pyrgd.bench.memory.spawn_spec`), so that nothing an earlier problem
left in the allocator counts. There, :func:`child`:

1. warm-up: a tiny train run with the defaults (loads the extension, the BLAS and its threads, every module train
   imports) and SciPy's sparse.linalg (which the matrix-free tracking route imports on first use), so that no
   import nor first-call cost lands in what follows;
2. RSS0, the resident size before the data exist (:class:`pyrgd.bench.memory.PeakProbe`); then X, Y, the initial
   weights and the net around them; then the high-water mark is reset;
3. the train run, timed around the call: ``wall_s`` (seconds, from the call to its return: the plan, lr="auto",
   the steps, the tracking, the summary; the summary's own ``wall_time_s`` starts later, after the plan and the
   copies, and is kept as ``summary_wall_s``); VmHWM right after: ``peak_bytes`` = VmHWM - RSS0 (the data and
   everything the run allocated on top of them, at the worst moment) and ``process_peak_bytes`` = VmHWM (the whole
   process: interpreter, libraries, data and run);
4. the bare step: :func:`pyrgd.ops.step_engine` on the same X, Y and the trained weights, with train's backend,
   method and step size; ``evaluate()`` + ``update(lr)`` timed ``repeats`` times from a new engine (the first step
   included: train's engine starts cold too); ``bare_step_s`` is their median.

Derived by :func:`train_row` (the target ratios of :mod:`pyrgd.bench.report`):

- ``denominator_bytes`` = data + weights + step: the plan's parts ``data`` (X and Y) and ``step`` (the step
  engine's own memory) from ``summary["plan"]``, and the weights once, counted from the shapes (the plan's
  ``weights`` part also holds the copy of the initial weights that the certificates need; it is kept as
  ``plan_weights_bytes``); ``peak_over_denominator`` = peak_bytes / denominator_bytes;
- ``steps_s``, ``tracking_s``, ``lr_s``: the summary's ``step_time_s`` (inside the engine's evaluate and update),
  ``tracking_time_s`` and ``lr_time_s``; ``other_s`` = wall_s - steps_s - tracking_s - lr_s;
- ``tracking_pct_of_wall`` = 100 tracking_s / wall_s, ``wall_over_steps`` = wall_s / steps_s,
  ``wall_over_bare_step`` = wall_s / bare_step_s.
"""
from __future__ import annotations

import gc
import math
import statistics
import time

from .problems import Problem, make_data

#: what a train problem's row describes (tables, JSON)
DESCRIPTION = "pyrgd.train with its defaults (lr auto, tracking auto, method auto), in a fresh process"
#: the summary keys the measurements use; a missing one is listed in the row's ``summary_missing``
SUMMARY_KEYS = ("status", "steps", "wall_time_s", "step_time_s", "tracking_time_s", "lr_time_s", "tracking", "plan",
                "method", "kept_neurons", "backend", "lr", "lr_rule", "initial_loss", "final_loss")
#: seconds a train problem's process may run (full sizes, tiny sizes)
TIMEOUT_S = (7200, 600)


def problem_from_dict(p: dict) -> Problem:
    """The :class:`Problem` of ``Problem.to_dict()``."""
    return Problem(**{**p, "widths": tuple(p["widths"]), "candidates": tuple(p["candidates"])})


def train_inputs(problem: Problem, dtype="float32", seed: int = 0):
    """(net, X, Y): the benchmark's X (N, d), Y (N, n_L) of ``problem`` and a PyramidalNet of its activation that
    holds the benchmark's initial weights (the arrays themselves: pyrgd.train updates them)."""
    import pyrgd

    data = make_data(problem, dtype, seed)
    net = pyrgd.PyramidalNet(problem.d, list(problem.widths), activation=problem.activation, dtype=dtype, seed=seed)
    net.weights = data.W
    return net, data.X, data.Y


#: train problems that run with the benchmark's step size (Problem.lr) instead of lr="auto" (module docstring)
GIVEN_LR = ("B1_track",)


def run_train(problem: Problem, net, X, Y, backend: str = "auto"):
    """pyrgd.train with its defaults for ``problem.steps`` steps (lr: see GIVEN_LR); returns (TrainResult, seconds
    of the call)."""
    import pyrgd

    lr = problem.lr if problem.name in GIVEN_LR else "auto"
    t0 = time.perf_counter()
    res = pyrgd.train(net, X, Y, lr=lr, steps=problem.steps, backend=backend, progress=False)
    return res, time.perf_counter() - t0


def bare_step_times(X, Y, W, activation, lr, *, backend, method, repeats: int) -> list[float]:
    """Seconds of ``repeats`` GD steps (evaluate + update) of a new :func:`pyrgd.ops.step_engine` on X, Y, W (W is
    updated in place)."""
    from .. import ops

    eng = ops.step_engine(X, Y, W, activation=activation, backend=backend, method=method)
    out = []
    for _ in range(max(1, int(repeats))):
        t0 = time.perf_counter()
        eng.evaluate()
        eng.update(lr)
        out.append(time.perf_counter() - t0)
    return out


def _warm_up(problem: Problem, dtype, backend) -> None:
    import numpy as np

    import pyrgd

    try:
        import scipy.sparse.linalg  # noqa: F401  (the estimate route's LOBPCG imports it on first use)
    except ImportError:
        pass
    d = min(problem.d, 8)
    widths = [128] + [min(w, 8) for w in problem.widths[1:]]
    rng = np.random.default_rng(1)
    X = rng.standard_normal((64, d)).astype(dtype)
    Y = rng.standard_normal((64, widths[-1])).astype(dtype)
    net = pyrgd.PyramidalNet(d, widths, activation=problem.activation, dtype=dtype, seed=1)
    pyrgd.train(net, X, Y, steps=3, backend=backend, progress=False)


def child(spec: dict) -> dict:
    """Runs in the fresh process (spec: problem, dtype, seed, backend, repeats): the measurement of the module
    docstring. Returns the raw measurements (JSON-ready), or {"refused": why} where pyrgd.train refused the run
    (:class:`pyrgd.errors.ResourceError`: it would not fit here)."""
    from .._threads import thread_limits
    from ..errors import ResourceError
    from .memory import PeakProbe

    problem = problem_from_dict(spec["problem"])
    dtype, seed, backend = spec["dtype"], int(spec["seed"]), spec["backend"]
    with thread_limits(problem.threads):
        _warm_up(problem, dtype, backend)
        gc.collect()
        probe = PeakProbe().start()
        net, X, Y = train_inputs(problem, dtype, seed)
        gc.collect()
        probe.reset()
        try:
            res, wall = run_train(problem, net, X, Y, backend)
        except ResourceError as e:
            return {"refused": " ".join(str(e).split())}
        peak = probe.stop()
        s = res.summary
        summary = {k: s[k] for k in SUMMARY_KEYS if k in s}
        method = s.get("method", "auto")
        times = bare_step_times(X, Y, net.weights, problem.activation, res.lr, backend=s.get("backend", backend),
                                method=method if method in ("rows", "neurons") else "auto",
                                repeats=spec.get("repeats", 1))
    return {"wall_s": wall, **peak, "summary": summary, "summary_missing": [k for k in SUMMARY_KEYS if k not in s],
            "bare_times": times, "bare_method": method, "dtype": str(dtype)}


def measure_train(problem: Problem, *, dtype="float32", seed=0, backend="auto", repeats=1, timeout=None) -> dict:
    """:func:`child` in a fresh process; {"error": why} where it failed (or ran past ``timeout`` seconds; None: the
    TIMEOUT_S of full sizes)."""
    from .memory import collect, spawn_spec

    spec = {"problem": problem.to_dict(), "dtype": str(dtype), "seed": int(seed), "backend": backend,
            "repeats": int(repeats)}
    return collect(spawn_spec(spec, "pyrgd.bench.train_runs"), TIMEOUT_S[0] if timeout is None else timeout)


def _ratio(a, b):
    if a is None or b is None:
        return None
    a, b = float(a), float(b)
    if not (math.isfinite(a) and math.isfinite(b)) or b <= 0:
        return None
    return a / b


def denominator(plan: dict | None, problem: Problem, itemsize: int) -> dict | None:
    """{"data", "weights", "step", "total"} bytes: the plan's data and step parts and the weights once (from the
    shapes), plus the plan's own ``plan_weights`` and ``plan_total``; None where the plan lacks the parts."""
    if not plan or not isinstance(plan.get("parts"), list):
        return None
    parts = {p.get("name"): p.get("bytes") for p in plan["parts"]}
    if parts.get("data") is None or parts.get("step") is None:
        return None
    dims = problem.dims
    weights = sum(a * b for a, b in zip(dims, dims[1:])) * int(itemsize)
    out = {"data": int(parts["data"]), "weights": int(weights), "step": int(parts["step"])}
    out["total"] = sum(out.values())
    out["plan_weights"] = parts.get("weights")
    out["plan_total"] = plan.get("total_bytes")
    return out


def train_row(problem: Problem, m: dict, itemsize: int = 4) -> dict:
    """The result row of a train problem from :func:`measure_train`'s answer ``m``: status ok / skipped (train
    refused the run) / failed (the process failed), the measurements and the derived ratios of the module
    docstring (None where a figure is missing)."""
    if "error" in m:
        return {"status": "failed", "note": m["error"], "description": DESCRIPTION}
    if "refused" in m:
        return {"status": "skipped", "note": f"pyrgd.train refused the run: {m['refused']}", "description": DESCRIPTION}
    s = m.get("summary") or {}
    tr = s.get("tracking") or {}
    wall = m.get("wall_s")
    steps_s, tracking_s, lr_s = s.get("step_time_s"), s.get("tracking_time_s"), s.get("lr_time_s")
    times = m.get("bare_times") or []
    row = {"status": "ok", "description": DESCRIPTION, "train_status": s.get("status"), "steps": s.get("steps"),
           "backend": s.get("backend"), "method": s.get("method"), "kept": s.get("kept_neurons"), "lr": s.get("lr"),
           "lr_rule": s.get("lr_rule"), "initial_loss": s.get("initial_loss"), "final_loss": s.get("final_loss"),
           "wall_s": wall, "summary_wall_s": s.get("wall_time_s"), "steps_s": steps_s, "tracking_s": tracking_s,
           "lr_s": lr_s,
           "other_s": (wall - steps_s - tracking_s - lr_s) if None not in (wall, steps_s, tracking_s, lr_s) else None,
           "tracking_every": tr.get("every"), "tracking_route": tr.get("route"),
           "certificates": tr.get("certificates"), "bare_times": times,
           "bare_step_s": statistics.median(times) if times else None, "bare_method": m.get("bare_method"),
           "peak_bytes": m.get("peak_bytes"), "process_peak_bytes": m.get("process_peak_bytes"),
           "baseline_bytes": m.get("baseline_bytes"), "peak_method": m.get("method"),
           "summary_missing": list(m.get("summary_missing") or [])}
    den = denominator(s.get("plan"), problem, itemsize)
    row["denominator_bytes"] = den["total"] if den else None
    row["denominator_parts"] = den
    row["plan_total_bytes"] = (s.get("plan") or {}).get("total_bytes")
    row["plan_tracking_route"] = (s.get("plan") or {}).get("tracking_route")
    row["peak_over_denominator"] = _ratio(row["peak_bytes"], row["denominator_bytes"])
    pct = _ratio(tracking_s, wall)
    row["tracking_pct_of_wall"] = None if pct is None else 100.0 * pct
    row["wall_over_steps"] = _ratio(wall, steps_s)
    row["wall_over_bare_step"] = _ratio(wall, row["bare_step_s"])
    if row["train_status"] not in (None, "max_steps", "converged"):
        row["note"] = f"pyrgd.train stopped with status {row['train_status']}"
    return row


def main(argv=None) -> int:
    """``python -m pyrgd.bench.train_runs SPEC``: print :func:`child`'s answer as one JSON line."""
    import json
    import sys

    argv = sys.argv[1:] if argv is None else argv
    print(json.dumps(child(json.loads(argv[0]))), flush=True)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
