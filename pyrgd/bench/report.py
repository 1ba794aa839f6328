"""Targets, the text report and the JSON of a benchmark run.

The result (``pyrgd.bench.runner.run``, schema ``pyrgd-bench-1``) is a dict:

- ``schema``, ``date`` (UTC, ISO 8601), ``pyrgd_version``, ``mode`` (tiny|full), ``device`` (cpu|cuda),
  ``backend_requested``, ``fused_backend``, ``dtype``, ``repeats``, ``warmup``, ``seed``;
- ``machine``: CPU model, logical/usable CPUs, BLAS (threadpoolctl's view), pyrgd's C++ build and threads, torch,
  and on the GPU its name, memory, driver and runtime versions, CuPy;
- ``sgemm``: {"default": {n, threads, gflops, seconds, iqr, library, dtype, name}, "1": ..., "2": ...,
  "default:float64": ...} (per thread count and dtype run, keyed by pyrgd.bench.runner.rate_key: name SGEMM or
  DGEMM);
- ``fma_peak``: {"default": {gflops, threads, isa, dtype}, "1": ..., "default:float64": ...}: on the CPU the FMA
  roof (independent FMA chains on registers, pyrgd.backends.cpu.fma_peak_gflops), on the GPU the SIMT roof computed
  from the device's properties (pyrgd.bench.runner.simt_peak_gpu); the denominator of %peak and of the roofline
  bounds;
- ``problems``: one dict per problem: name, group, N, d, widths, activation, threads, lr, useful_flops, data_bytes
  (and data_bytes_parts), fused_flops (what the fused algorithm executes), fused_method (the step engine's: rows or neurons), fused_kept (the neurons the rows method keeps in its panels, None for neurons), peak_gflops, repeats, schedule, fused_backend, seconds_per_neuron, sgemm (the SGEMM rate measured just
  before the problem, at its thread count, in its dtype), gemm_name (SGEMM or DGEMM), gemm_gflops (the rate the
  share divides by; also as sgemm_gflops or dgemm_gflops), ranking (the candidates that ran and agreed with the fused
  step, fastest first), best_peer ({name, seconds, fused_speedup} of the fastest of torch_compile and jax_jit, or
  null), fused_pct_peak (the fused step's executed flops per second as % of peak_gflops), and ``candidates``:
  {name: row}. A row has ``status`` (ok | mismatch | skipped | failed), ``note`` when not ok, and when it ran:
  seconds (median), iqr, min, max, times, gflops, pct_gemm (and pct_sgemm or pct_dgemm, the same number),
  compile_seconds (the compiled peers: the compilation, never in a timed step), peak_bytes, peak_method,
  peak_over_data (peak_note where not measured), fused_speedup (its seconds over the fused seconds),
  rel_err_weights, rel_err_update, rel_err_loss, loss;
- a train problem (group L, ``kind`` "train", :mod:`pyrgd.bench.train_runs`) has ``steps`` (of the train run),
  ``repeats`` (bare engine steps timed), ``lr`` (what lr="auto" chose) and one row, ``candidates["train"]``:
  ``status`` (ok | skipped: train refused the run | failed), train_status, steps, backend, method, kept, lr,
  wall_s (seconds around the pyrgd.train call), summary_wall_s, steps_s, tracking_s, lr_s, other_s, tracking_every,
  tracking_route, certificates, bare_times, bare_step_s (their median), bare_method, peak_bytes (VmHWM - the RSS
  before the data), process_peak_bytes (VmHWM), baseline_bytes, peak_method, denominator_bytes (data + weights +
  the step's workspace) and denominator_parts, plan_total_bytes, peak_over_denominator, tracking_pct_of_wall,
  wall_over_steps, wall_over_bare_step, summary_missing (the summary keys it lacked);
- ``interleaved`` (CPU, when the run has two or more B4 sizes): {"B4": {rounds, schedule, seconds: {n1: median},
  iqr, times}}: the fused step of every size timed again in interleaved rounds (pyrgd.bench.runner.interleave_group);
  the B4 target uses these medians when present;
- ``targets``: [{id, text, status (PASS|FAIL|SKIP), measured, threshold, op, unit, detail}];
- ``complete``: False in the copies written after each problem while the run goes on, True at the end.
Non-finite numbers are written as null.
"""
from __future__ import annotations

import json
import math

from .candidates import PEERS

#: the performance targets. kind: speedup (baseline s / fused s >= threshold), best_peer (the fastest of the
#: ``candidates`` that ran, s / fused s >= threshold; SKIP where none ran), pct_sgemm (fused GFLOP/s as % of
#: SGEMM >= threshold), peak (fused peak / data bytes <= threshold), per_neuron_spread (max / min of the fused
#: seconds per neuron over the group <= threshold; from the interleaved timing where the run has it),
#: thread_scaling (1-thread s / 2-thread s >= threshold); and on the train problems (group L), from the row
#: ``candidates["train"]`` (pyrgd.bench.train_runs): train_peak (peak_bytes / (data + weights + step) <= threshold),
#: train_peak_gb (process_peak_bytes / 1e9 <= threshold), train_tracking (100 tracking_s / wall_s <= threshold, in
#: %), train_over_steps (wall_s / steps_s <= threshold), train_over_bare (wall_s / bare_step_s <= threshold)
TARGETS = (
    dict(id="B1_vs_chunked", device="cpu", kind="speedup", problem="B1", candidate="chunked", threshold=3.0,
         text="B1 fused >= 3x chunked NumPy"),
    dict(id="B1_vs_torch", device="cpu", kind="speedup", problem="B1", candidate="torch", threshold=3.0,
         text="B1 fused >= 3x PyTorch"),
    dict(id="B2_vs_chunked", device="cpu", kind="speedup", problem="B2", candidate="chunked", threshold=2.0,
         text="B2 fused >= 2x chunked NumPy"),
    dict(id="B2_vs_torch", device="cpu", kind="speedup", problem="B2", candidate="torch", threshold=2.0,
         text="B2 fused >= 2x PyTorch"),
    dict(id="B1_vs_best_peer", device="cpu", kind="best_peer", problem="B1", candidates=PEERS, threshold=1.8,
         text="B1 fused >= 1.8x the best of torch.compile and JAX jit"),
    dict(id="B2_vs_best_peer", device="cpu", kind="best_peer", problem="B2", candidates=PEERS, threshold=1.8,
         text="B2 fused >= 1.8x the best of torch.compile and JAX jit"),
    dict(id="B1d_vs_best_peer", device="cpu", kind="best_peer", problem="B1d", candidates=PEERS, threshold=1.8,
         text="B1d (float64) fused >= 1.8x the best of torch.compile and JAX jit"),
    dict(id="B1_sgemm", device="cpu", kind="pct_sgemm", problem="B1", threshold=50.0,
         text="B1 fused GFLOP/s >= 50% of SGEMM"),
    dict(id="B2_sgemm", device="cpu", kind="pct_sgemm", problem="B2", threshold=50.0,
         text="B2 fused GFLOP/s >= 50% of SGEMM"),
    dict(id="B3_memory", device="cpu", kind="peak", problem="B3", threshold=1.5,
         text="B3 fused peak memory <= 1.5x data bytes"),
    dict(id="B4_per_neuron", device="cpu", kind="per_neuron_spread", group="B4", threshold=1.15,
         text="B4 fused time per neuron within 15% across n1"),
    dict(id="threads", device="cpu", kind="thread_scaling", problems=("T1", "T2"), threshold=1.7,
         text="B1 fused with 2 threads >= 1.7x 1 thread"),
    dict(id="T_load", device="cpu", kind="load_scaling", problem="T_load", threshold=1.3,
         text="B1 with 2 threads beside a busy process >= 1.3x 1 thread, never slower, same bits"),
    dict(id="M1_vs_1", device="cpu", kind="mpi_scaling", problem="M1", against="1", threshold=1.8,
         text="M1 (B1 on mpiexec -n 2, 1 thread per rank), neurons method: >= 1.8x one rank on 1 thread, same bits"),
    dict(id="M1_vs_2", device="cpu", kind="mpi_scaling", problem="M1", against="2", threshold=0.9,
         text="M1 (B1 on mpiexec -n 2, 1 thread per rank), neurons method: >= 0.9x one process on 2 threads, same "
              "bits"),
    dict(id="M1r_vs_1", device="cpu", kind="mpi_scaling", problem="M1", against="1", method="rows", threshold=1.8,
         text="M1, rows method (the default): 2 ranks >= 1.8x one rank on 1 thread, same bits"),
    dict(id="M1r_vs_2", device="cpu", kind="mpi_scaling", problem="M1", against="2", method="rows", threshold=0.9,
         text="M1, rows method (the default): 2 ranks >= 0.9x one process on 2 threads, same bits"),
    dict(id="L1_memory", device="cpu", kind="train_peak", problem="L1", threshold=1.3,
         text="L1 train peak RSS <= 1.3x (data + weights + step workspace)"),
    dict(id="L1_tracking", device="cpu", kind="train_tracking", problem="L1", threshold=10.0,
         text="L1 train tracking <= 10% of the wall time"),
    dict(id="L2_memory", device="cpu", kind="train_peak_gb", problem="L2", threshold=2.0,
         text="L2 train (one step) peak RSS <= 2 GB"),
    dict(id="L2_time", device="cpu", kind="train_over_bare", problem="L2", threshold=1.2,
         text="L2 train (one step) wall time <= 1.2x one bare engine step"),
    dict(id="B1_track_overhead", device="cpu", kind="train_over_steps", problem="B1_track", threshold=1.1,
         text="B1 train (200 steps, default tracking) wall time <= 1.1x the steps' time"),
    dict(id="G1_sgemm", device="cuda", kind="pct_sgemm", problem="G1", threshold=60.0,
         text="G1 fused GFLOP/s >= 60% of cuBLAS SGEMM"),
    dict(id="G1_vs_torch", device="cuda", kind="speedup", problem="G1", candidate="torch", threshold=2.0,
         text="G1 fused >= 2x unfused PyTorch"),
    dict(id="G1_vs_chunked", device="cuda", kind="speedup", problem="G1", candidate="chunked", threshold=1.5,
         text="G1 fused >= 1.5x chunked CuPy"),
    dict(id="G1_vs_best_peer", device="cuda", kind="best_peer", problem="G1", candidates=PEERS, threshold=1.8,
         text="G1 fused >= 1.8x the best of torch.compile and JAX jit (float32, TF32 off)"),
    dict(id="G2_memory", device="cuda", kind="peak", problem="G2", threshold=1.2,
         text="G2 fused peak memory <= 1.2x data bytes"),
)


def _problem(result, name):
    for p in result.get("problems", []):
        if p.get("name") == name:
            return p
    return None


def _ok(row) -> bool:
    return bool(row) and row.get("status") == "ok"


def _why(row, name) -> str:
    if not row:
        return f"{name} did not run"
    return f"{name} {row.get('status', '?')}: {row.get('note', 'no timing')}"


def attainable_speedup(p: dict, baseline_seconds: float):
    """baseline s / (the fused step's flops at the machine's FMA roof measured in the same run): the largest
    speed-up over that baseline that any implementation of the fused algorithm could show here (None without the
    figures)."""
    ff, rate = p.get("fused_flops"), p.get("peak_gflops")
    if not ff or not rate or not baseline_seconds:
        return None
    return baseline_seconds / (ff / (rate * 1e9))


def _evaluate(t: dict, result: dict) -> tuple:
    """(status, measured, detail) of one target."""
    kind = t["kind"]
    if kind == "per_neuron_spread":
        ps = [p for p in result.get("problems", []) if p.get("group") == t["group"]]
        if len(ps) < 2:
            return "SKIP", None, f"{t['group']} needs at least two sizes (ran {len(ps)})"
        bad = [p["name"] for p in ps if not _ok(p["candidates"].get("fused")) or "seconds" not in p["candidates"]["fused"]]
        if bad:
            return "SKIP", None, f"fused has no timing on {', '.join(bad)}"
        per = {p["widths"][0]: p["candidates"]["fused"]["seconds"] / p["widths"][0] for p in ps}
        sep = max(per.values()) / min(per.values())
        inter = (result.get("interleaved") or {}).get(t["group"])
        how = "one size after the other"
        if inter and all(str(n) in inter["seconds"] for n in per):
            # the interleaved timing (all sizes in the same stretch of the machine) decides; the other is shown
            per = {n: inter["seconds"][str(n)] / n for n in per}
            how = f"interleaved, {inter['rounds']} rounds; {sep:.2f}x timed one size after the other"
        lo, hi = min(per.values()), max(per.values())
        detail = ", ".join(f"n1={n}: {v * 1e6:.3g} us" for n, v in sorted(per.items()))
        return ("PASS" if hi / lo <= t["threshold"] else "FAIL"), hi / lo, f"max/min of s per neuron ({detail}; {how})"
    if kind == "thread_scaling":
        a, b = (_problem(result, n) for n in t["problems"])
        if a is None or b is None:
            return "SKIP", None, f"needs problems {' and '.join(t['problems'])}"
        fa, fb = a["candidates"].get("fused"), b["candidates"].get("fused")
        if not (_ok(fa) and _ok(fb) and "seconds" in fa and "seconds" in fb):
            return "SKIP", None, "fused has no timing at both thread counts"
        r = fa["seconds"] / fb["seconds"]
        return ("PASS" if r >= t["threshold"] else "FAIL"), r, (
            f"{fa['seconds']:.4g} s with {a.get('threads')} thread(s), {fb['seconds']:.4g} s with {b.get('threads')}")
    p = _problem(result, t["problem"])
    if p is None:
        return "SKIP", None, f"{t['problem']} not run"
    if kind.startswith("train_"):
        return _evaluate_train(t, p)
    if kind == "load_scaling":
        from .load import evaluate

        return evaluate(t, p)
    if kind == "mpi_scaling":
        from .mpi_run import evaluate

        return evaluate(t, p)
    fused = p["candidates"].get("fused")
    if not _ok(fused) or "seconds" not in fused:
        return ("FAIL" if fused and fused.get("status") in ("failed", "mismatch") else "SKIP"), None, \
            _why(fused, "fused")
    if kind == "speedup":
        c = p["candidates"].get(t["candidate"])
        if not c or c.get("status") != "ok" or "seconds" not in c:
            return "SKIP", None, _why(c, t["candidate"])
        r = c["seconds"] / fused["seconds"]
        detail = f"{t['candidate']} {c['seconds']:.4g} s, fused {fused['seconds']:.4g} s per step"
        bound = attainable_speedup(p, c["seconds"])
        if bound is not None:
            detail += (f"; roofline: the fused step's {p['fused_flops'] / 1e9:.4g} GFLOP at the FMA peak "
                       f"({p['peak_gflops']:.4g} GFLOP/s) take >= {p['fused_flops'] / p['peak_gflops'] / 1e9:.4g} "
                       f"s, so at most {bound:.2f}x is attainable here")
        return ("PASS" if r >= t["threshold"] else "FAIL"), r, detail
    if kind == "best_peer":
        ran = {n: p["candidates"][n] for n in t["candidates"] if _ok(p["candidates"].get(n))
               and p["candidates"][n].get("seconds")}
        if not ran:
            return "SKIP", None, "; ".join(_why(p["candidates"].get(n), n) for n in t["candidates"])
        best = min(ran, key=lambda n: ran[n]["seconds"])
        r = ran[best]["seconds"] / fused["seconds"]
        others = [f"{n} {ran[n]['seconds']:.4g} s" for n in ran if n != best]
        others += [_why(p["candidates"].get(n), n) for n in t["candidates"] if n not in ran]
        detail = f"best peer {best} {ran[best]['seconds']:.4g} s, fused {fused['seconds']:.4g} s per step"
        if others:
            detail += f" ({'; '.join(others)})"
        if p.get("fused_pct_peak") is not None:
            detail += f"; fused at {p['fused_pct_peak']:.3g}% of the peak"
        bound = attainable_speedup(p, ran[best]["seconds"])
        if bound is not None:
            detail += f"; at most {bound:.2f}x attainable at the peak"
        return ("PASS" if r >= t["threshold"] else "FAIL"), r, detail
    if kind == "pct_sgemm":
        pct = fused.get("pct_sgemm")
        if pct is None:
            return "SKIP", None, "no SGEMM rate"
        return ("PASS" if pct >= t["threshold"] else "FAIL"), pct, (
            f"{fused.get('gflops', float('nan')):.4g} GFLOP/s of {p.get('sgemm_gflops', float('nan')):.4g}")
    if kind == "peak":
        r = fused.get("peak_over_data")
        if r is None:
            return "SKIP", None, fused.get("peak_note", "peak memory not measured")
        return ("PASS" if r <= t["threshold"] else "FAIL"), r, (
            f"peak {fused['peak_bytes'] / 2**20:.1f} MiB, data {p['data_bytes'] / 2**20:.1f} MiB "
            f"({fused.get('peak_method', '?')})")
    raise ValueError(f"unknown target kind {kind!r}")  # pragma: no cover


#: the unit of each kind's measured value (x: a ratio)
UNITS = {"pct_sgemm": "%", "train_tracking": "%", "train_peak_gb": "GB"}
#: kinds whose measured value must stay at or below the threshold (the others: at or above)
AT_MOST = ("peak", "per_neuron_spread", "train_peak", "train_peak_gb", "train_tracking", "train_over_steps",
           "train_over_bare")


def _mib(n) -> str:
    return "?" if n is None else f"{n / 2**20:.1f} MiB"


def _secs(x) -> str:
    return "?" if x is None else f"{x:.3g} s"


def _time_parts(r: dict) -> str:
    return (f"wall {_secs(r.get('wall_s'))} = steps {_secs(r.get('steps_s'))} + tracking {_secs(r.get('tracking_s'))}"
            f" + lr {_secs(r.get('lr_s'))} + other {_secs(r.get('other_s'))}")


def _tracking_words(r: dict) -> str:
    return (f"{r.get('certificates', '?')} certificate{'' if r.get('certificates') == 1 else 's'}, route "
            f"{r.get('tracking_route', '?')}, every {r.get('tracking_every', '?')}")


def _evaluate_train(t: dict, p: dict) -> tuple:
    """(status, measured, detail) of a target on a train problem's row (see TARGETS)."""
    kind = t["kind"]
    r = p["candidates"].get("train")
    if not r or r.get("status") != "ok":
        return ("FAIL" if r and r.get("status") == "failed" else "SKIP"), None, _why(r, "pyrgd.train")
    missing = f"; the summary lacked {', '.join(r['summary_missing'])}" if r.get("summary_missing") else ""
    if r.get("train_status") not in (None, "max_steps", "converged"):  # e.g. diverged: fewer steps than asked
        missing += f"; pyrgd.train stopped with status {r['train_status']} after {r.get('steps', '?')} steps"
    if kind == "train_peak":
        v = r.get("peak_over_denominator")
        parts = r.get("denominator_parts") or {}
        detail = (f"peak RSS added {_mib(r.get('peak_bytes'))} (process {_mib(r.get('process_peak_bytes'))}, "
                  f"{r.get('peak_method', '?')}) over data {_mib(parts.get('data'))} + weights "
                  f"{_mib(parts.get('weights'))} + step {_mib(parts.get('step'))} = {_mib(r.get('denominator_bytes'))}"
                  f"; the plan's total {_mib(r.get('plan_total_bytes'))}")
        if v is None:
            return "SKIP", None, "no peak or no plan to divide by: " + detail + missing
    elif kind == "train_peak_gb":
        b = r.get("process_peak_bytes")
        v = None if b is None else b / 1e9
        detail = (f"the process's peak RSS {_mib(b)} (the run added {_mib(r.get('peak_bytes'))} to "
                  f"{_mib(r.get('baseline_bytes'))} of interpreter and libraries; {r.get('peak_method', '?')})")
        if v is None:
            return "SKIP", None, "peak memory not measured"
    elif kind == "train_tracking":
        v = r.get("tracking_pct_of_wall")
        detail = f"{_time_parts(r)} ({_tracking_words(r)})"
    elif kind == "train_over_steps":
        v = r.get("wall_over_steps")
        detail = f"{_time_parts(r)} ({_tracking_words(r)}; {r.get('steps', '?')} steps)"
        wo = _ratio_or_none(r.get("wall_s"), r.get("lr_s"), r.get("steps_s"))
        if wo is not None:
            detail += f"; without the lr='auto' rule {wo:.2f}x"
    elif kind == "train_over_bare":
        v = r.get("wall_over_bare_step")
        n = len(r.get("bare_times") or [])
        detail = (f"{_time_parts(r)}; bare step (evaluate + update, method {r.get('bare_method', '?')}) "
                  f"{_secs(r.get('bare_step_s'))}" + (f" (median of {n})" if n > 1 else ""))
        wo = _ratio_or_none(r.get("wall_s"), r.get("lr_s"), r.get("bare_step_s"))
        if wo is not None:
            detail += f"; without the lr='auto' rule {wo:.2f}x"
    else:  # pragma: no cover
        raise ValueError(f"unknown target kind {kind!r}")
    if v is None:
        return "SKIP", None, "not measured: " + detail + missing
    return ("PASS" if v <= t["threshold"] else "FAIL"), v, detail + missing


def _ratio_or_none(wall, minus, den):
    if None in (wall, minus, den) or not den > 0:
        return None
    return (wall - minus) / den


def evaluate_targets(result: dict) -> list[dict]:
    """Every target of the result's device, evaluated: PASS / FAIL with the measured ratio, SKIP with why."""
    out = []
    for t in TARGETS:
        if t["device"] != result.get("device", "cpu"):
            continue
        status, measured, detail = _evaluate(t, result)
        op = "<=" if t["kind"] in AT_MOST else ">="
        out.append({"id": t["id"], "text": t["text"], "status": status, "measured": measured,
                    "threshold": t["threshold"], "op": op, "unit": UNITS.get(t["kind"], "x"), "detail": detail})
    return out


# ------------------------------------------------------------------------------------------------ text
def _f(v, spec, width, missing="-"):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return f"{missing:>{width}}"
    return f"{format(v, spec):>{width}}"


def format_target(t: dict) -> str:
    # results written before targets had a unit: % for the SGEMM ones, x for the others
    unit = t.get("unit") or ("%" if t["id"].endswith("sgemm") else "x")
    if t["measured"] is None:
        return f"{t['status']:4}  {t['text']}: {t['detail']}"
    m = {"%": f"{t['measured']:.1f}%", "GB": f"{t['measured']:.3g} GB"}.get(unit, f"{t['measured']:.2f}x")
    thr = f"{t['threshold']:g}{' GB' if unit == 'GB' else unit}"
    return f"{t['status']:4}  {t['text']}: measured {m} (target {t['op']} {thr}); {t['detail']}"


def format_report(result: dict) -> str:
    """The human-readable report: facts, SGEMM, one table row per candidate, the target lines."""
    m = result.get("machine", {})
    lines = [f"pyrgd bench {result.get('pyrgd_version', '?')}  {result.get('date', '')}  mode {result.get('mode')}  "
             f"device {result.get('device')}  fused backend {result.get('fused_backend')}  {result.get('dtype')}"]
    blas = ", ".join(f"{b.get('internal_api')} {b.get('version')} ({b.get('num_threads')} threads)"
                     for b in m.get("blas", []) if b.get("user_api", "blas") == "blas") or "unknown"
    lines.append(f"CPU {m.get('cpu_model')}: {m.get('logical_cpus')} logical CPUs, {m.get('usable_cpus')} usable; "
                 f"pyrgd threads {m.get('pyrgd_cpu_threads', '-')}; BLAS {blas}; torch {m.get('torch') or 'absent'}; "
                 f"jax {m.get('jax') or 'absent'}")
    src = m.get("source")
    if src:
        lines.append(f"source: git {src['commit'][:12]}" + (f" with uncommitted changes to {', '.join(src['modified'])}"
                                                           if src["modified"] else " (clean)"))
    if result.get("device") == "cuda":
        lines.append(f"GPU {m.get('gpu_name')} ({(m.get('gpu_memory_bytes') or 0) / 2**30:.0f} GiB), driver "
                     f"{m.get('cuda_driver')}, runtime {m.get('cuda_runtime')}, CuPy {m.get('cupy')}")
    if result.get("load_average_start") is not None:
        lines.append(f"load average (1, 5, 15 min) at start {result['load_average_start']}, at end "
                     f"{result.get('load_average_end')} (on {m.get('usable_cpus')} CPUs: above that, other work "
                     "shared the machine)")
    sg = result.get("sgemm", {})
    if "default" in sg:
        d = sg["default"]
        extra = "".join(f", {_rate_words(k)}: {v['gflops']:.1f}" for k, v in sg.items() if k != "default")
        lines.append(f"{d.get('name', 'SGEMM')} ({d.get('library')}, {d.get('dtype', 'float32')} {d['n']}^3) at the "
                     f"start: {d['gflops']:.1f} GFLOP/s{extra}; again before each problem, in its dtype (%GEMM uses "
                     "that one)")
    fp = {k: v for k, v in (result.get("fma_peak") or {}).items() if v}
    if "default" in fp:
        d = fp["default"]
        extra = "".join(f", {_rate_words(k)}: {v['gflops']:.1f}" for k, v in fp.items() if k != "default")
        how = (d.get("method") or "independent FMA chains on registers")
        lines.append(f"{'FMA' if result.get('device', 'cpu') == 'cpu' else 'SIMT'} peak ({d.get('isa')}, "
                     f"{d.get('dtype')}, {how}): {d['gflops']:.1f} GFLOP/s"
                     + (f" with {d.get('threads')} threads" if d.get("threads") else "")
                     + f"{extra} (the roof of %peak and of the roofline bounds of the speed-up targets)")
    head = (f"{'problem':9}{'candidate':14}{'s/step':>10}{'IQR':>9}{'GFLOP/s':>9}{'%GEMM':>7}{'peak MiB':>10}"
            f"{'peak/data':>10}{'fused x':>8}{'err W':>9}{'err dW':>9}")
    steps = [p for p in result.get("problems", []) if p.get("kind", "step") == "step"]
    loads = [p for p in result.get("problems", []) if p.get("kind") == "load"]
    mpis = [p for p in result.get("problems", []) if p.get("kind") == "mpi"]
    trains = [p for p in result.get("problems", []) if p.get("kind") == "train"]
    if steps:
        lines += ["", head]
    for p in steps:
        lines.append(f"{p['name']}: N={p['N']} d={p['d']} widths={p['widths']} {p['activation']}"
                     + (f" threads={p['threads']}" if p.get("threads") else "")
                     + f"; {p['useful_flops'] / 1e9:.4g} useful GFLOP/step"
                     + (f" ({p['fused_flops'] / 1e9:.4g} executed by fused"
                        + (f", method {p['fused_method']}" if p.get("fused_method") else "")
                        + (f", {p['fused_kept']} of {p['widths'][0]} neurons kept"
                           if p.get("fused_kept") is not None and p["fused_kept"] < p["widths"][0] else "") + ")"
                        if p.get("fused_flops") else "")
                     + (f", {p['dtype']}" if p.get("dtype") and p["dtype"] != result.get("dtype") else "")
                     + f", data {p['data_bytes'] / 2**20:.1f} MiB,"
                     + (f" {p.get('gemm_name', 'SGEMM')} {_gemm(p):.4g} GFLOP/s," if _gemm(p) else "")
                     + f" {p['repeats']} timed steps ({p.get('schedule', '')})")
        for name, r in p["candidates"].items():
            if r.get("status") in ("skipped", "failed"):
                lines.append(f"{p['name']:9}{name:14}  {r['status']}: {r.get('note', '')}")
                continue
            peak = r.get("peak_bytes")
            lines.append(
                f"{p['name']:9}{name:14}{_f(r.get('seconds'), '.4g', 10)}{_f(r.get('iqr'), '.2g', 9)}"
                f"{_f(r.get('gflops'), '.4g', 9)}{_f(r.get('pct_gemm', r.get('pct_sgemm')), '.1f', 7)}"
                f"{_f(peak / 2**20 if peak is not None else None, '.1f', 10)}{_f(r.get('peak_over_data'), '.2f', 10)}"
                f"{_f(r.get('fused_speedup'), '.2f', 8)}{_f(r.get('rel_err_weights'), '.1e', 9)}"
                f"{_f(r.get('rel_err_update'), '.1e', 9)}"
                + (f"  compile {r['compile_seconds']:.3g} s" if r.get("compile_seconds") is not None else "")
                + (f"  {r['status'].upper()}: {r.get('note', '')}" if r.get("status") == "mismatch" else ""))
        rank = ranking_line(p)
        if rank:
            lines.append(f"{'':9}{rank}")
    if steps:
        lines += ["", "fused x: the candidate's s/step over the fused s/step; %GEMM: useful GFLOP/s over the SGEMM "
                      "(float32) or DGEMM (float64) rate; err W / err dW: relative error of the updated weights / of "
                      "the update against the fused step (same initial weights); compile: the compiled peers' "
                      "compilation, outside every timed step"]
    if trains:
        lines += ["", "pyrgd.train with its defaults (lr auto, tracking auto, method auto), each in a fresh process; "
                      "wall: around the call; peak: VmHWM less the RSS before the data; bare step: evaluate + update "
                      "of a new step engine on the same arrays after the run"]
    for p in trains:
        lines += _train_lines(p)
    if loads:
        from .load import load_lines

        lines.append("")
        for p in loads:
            lines += load_lines(p)
    if mpis:
        from .mpi_run import mpi_lines

        lines.append("")
        for p in mpis:
            lines += mpi_lines(p)
    for g, it in (result.get("interleaved") or {}).items():
        per = ", ".join(f"n1={n}: {v / int(n) * 1e6:.3g} us (IQR {it['iqr'][n] / int(n) * 1e6:.2g})"
                        for n, v in sorted(it["seconds"].items(), key=lambda kv: int(kv[0])))
        lines.append(f"{g} interleaved ({it['rounds']} {it['schedule']}): fused s per neuron {per}")
    lines.append("")
    lines += [format_target(t) for t in result.get("targets", [])]
    return "\n".join(lines)


def _rate_words(key: str) -> str:
    """'1' -> '1 thread', '2:float64' -> '2 threads float64', 'default:float64' -> 'float64'."""
    threads, _, dtype = key.partition(":")
    words = [] if threads == "default" else [f"{threads} thread{'s' if threads != '1' else ''}"]
    return " ".join(words + ([dtype] if dtype else [])) or threads


def _gemm(p: dict):
    """The GEMM rate a problem's share divides by (results before float64 problems: sgemm_gflops)."""
    return p.get("gemm_gflops") if p.get("gemm_gflops") is not None else p.get("sgemm_gflops")


def ranking_line(p: dict) -> str:
    """One line: the candidates of a problem's result fastest first, each with its time over the fused step's, the
    best compiled peer, the fused step's share of the peak ('' where nothing ran)."""
    ranking = p.get("ranking")
    rows = p.get("candidates", {})
    if ranking is None:  # a result written before the ranking: rank it now
        ranking = [n for _, n in sorted((r["seconds"], n) for n, r in rows.items()
                                        if r.get("status") == "ok" and r.get("seconds"))]
    if not ranking:
        return ""
    tf = (rows.get("fused") or {}).get("seconds")
    parts = []
    for n in ranking:
        s = rows[n]["seconds"]
        parts.append(f"{n} {s:.3g} s" + (f" ({s / tf:.2f}x)" if tf and n != "fused" else ""))
    line = "ranking: " + " < ".join(parts)
    bp = p.get("best_peer")
    if bp and bp.get("fused_speedup"):
        line += f"; best peer {bp['name']} (its time {bp['fused_speedup']:.2f}x the fused step's)"
    if p.get("fused_pct_peak") is not None:
        line += f"; fused step at {p['fused_pct_peak']:.3g}% of the peak"
    return line


def _train_lines(p: dict) -> list[str]:
    r = p["candidates"].get("train") or {}
    head = (f"{p['name']}: N={p['N']} d={p['d']} widths={p['widths']} {p['activation']}; pyrgd.train "
            f"{p.get('steps')} step{'' if p.get('steps') == 1 else 's'}")
    if r.get("status") != "ok":
        return [head, f"  {r.get('status', 'not run')}: {r.get('note', '')}"]
    head += f", backend {r.get('backend')}, method {r.get('method')}"
    if r.get("kept") is not None and r["kept"] < p["widths"][0]:
        head += f" ({r['kept']} of {p['widths'][0]} neurons kept)"
    if r.get("lr") is not None:
        head += f", lr {r['lr']:.4g} ({'auto' if r.get('lr_rule') not in (None, 'given') else 'given'})"
    out = [head]
    n = len(r.get("bare_times") or [])
    out.append(f"  {_time_parts(r)}; {_tracking_words(r)}; bare step {_secs(r.get('bare_step_s'))}"
               + (f" (median of {n})" if n > 1 else "") + f"; train status {r.get('train_status')}, loss "
               + (f"{r['initial_loss']:.4g} -> {r['final_loss']:.4g}" if r.get("initial_loss") is not None
                  and r.get("final_loss") is not None else "?"))
    parts = r.get("denominator_parts") or {}
    out.append(f"  peak RSS: the run added {_mib(r.get('peak_bytes'))} to {_mib(r.get('baseline_bytes'))} (process "
               f"{_mib(r.get('process_peak_bytes'))}, {r.get('peak_method')}); data {_mib(parts.get('data'))} + "
               f"weights {_mib(parts.get('weights'))} + step {_mib(parts.get('step'))} = "
               f"{_mib(r.get('denominator_bytes'))} (plan total {_mib(r.get('plan_total_bytes'))}): "
               + (f"{r['peak_over_denominator']:.2f}x" if r.get("peak_over_denominator") is not None else "-"))
    ratios = [f"{k} {r[k]:.3g}{u}" for k, u in (("tracking_pct_of_wall", "%"), ("wall_over_steps", "x"),
                                                  ("wall_over_bare_step", "x")) if r.get(k) is not None]
    if ratios:
        out.append("  " + ", ".join(ratios))
    if r.get("summary_missing"):
        out.append(f"  the summary lacked {', '.join(r['summary_missing'])}")
    return out


# ------------------------------------------------------------------------------------------------ JSON
def json_safe(obj):
    """A copy of ``obj`` that json.dumps(allow_nan=False) accepts: non-finite floats become None, numpy scalars
    Python numbers, tuples lists."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):  # numpy scalar
        try:
            obj = obj.item()
        except (TypeError, ValueError):
            return str(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


def to_json(result: dict) -> str:
    return json.dumps(json_safe(result), indent=1, allow_nan=False)
