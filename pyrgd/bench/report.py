"""Targets, the text report and the JSON of a benchmark run.

The result (``pyrgd.bench.runner.run``, schema ``pyrgd-bench-1``) is a dict:

- ``schema``, ``date`` (UTC, ISO 8601), ``pyrgd_version``, ``mode`` (tiny|full), ``device`` (cpu|cuda),
  ``backend_requested``, ``fused_backend``, ``dtype``, ``repeats``, ``warmup``, ``seed``;
- ``machine``: CPU model, logical/usable CPUs, BLAS (threadpoolctl's view), pyrgd's C++ build and threads, torch,
  and on the GPU its name, memory, driver and runtime versions, CuPy;
- ``sgemm``: {"default": {n, threads, gflops, seconds, iqr, library}, "1": ..., "2": ...} (per thread count run);
- ``fma_peak`` (CPU): {"default": {gflops, threads, isa, dtype}, "1": ...}: the FMA roof (independent FMA chains on
  registers, pyrgd.backends.cpu.fma_peak_gflops), the denominator of %peak and of the roofline bounds;
- ``problems``: one dict per problem: name, group, N, d, widths, activation, threads, lr, useful_flops, data_bytes
  (and data_bytes_parts), fused_flops (what the fused algorithm executes), fused_method (the step engine's: rows or neurons), fused_kept (the neurons the rows method keeps in its panels, None for neurons), peak_gflops, repeats, schedule, fused_backend, seconds_per_neuron, sgemm (the SGEMM rate measured just
  before the problem, at its thread count) and sgemm_gflops (the rate %SGEMM divides by), and ``candidates``:
  {name: row}. A row has ``status`` (ok | mismatch | skipped | failed), ``note`` when not ok, and when it ran:
  seconds (median), iqr, min, max, times, gflops, pct_sgemm, peak_bytes, peak_method, peak_over_data,
  fused_speedup (its seconds over the fused seconds), rel_err_weights, rel_err_update, rel_err_loss, loss;
- ``interleaved`` (CPU, when the run has two or more B4 sizes): {"B4": {rounds, schedule, seconds: {n1: median},
  iqr, times}}: the fused step of every size timed again in interleaved rounds (pyrgd.bench.runner.interleave_group);
  the B4 target uses these medians when present;
- ``targets``: [{id, text, status (PASS|FAIL|SKIP), measured, threshold, op, detail}];
- ``complete``: False in the copies written after each problem while the run goes on, True at the end.
Non-finite numbers are written as null.
"""
from __future__ import annotations

import json
import math

#: the performance targets. kind: speedup (baseline s / fused s >= threshold), pct_sgemm (fused GFLOP/s as % of
#: SGEMM >= threshold), peak (fused peak / data bytes <= threshold), per_neuron_spread (max / min of the fused
#: seconds per neuron over the group <= threshold; from the interleaved timing where the run has it),
#: thread_scaling (1-thread s / 2-thread s >= threshold)
TARGETS = (
    dict(id="B1_vs_chunked", device="cpu", kind="speedup", problem="B1", candidate="chunked", threshold=3.0,
         text="B1 fused >= 3x chunked NumPy"),
    dict(id="B1_vs_torch", device="cpu", kind="speedup", problem="B1", candidate="torch", threshold=3.0,
         text="B1 fused >= 3x PyTorch"),
    dict(id="B2_vs_chunked", device="cpu", kind="speedup", problem="B2", candidate="chunked", threshold=2.0,
         text="B2 fused >= 2x chunked NumPy"),
    dict(id="B2_vs_torch", device="cpu", kind="speedup", problem="B2", candidate="torch", threshold=2.0,
         text="B2 fused >= 2x PyTorch"),
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
    dict(id="G1_sgemm", device="cuda", kind="pct_sgemm", problem="G1", threshold=60.0,
         text="G1 fused GFLOP/s >= 60% of cuBLAS SGEMM"),
    dict(id="G1_vs_torch", device="cuda", kind="speedup", problem="G1", candidate="torch", threshold=2.0,
         text="G1 fused >= 2x unfused PyTorch"),
    dict(id="G1_vs_chunked", device="cuda", kind="speedup", problem="G1", candidate="chunked", threshold=1.5,
         text="G1 fused >= 1.5x chunked CuPy"),
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


def evaluate_targets(result: dict) -> list[dict]:
    """Every target of the result's device, evaluated: PASS / FAIL with the measured ratio, SKIP with why."""
    out = []
    for t in TARGETS:
        if t["device"] != result.get("device", "cpu"):
            continue
        status, measured, detail = _evaluate(t, result)
        op = "<=" if t["kind"] in ("peak", "per_neuron_spread") else ">="
        out.append({"id": t["id"], "text": t["text"], "status": status, "measured": measured,
                    "threshold": t["threshold"], "op": op, "detail": detail})
    return out


# ------------------------------------------------------------------------------------------------ text
def _f(v, spec, width, missing="-"):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return f"{missing:>{width}}"
    return f"{format(v, spec):>{width}}"


def format_target(t: dict) -> str:
    unit = "%" if t["id"].endswith("sgemm") else "x"
    if t["measured"] is None:
        return f"{t['status']:4}  {t['text']}: {t['detail']}"
    m = f"{t['measured']:.1f}%" if unit == "%" else f"{t['measured']:.2f}x"
    thr = f"{t['threshold']:g}{unit}"
    return f"{t['status']:4}  {t['text']}: measured {m} (target {t['op']} {thr}); {t['detail']}"


def format_report(result: dict) -> str:
    """The human-readable report: facts, SGEMM, one table row per candidate, the target lines."""
    m = result.get("machine", {})
    lines = [f"pyrgd bench {result.get('pyrgd_version', '?')}  {result.get('date', '')}  mode {result.get('mode')}  "
             f"device {result.get('device')}  fused backend {result.get('fused_backend')}  {result.get('dtype')}"]
    blas = ", ".join(f"{b.get('internal_api')} {b.get('version')} ({b.get('num_threads')} threads)"
                     for b in m.get("blas", []) if b.get("user_api", "blas") == "blas") or "unknown"
    lines.append(f"CPU {m.get('cpu_model')}: {m.get('logical_cpus')} logical CPUs, {m.get('usable_cpus')} usable; "
                 f"pyrgd threads {m.get('pyrgd_cpu_threads', '-')}; BLAS {blas}; torch {m.get('torch') or 'absent'}")
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
        extra = "".join(f", {k} thread{'s' if k != '1' else ''}: {v['gflops']:.1f}" for k, v in sg.items()
                        if k != "default")
        lines.append(f"SGEMM ({d.get('library')}, float32 {d['n']}^3) at the start: {d['gflops']:.1f} GFLOP/s{extra}"
                     "; again before each problem (%SGEMM uses that one)")
    fp = {k: v for k, v in (result.get("fma_peak") or {}).items() if v}
    if "default" in fp:
        d = fp["default"]
        extra = "".join(f", {k} thread{'s' if k != '1' else ''}: {v['gflops']:.1f}" for k, v in fp.items()
                        if k != "default")
        lines.append(f"FMA peak ({d.get('isa')}, {d.get('dtype')}, independent FMA chains on registers): "
                     f"{d['gflops']:.1f} GFLOP/s with {d.get('threads')} threads{extra} (the roof of the roofline "
                     "bounds of the speed-up targets)")
    head = (f"{'problem':9}{'candidate':10}{'s/step':>10}{'IQR':>9}{'GFLOP/s':>9}{'%SGEMM':>7}{'peak MiB':>10}"
            f"{'peak/data':>10}{'fused x':>8}{'err W':>9}{'err dW':>9}")
    lines += ["", head]
    for p in result.get("problems", []):
        lines.append(f"{p['name']}: N={p['N']} d={p['d']} widths={p['widths']} {p['activation']}"
                     + (f" threads={p['threads']}" if p.get("threads") else "")
                     + f"; {p['useful_flops'] / 1e9:.4g} useful GFLOP/step"
                     + (f" ({p['fused_flops'] / 1e9:.4g} executed by fused"
                        + (f", method {p['fused_method']}" if p.get("fused_method") else "")
                        + (f", {p['fused_kept']} of {p['widths'][0]} neurons kept"
                           if p.get("fused_kept") is not None and p["fused_kept"] < p["widths"][0] else "") + ")"
                        if p.get("fused_flops") else "")
                     + f", data {p['data_bytes'] / 2**20:.1f} MiB,"
                     + (f" SGEMM {p['sgemm_gflops']:.4g} GFLOP/s," if p.get("sgemm_gflops") else "")
                     + f" {p['repeats']} timed steps ({p.get('schedule', '')})")
        for name, r in p["candidates"].items():
            if r.get("status") in ("skipped", "failed"):
                lines.append(f"{p['name']:9}{name:10}  {r['status']}: {r.get('note', '')}")
                continue
            peak = r.get("peak_bytes")
            lines.append(
                f"{p['name']:9}{name:10}{_f(r.get('seconds'), '.4g', 10)}{_f(r.get('iqr'), '.2g', 9)}"
                f"{_f(r.get('gflops'), '.4g', 9)}{_f(r.get('pct_sgemm'), '.1f', 7)}"
                f"{_f(peak / 2**20 if peak is not None else None, '.1f', 10)}{_f(r.get('peak_over_data'), '.2f', 10)}"
                f"{_f(r.get('fused_speedup'), '.2f', 8)}{_f(r.get('rel_err_weights'), '.1e', 9)}"
                f"{_f(r.get('rel_err_update'), '.1e', 9)}"
                + (f"  {r['status'].upper()}: {r.get('note', '')}" if r.get("status") == "mismatch" else ""))
    lines += ["", "fused x: the candidate's s/step over the fused s/step; err W / err dW: relative error of the "
                  "updated weights / of the update against the fused step (same initial weights)"]
    for g, it in (result.get("interleaved") or {}).items():
        per = ", ".join(f"n1={n}: {v / int(n) * 1e6:.3g} us (IQR {it['iqr'][n] / int(n) * 1e6:.2g})"
                        for n, v in sorted(it["seconds"].items(), key=lambda kv: int(kv[0])))
        lines.append(f"{g} interleaved ({it['rounds']} {it['schedule']}): fused s per neuron {per}")
    lines.append("")
    lines += [format_target(t) for t in result.get("targets", [])]
    return "\n".join(lines)


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
