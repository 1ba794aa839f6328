"""Running the benchmark: every candidate of a problem on the same data and weights, checked, timed, measured.

For each problem:
1. the host data (X, Y, initial weights) is drawn once; every candidate starts from copies of it;
2. each candidate runs one GD step from the initial weights; its loss, its updated weights and its update
   (W_after - W_before) are compared with the fused candidate's (relative errors, float64 arithmetic);
3. warm-up steps, then ``repeats`` timed steps (perf_counter around step() and a device sync): median and IQR.
   On the CPU, where all candidates fit in memory at once, in two passes (one candidate after the other, the
   second pass in reverse order, warm-up steps before each candidate's turn), so that a slow stretch of a shared
   machine does not fall on one candidate only and each candidate is timed twice (``pass_medians``); not step
   by step in turns, since one library's idle threads spin for a while and would slow the next one. Else, and
   on the GPU, one candidate after the other, each freed before the next;
4. peak memory: on the CPU in a fresh process per candidate (:mod:`pyrgd.bench.memory`), on the GPU from the
   allocator over steps 2-3 (data upload included).
The SGEMM rate (a large float32 matrix product, same process, same thread count) is measured at the start and
again just before each problem; a problem's %SGEMM uses the latter (``sgemm`` in the problem's result). A float64
problem (B1d, B2d) has the DGEMM rate instead (float64 matrix product; ``gemm_name`` says which, ``pct_gemm`` is the
share either way) and its FMA peak in float64.

The compiled peers (torch_compile, jax_jit) compile when they are built: ``compile_seconds`` in their row, never in
a timed step (the check step and the warm-up come after). Their peak memory is not measured (the compiler's own
allocations would be counted in the fresh process). Each problem's result ranks the candidates that ran by their
median (``ranking``), names the fastest compiled peer (``best_peer``) and gives the fused step's share of the FMA
peak (``fused_pct_peak``: the flops it executes per second over the roof; on the GPU the SIMT roof computed from
the device's properties, :func:`simt_peak_gpu`).

5. a group of sizes of one candidate (B4: the fused step at every n1) is timed again interleaved
   (:func:`interleave_group`): all its candidates built at once, then rounds of one step of each size, every other
   round in reverse order. Its target compares the sizes with one another, and on a shared machine whose speed
   drifts by 5 to 15% over minutes, problems run one after the other would compare the drift instead.

A train problem (group L, ``kind="train"``) is none of this: one :func:`pyrgd.train` run with its defaults in a fresh
process, then bare engine steps (:mod:`pyrgd.bench.train_runs`, :func:`run_train_problem`); no SGEMM rate is taken
before it. Its peak memory comes with that process, so ``--no-memory`` leaves it measured.
"""
from __future__ import annotations

import datetime
import gc
import math
import os
import platform
import sys
import time
from dataclasses import dataclass

import numpy as np

from .candidates import DESCRIPTIONS, PEERS, extra_bytes, jax_available, make_candidate, torch_available, unavailable
from .memory import GpuMemory, available_bytes, measure_cpu_peaks, release_gpu_memory
from .._threads import thread_limits  # noqa: F401  (re-exported: the harness and the suites use it from here)
from .problems import Problem, data_bytes, fused_flops, make_data, problem_dtype, useful_flops

SCHEMA = "pyrgd-bench-1"
#: a candidate whose update differs from the fused one's by more than this (relative) is flagged as a mismatch
UPDATE_TOLERANCE = {"float32": 1e-2, "float64": 1e-8}


@dataclass
class Options:
    """What ``pyrgd bench`` was asked for (see :func:`pyrgd.bench.build_parser`)."""

    device: str = "cpu"  # cpu | cuda
    backend: str = "auto"  # the fused candidate's backend: auto | cpu | reference | cuda
    tiny: bool = False
    repeats: int | None = None  # None: 7 (3 in tiny mode)
    warmup: int = 1  # warm-up steps after the check step (and before each timing pass)
    warmup_seconds: float | None = None  # and at least this long (None: WARMUP_SECONDS; 0.05 s in tiny mode)
    memory: bool = True
    dtype: str = "float32"
    seed: int = 0
    block: int | None = None  # the chunked baseline's block (None: candidates.default_block)
    progress: bool = True

    @property
    def warmup_s(self) -> float:
        if self.warmup_seconds is not None:
            return self.warmup_seconds
        return 0.05 if self.tiny else WARMUP_SECONDS

    @property
    def n_repeats(self) -> int:
        return self.repeats if self.repeats is not None else (3 if self.tiny else 7)


# ------------------------------------------------------------------------------------------------ threads
def blas_threads_controlled() -> bool:
    try:
        import threadpoolctl  # noqa: F401

        return True
    except ImportError:
        return False


# ------------------------------------------------------------------------------------------------ timing
def summarize(times) -> dict:
    """Median, IQR (75th minus 25th percentile), min and max of a list of seconds."""
    t = np.asarray(times, dtype=np.float64)
    q25, med, q75 = np.percentile(t, [25, 50, 75])
    return {"seconds": float(med), "iqr": float(q75 - q25), "min": float(t.min()), "max": float(t.max()),
            "times": [float(x) for x in t]}


#: warm-up lasts at least this long (and at least ``warmup`` steps, at most WARMUP_MAX_STEPS): another library's
#: idle threads (OpenBLAS, OpenMP) keep spinning for a while after its last call and would slow the first steps
WARMUP_SECONDS = 0.3
WARMUP_MAX_STEPS = 100
#: a candidate whose check step took this long needs no further warm-up (first-call costs are far smaller)
LONG_STEP_SECONDS = 3.0


def warm_up(cand, steps: int, seconds: float = WARMUP_SECONDS) -> None:
    """Run ``steps`` steps, then more until ``seconds`` have passed (at most WARMUP_MAX_STEPS in all)."""
    t0 = time.perf_counter()
    k = 0
    while k < steps or (time.perf_counter() - t0 < seconds and k < WARMUP_MAX_STEPS):
        cand.step()
        cand.sync()
        k += 1


def time_one(cand) -> float:
    t0 = time.perf_counter()
    cand.step()
    cand.sync()
    return time.perf_counter() - t0


#: interleaved rounds per repeat of a problem (so 21 timed steps of each size by default)
INTERLEAVE_ROUNDS_PER_REPEAT = 3


def interleave_group(problems, opts, bar=None) -> dict:
    """The fused step of every problem of a group (one candidate, several sizes: B4) timed in interleaved rounds.

    Every candidate is built, checked (one step) and warmed up first; then each of INTERLEAVE_ROUNDS_PER_REPEAT x
    repeats rounds times one step of every size, every other round in reverse order, so that the sizes share the
    machine's slow and fast stretches. All candidates are pyrgd's own (no other library's idle threads spin between
    them). Returns {"rounds", "schedule", "seconds": {n1: median}, "iqr": {n1: ...}, "times": {n1: [...]}}.
    """
    cands = {}
    for p in problems:
        with thread_limits(p.threads):
            data = make_data(p, problem_dtype(p, opts.dtype), opts.seed)
            c = make_candidate("fused", data, device=opts.device, backend=opts.backend)
            c.step()
            warm_up(c, opts.warmup, opts.warmup_s)
        cands[p.n1] = (p, c)
    rounds = max(2, INTERLEAVE_ROUNDS_PER_REPEAT * opts.n_repeats)
    times = {n: [] for n in cands}
    order = list(cands)
    for r in range(rounds):
        for n in (order if r % 2 == 0 else order[::-1]):
            p, c = cands[n]
            with thread_limits(p.threads):
                times[n].append(time_one(c))
        if bar is not None:
            bar.set_description(f"{problems[0].group} interleaved {r + 1}/{rounds}")
    out = {"rounds": rounds, "schedule": "rounds of one step of each size, every other round in reverse order",
           "seconds": {}, "iqr": {}, "times": {}}
    for n, ts in times.items():
        q1, q3 = np.percentile(ts, [25, 75])
        out["seconds"][str(n)] = float(np.median(ts))
        out["iqr"][str(n)] = float(q3 - q1)
        out["times"][str(n)] = [float(t) for t in ts]
    return out


#: groups whose target compares sizes of one candidate, timed again interleaved (interleave_group)
INTERLEAVED_GROUPS = ("B4",)


def gemm_name(dtype) -> str:
    """'SGEMM' for float32, 'DGEMM' for float64: the matrix product whose rate a problem's share is of."""
    return "DGEMM" if np.dtype(dtype) == np.float64 else "SGEMM"


def rate_key(threads: int | None, dtype, run_dtype="float32") -> str:
    """The key of a rate (``sgemm``, ``fma_peak``) in the result: the thread count or 'default', and ':float64'
    after it for a dtype other than the run's (a float64 problem in a float32 run)."""
    base = str(threads) if threads else "default"
    return base if np.dtype(dtype) == np.dtype(run_dtype) else f"{base}:{np.dtype(dtype).name}"


def sgemm_cpu(n: int, repeats: int = 5, threads: int | None = None, dtype="float32") -> dict:
    """GFLOP/s of an n x n x n NumPy matmul into a preallocated output (median of ``repeats``): SGEMM in float32,
    DGEMM with dtype='float64'."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n), dtype=dtype)
    b = rng.standard_normal((n, n), dtype=dtype)
    c = np.empty((n, n), dtype=dtype)
    with thread_limits(threads):
        np.matmul(a, b, out=c)  # warm-up
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            np.matmul(a, b, out=c)
            ts.append(time.perf_counter() - t0)
    s = summarize(ts)
    return {"n": n, "threads": threads, "gflops": 2.0 * n ** 3 / s["seconds"] / 1e9, "seconds": s["seconds"],
            "iqr": s["iqr"], "library": "numpy.matmul", "dtype": dtype.name, "name": gemm_name(dtype)}


def fma_peak_cpu(threads: int | None = None, dtype="float32", seconds: float = 0.3) -> dict | None:
    """The FMA roof of the CPU (pyrgd.backends.cpu.fma_peak_gflops, the best of 3) at ``threads``; None without the
    C++ extension."""
    from ..backends import cpu

    if not cpu.available()[0]:
        return None
    with thread_limits(threads):
        g = max(cpu.fma_peak_gflops(dtype, seconds / 3) for _ in range(3))
        n = cpu.get_num_threads()
    return {"gflops": g, "threads": n, "isa": cpu.get_isa(), "dtype": str(dtype)}


def sgemm_gpu(n: int, repeats: int = 10, dtype="float32") -> dict:
    """GFLOP/s of an n x n x n CuPy matmul (cuBLAS SGEMM, TF32 off unless CUPY_TF32=1; DGEMM with
    dtype='float64')."""
    import cupy as cp

    dtype = np.dtype(dtype)
    rng = np.random.default_rng(1)
    a = cp.asarray(rng.standard_normal((n, n), dtype=dtype))
    b = cp.asarray(rng.standard_normal((n, n), dtype=dtype))
    c = cp.empty((n, n), dtype=dtype)
    cp.matmul(a, b, out=c)
    cp.cuda.Device().synchronize()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    ts = []
    for _ in range(repeats):
        start.record()
        cp.matmul(a, b, out=c)
        end.record()
        end.synchronize()
        ts.append(cp.cuda.get_elapsed_time(start, end) / 1e3)
    del a, b, c
    release_gpu_memory()
    s = summarize(ts)
    return {"n": n, "threads": None, "gflops": 2.0 * n ** 3 / s["seconds"] / 1e9, "seconds": s["seconds"],
            "iqr": s["iqr"], "library": f"cupy.matmul (cuBLAS {gemm_name(dtype)})", "dtype": dtype.name,
            "name": gemm_name(dtype), "tf32": os.environ.get("CUPY_TF32", "0")}


#: FP32 and FP64 lanes per multiprocessor by compute capability (major, minor), from NVIDIA's CUDA C programming
#: guide's throughput table; (major, None): every minor version not listed
_SIMT_LANES = {(6, 0): (64, 32), (6, None): (128, 4), (7, 0): (64, 32), (7, None): (64, 2), (8, 0): (64, 32),
               (8, None): (128, 2), (9, 0): (128, 64), (10, 0): (128, 64), (10, None): (128, 2),
               (12, None): (128, 2)}


def simt_lanes(major: int, minor: int, dtype="float32") -> int | None:
    """FMA lanes per multiprocessor of a GPU of compute capability major.minor in ``dtype`` (None: unknown)."""
    lanes = _SIMT_LANES.get((major, minor)) or _SIMT_LANES.get((major, None))
    if lanes is None:
        return None
    return lanes[1] if np.dtype(dtype) == np.float64 else lanes[0]


def simt_peak_gpu(dtype="float32") -> dict | None:
    """The GPU's SIMT roof in GFLOP/s: multiprocessors x FMA lanes x 2 flops x the clock the driver reports (its
    highest). Not measured: float32 with TF32 off runs on these lanes, not on the tensor cores. None where a
    figure is missing."""
    import cupy as cp

    dev = cp.cuda.Device().id
    rt = cp.cuda.runtime
    try:
        # cudaDevAttrMultiProcessorCount, ...ComputeCapabilityMajor, ...Minor, ...ClockRate (kHz)
        sms, major, minor, khz = (int(rt.deviceGetAttribute(a, dev)) for a in (16, 75, 76, 13))
    except Exception:  # noqa: BLE001 - an attribute this runtime lacks
        return None
    lanes = simt_lanes(major, minor, dtype)
    if not lanes or not khz:
        return None
    return {"gflops": 2.0 * sms * lanes * khz / 1e6, "threads": None, "isa": f"sm_{major}{minor} SIMT",
            "dtype": np.dtype(dtype).name, "multiprocessors": sms, "lanes_per_multiprocessor": lanes,
            "clock_mhz": khz / 1e3, "method": "computed from the device's properties"}


# ------------------------------------------------------------------------------------------------ checks
def _rel(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    nb = float(np.linalg.norm(b))
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("inf")
    return float(np.linalg.norm(a - b) / nb) if nb > 0 else float(np.linalg.norm(a))


def step_errors(w0, w_ref, w, loss_ref, loss) -> dict:
    """Relative errors of one step against the reference step from the same weights w0 (lists per layer).

    rel_err_weights: max over layers of ||W - W_ref|| / ||W_ref|| (the updated weights);
    rel_err_update: max over layers of ||dW - dW_ref|| / ||dW_ref||, dW = W_after - w0 (stricter: the update is
      small next to the weights); rel_err_loss: |loss - loss_ref| / |loss_ref|.
    """
    ew = max(_rel(a, b) for a, b in zip(w, w_ref))
    eu = max(_rel(np.asarray(a, np.float64) - np.asarray(z, np.float64),
                  np.asarray(b, np.float64) - np.asarray(z, np.float64)) for a, b, z in zip(w, w_ref, w0))
    el = abs(loss - loss_ref) / abs(loss_ref) if loss_ref != 0 else abs(loss - loss_ref)
    if not (math.isfinite(loss) and math.isfinite(loss_ref)):
        el = float("inf")
    return {"rel_err_weights": ew, "rel_err_update": eu, "rel_err_loss": float(el)}


# ------------------------------------------------------------------------------------------------ one problem
def _skip(note) -> dict:
    return {"status": "skipped", "note": note}


def _availability(name: str, problem: Problem, opts: Options, itemsize: int, free: int | None) -> str | None:
    """Why candidate ``name`` cannot run here (None: it can)."""
    why = unavailable(name, opts.device)
    if why:
        return why
    need = extra_bytes(name, problem, itemsize, opts.block or 512) + data_bytes(problem.N, problem.d,
                                                                                problem.widths, itemsize)["total"]
    limit = 0.9 if opts.device == "cuda" else 0.6
    if free is not None and need > limit * free:
        where = "the device has" if opts.device == "cuda" else "the machine has"
        return (f"one {name} step needs about {need / 2**30:.1f} GiB, {where} {free / 2**30:.1f} GiB free: "
                "not run (it would not fit)")
    if problem.threads and opts.device == "cpu":
        try:
            usable = len(os.sched_getaffinity(0))
        except AttributeError:
            usable = os.cpu_count() or 1
        if problem.threads > usable:
            return f"needs {problem.threads} CPUs, this process may use {usable}"
    return None


def _free_bytes(device: str) -> int | None:
    if device == "cuda":
        import cupy as cp

        release_gpu_memory()
        return int(cp.cuda.runtime.memGetInfo()[0])
    return available_bytes()


def run_problem(problem: Problem, opts: Options, sgemm: dict, bar=None, fma_peak: dict | None = None) -> dict:
    """Run every candidate of ``problem``; returns the problem's JSON-ready result.

    ``sgemm``: the GEMM rate of the problem's dtype, {"default": {"gflops", "dtype", ...}} (or by thread count; a
    rate of another dtype is not used). ``fma_peak``: the machine's FMA roof by :func:`rate_key` ({"default":
    {...}, "1": ..., "default:float64": ...}, see :func:`fma_peak_cpu`), for the roofline figures and %peak."""
    dtype = problem_dtype(problem, opts.dtype)
    itemsize = dtype.itemsize
    flops = useful_flops(problem.N, problem.d, problem.widths)
    dbytes = data_bytes(problem.N, problem.d, problem.widths, itemsize)
    repeats = opts.n_repeats if problem.max_repeats is None else min(opts.n_repeats, problem.max_repeats)
    repeats = max(1, repeats)
    rate = sgemm.get(str(problem.threads) if problem.threads else "default") or sgemm.get("default")
    if rate and np.dtype(rate.get("dtype") or "float32") != dtype:
        rate = None  # a share of the other precision's GEMM would mean nothing
    peak = (fma_peak or {}).get(rate_key(problem.threads, dtype, opts.dtype))
    if peak and np.dtype(peak.get("dtype") or "float32") != dtype:
        peak = None
    gname = gemm_name(dtype)
    res = {**problem.to_dict(), "lr": problem.lr, "dtype": dtype.name, "useful_flops": flops,
           "peak_gflops": peak["gflops"] if peak else None,
           "gemm_name": gname, "gemm_gflops": rate["gflops"] if rate else None,
           # from the fused candidate's method (and the neurons its rows method keeps), once it is built
           "fused_flops": None, "fused_method": None, "fused_kept": None,
           "data_bytes": dbytes["total"], "data_bytes_parts": dbytes, "repeats": repeats, "warmup": opts.warmup,
           "sgemm_gflops": rate["gflops"] if rate and gname == "SGEMM" else None,
           "dgemm_gflops": rate["gflops"] if rate and gname == "DGEMM" else None, "candidates": {}}
    data = make_data(problem, dtype, opts.seed)
    free = _free_bytes(opts.device)

    names = list(problem.candidates)
    rows: dict = {}
    runnable = []
    for name in names:
        why = _availability(name, problem, opts, itemsize, free)
        if why:
            rows[name] = _skip(why)
        else:
            runnable.append(name)
    fused_backend = None
    with thread_limits(problem.threads):
        est = sum(extra_bytes(n, problem, itemsize, opts.block or 512) for n in runnable) + 2 * dbytes["total"]
        together = opts.device == "cpu" and (free is None or est <= 0.4 * free) and repeats >= 2
        res["schedule"] = ("two passes, the second in reverse order" if together
                           else "one candidate after the other")
        ref = None  # (weights after the fused step, its loss)
        live = {}
        check_s = {}
        for name in runnable:
            if bar is not None:
                bar.set_description(f"{problem.name} {name}")
            row = {"description": DESCRIPTIONS[name]}
            mem = (GpuMemory(_GPU_ALLOCATOR[name]) if opts.device == "cuda" and name in _GPU_ALLOCATOR else None)
            cand = None
            try:
                if mem is not None:
                    mem.__enter__()
                cand = make_candidate(name, data, device=opts.device, backend=opts.backend, block=opts.block)
                if name == "fused":
                    fused_backend = cand.backend
                    row["backend"] = cand.backend
                    row["method"] = cand.method
                    res["fused_method"] = cand.method
                    res["fused_kept"] = cand.kept
                    res["fused_flops"] = fused_flops(problem.N, problem.d, problem.widths, cand.method, cand.kept)
                if name == "chunked":
                    row["block"] = cand.block
                if getattr(cand, "compile_seconds", None) is not None:
                    row["compile_seconds"] = cand.compile_seconds
                t0 = time.perf_counter()
                loss = cand.step()  # the check step, from the initial weights
                cand.sync()
                check_s[name] = time.perf_counter() - t0
                row["check_step_seconds"] = check_s[name]
                w = cand.weights()
                if name == "fused":
                    ref = (w, loss)
                    row.update(rel_err_weights=0.0, rel_err_update=0.0, rel_err_loss=0.0)
                elif ref is not None:
                    row.update(step_errors(data.W, ref[0], w, ref[1], loss))
                row["loss"] = loss
                del w
                tol = UPDATE_TOLERANCE.get(dtype.name, 1e-2)
                row["status"] = "ok"
                if name != "fused" and ref is not None and not (row["rel_err_update"] <= tol):
                    row["status"] = "mismatch"
                    row["note"] = (f"its step differs from the fused one: update relative error "
                                   f"{row['rel_err_update']:.2e} > {tol:g}")
                if not math.isfinite(loss):
                    row["status"] = "mismatch"
                    row["note"] = "non-finite loss"
                if together:
                    live[name] = cand
                else:
                    if check_s[name] < LONG_STEP_SECONDS:  # else the check step was warm-up enough
                        warm_up(cand, opts.warmup, opts.warmup_s)
                    row.update(summarize([time_one(cand) for _ in range(repeats)]))
                    row["finite_after"] = bool(all(np.all(np.isfinite(a)) for a in cand.weights()))
                    cand.close()
                if mem is not None:
                    mem.__exit__(None, None, None)
                    row.update(peak_bytes=mem.peak_bytes, device_delta_bytes=mem.device_delta_bytes,
                               peak_method="torch.cuda.max_memory_allocated" if _GPU_ALLOCATOR[name] == "torch"
                               else "cupy memory pool total_bytes")
                elif opts.device == "cuda":
                    row["peak_note"] = NOT_MEASURED_PEAK
            except Exception as e:  # noqa: BLE001 - a candidate that cannot run is reported, not fatal
                row = {"status": "failed", "note": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}",
                       "description": DESCRIPTIONS[name]}
                live.pop(name, None)
            finally:
                if not together:
                    cand = None
                if opts.device == "cuda":
                    release_gpu_memory()
            rows[name] = row
            if bar is not None and not together:
                bar.update(1)
        if live:
            # two passes, one candidate after the other in each (round-robin step by step would let one
            # library's idle spinning threads slow the next one), the second pass in reverse order so that a
            # slow stretch of a shared machine does not fall on one candidate only
            first = (repeats + 1) // 2
            times = {n: [] for n in live}
            medians = {n: [] for n in live}
            for names_in_pass, k in ((list(live), first), (list(live)[::-1], repeats - first)):
                for n in names_in_pass:
                    if n not in live:
                        continue
                    c = live[n]
                    try:
                        if check_s[n] < LONG_STEP_SECONDS:
                            warm_up(c, opts.warmup, opts.warmup_s)
                        ts = [time_one(c) for _ in range(k)]
                    except Exception as e:  # noqa: BLE001 - reported in its row, the others go on
                        rows[n] = {"status": "failed", "description": DESCRIPTIONS[n],
                                   "note": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}
                        del live[n]
                        continue
                    times[n] += ts
                    medians[n].append(float(np.median(ts)))
            for n, c in live.items():
                rows[n].update(summarize(times[n]))
                rows[n]["pass_medians"] = medians[n]
                rows[n]["finite_after"] = bool(all(np.all(np.isfinite(a)) for a in c.weights()))
            if bar is not None:
                bar.update(len(times))
            live.clear()
            gc.collect()

    # memory (CPU: one fresh process per candidate)
    if opts.device == "cpu":
        todo = [n for n in names if rows[n].get("status") in ("ok", "mismatch")]
        for n in [n for n in todo if n in PEERS]:
            rows[n]["peak_note"] = NOT_MEASURED_PEAK
        todo = [n for n in todo if n not in PEERS]
        if not opts.memory:
            for n in todo:
                rows[n]["peak_note"] = "not measured (--no-memory)"
            todo = []
        if todo:
            if bar is not None:
                bar.set_description(f"{problem.name} memory")
            need = sum(extra_bytes(n, problem, itemsize, opts.block or 512) + dbytes["total"] for n in todo)
            avail = available_bytes()
            peaks = measure_cpu_peaks(problem, todo, together=avail is not None and need < 0.4 * avail,
                                      dtype=dtype.name, seed=opts.seed, backend=opts.backend, block=opts.block,
                                      steps=1 if problem.max_repeats == 1 else 2)
            for n, m in peaks.items():
                if "error" in m:
                    rows[n]["peak_note"] = f"memory measurement failed: {m['error']}"
                else:
                    rows[n]["peak_bytes"] = m["peak_bytes"]
                    rows[n]["peak_method"] = m["method"]

    fused = rows.get("fused", {})
    tf = fused.get("seconds")
    share = "pct_dgemm" if gname == "DGEMM" else "pct_sgemm"
    for name, row in rows.items():
        if "seconds" in row:
            row["gflops"] = flops / row["seconds"] / 1e9
            row["pct_gemm"] = 100.0 * row["gflops"] / rate["gflops"] if rate else None
            row[share] = row["pct_gemm"]
            if tf and name != "fused":
                row["fused_speedup"] = row["seconds"] / tf
        if row.get("peak_bytes") is not None:
            row["peak_over_data"] = row["peak_bytes"] / dbytes["total"]
    res["candidates"] = {n: rows[n] for n in names}
    res["fused_backend"] = fused_backend
    if "seconds" in fused:
        res["seconds_per_neuron"] = fused["seconds"] / problem.n1
    res.update(rank_candidates(res))
    return res


#: the allocator whose high-water mark measures a GPU candidate's peak (JAX's cannot be reset: not measured)
_GPU_ALLOCATOR = {"fused": "cupy", "unfused": "cupy", "chunked": "cupy", "torch": "torch", "torch_compile": "torch"}
NOT_MEASURED_PEAK = ("not measured (a compiled peer: its compiler's own memory would count on the CPU, and JAX's "
                     "GPU allocator keeps no resettable peak)")


def rank_candidates(p: dict) -> dict:
    """The ranking of a problem's result ``p`` (its ``candidates`` rows with a median): ``ranking``, the names of the
    candidates that ran and agreed with the fused step, fastest first; ``best_peer`` ({name, seconds,
    fused_speedup} of the fastest compiled peer, :data:`pyrgd.bench.candidates.PEERS`; None where none ran);
    ``fused_pct_peak``: the flops the fused step executes per second as % of the FMA (GPU: SIMT) roof."""
    rows = p.get("candidates", {})
    timed = [(r["seconds"], n) for n, r in rows.items() if r.get("status") == "ok" and r.get("seconds")]
    ranking = [n for _, n in sorted(timed)]
    peers = [(s, n) for s, n in sorted(timed) if n in PEERS]
    best = None
    tf = (rows.get("fused") or {}).get("seconds") if "fused" in ranking else None
    if peers:
        s, n = peers[0]
        best = {"name": n, "seconds": s, "fused_speedup": s / tf if tf else None}
    pct = None
    if tf and p.get("fused_flops") and p.get("peak_gflops"):
        pct = 100.0 * p["fused_flops"] / tf / 1e9 / p["peak_gflops"]
    return {"ranking": ranking, "best_peer": best, "fused_pct_peak": pct}


# ------------------------------------------------------------------------------------------------ train problems
def run_train_problem(problem: Problem, opts: Options, bar=None) -> dict:
    """Run a train problem (group L) in a fresh process (:func:`pyrgd.bench.train_runs.measure_train`); returns the
    problem's JSON-ready result, its one row under ``candidates["train"]`` (:func:`pyrgd.bench.train_runs.train_row`).
    The bare engine steps timed after the run: ``repeats`` (``problem.max_repeats`` at most)."""
    from .train_runs import DESCRIPTION, TIMEOUT_S, measure_train, train_row

    dtype = np.dtype(opts.dtype)
    repeats = opts.n_repeats if problem.max_repeats is None else min(opts.n_repeats, problem.max_repeats)
    repeats = max(1, repeats)
    res = {**problem.to_dict(), "lr": None, "dtype": dtype.name, "repeats": repeats, "warmup": 0,
           "schedule": "pyrgd.train in a fresh process, then the bare engine steps",
           "data_bytes_parts": data_bytes(problem.N, problem.d, problem.widths, dtype.itemsize),
           "candidates": {}}
    res["data_bytes"] = res["data_bytes_parts"]["total"]
    if bar is not None:
        bar.set_description(f"{problem.name} pyrgd.train, {problem.steps} step{'s' if problem.steps != 1 else ''}")
    try:
        m = measure_train(problem, dtype=dtype.name, seed=opts.seed, backend=opts.backend, repeats=repeats,
                          timeout=TIMEOUT_S[1] if opts.tiny else TIMEOUT_S[0])
        row = train_row(problem, m, dtype.itemsize)
    except Exception as e:  # noqa: BLE001 - reported in its row, the other problems go on
        row = {"status": "failed", "note": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}",
               "description": DESCRIPTION}
    res["candidates"] = {"train": row}
    res["lr"] = row.get("lr")
    res["fused_backend"] = row.get("backend")
    if bar is not None:
        bar.update(1)
    return res


def _one_row_problem(problem: Problem, opts: Options, bar, key: str, schedule: str, label: str, description: str,
                     measure) -> dict:
    """A problem whose result is one row, ``candidates[key]``: the problem's fields, then ``measure(data, rounds,
    steps)`` on its data (an exception is reported in the row as failed; the other problems go on)."""
    dtype = problem_dtype(problem, opts.dtype)
    res = {**problem.to_dict(), "lr": problem.lr, "dtype": dtype.name, "useful_flops":
           useful_flops(problem.N, problem.d, problem.widths), "warmup": 1, "schedule": schedule, "candidates": {}}
    dbytes = data_bytes(problem.N, problem.d, problem.widths, dtype.itemsize)
    res["data_bytes"], res["data_bytes_parts"] = dbytes["total"], dbytes
    if bar is not None:
        bar.set_description(f"{problem.name} {label}")
    rounds, steps = (2, 2) if opts.tiny else (5, 5)
    res["repeats"] = rounds * steps
    try:
        row = measure(make_data(problem, dtype, opts.seed), rounds, steps)
    except Exception as e:  # noqa: BLE001 - reported in its row, the other problems go on
        row = {"status": "failed", "note": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}",
               "description": description}
    res["candidates"] = {key: row}
    res["fused_backend"] = "cpu" if row.get("status") == "ok" else None
    if bar is not None:
        bar.update(1)
    return res


def run_load_problem(problem: Problem, opts: Options, bar=None) -> dict:
    """Run the load problem (T_load, :mod:`pyrgd.bench.load`): the fused step with 1 and 2 threads beside a busy
    process; returns the problem's JSON-ready result, its one row under ``candidates["load"]``."""
    from .load import DESCRIPTION, measure_load

    backend = "cpu" if opts.backend in ("auto", "cpu") else opts.backend
    return _one_row_problem(
        problem, opts, bar, "load", "rounds alternating 1 and 2 threads, beside one busy process",
        "beside a busy process", DESCRIPTION,
        lambda data, rounds, steps: measure_load(data, problem.activation, problem.lr, rounds=rounds, steps=steps,
                                                 backend=backend))


def run_mpi_problem(problem: Problem, opts: Options, bar=None) -> dict:
    """Run the MPI problem (M1, :mod:`pyrgd.bench.mpi_run`): B1's step on mpiexec -n 2 against one process;
    returns the problem's JSON-ready result, its one row under ``candidates["mpi"]``."""
    from .mpi_run import DESCRIPTION, measure_mpi

    def measure(data, rounds, steps):
        try:
            import mpi4py  # noqa: F401  (a missing mpi4py is a skip, not a failure)
        except ImportError:
            return {"status": "skipped", "note": "needs mpi4py (pip install \"pyrgd[mpi]\")",
                    "description": DESCRIPTION}
        return measure_mpi(problem, data, problem.lr, rounds=rounds, steps=steps, seed=opts.seed)

    return _one_row_problem(problem, opts, bar, "mpi", "rounds alternating one process (1, 2 threads) and 2 ranks",
                            "on mpiexec -n 2", DESCRIPTION, measure)


# ------------------------------------------------------------------------------------------------ facts
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _blas() -> list:
    try:
        from threadpoolctl import threadpool_info

        return [{k: i.get(k) for k in ("internal_api", "version", "num_threads", "architecture", "user_api")}
                for i in threadpool_info()]
    except Exception:  # noqa: BLE001
        pass
    try:
        cfg = np.show_config(mode="dicts")
        b = cfg.get("Build Dependencies", {}).get("blas", {})
        return [{"internal_api": b.get("name"), "version": b.get("version")}]
    except Exception:  # noqa: BLE001
        return []


def source_state() -> dict | None:
    """The git commit of the pyrgd source being measured and the tracked files modified since (None outside a
    git checkout, e.g. an installed package): numbers are only comparable for the same code."""
    import subprocess

    import pyrgd

    root = os.path.dirname(os.path.dirname(os.path.abspath(pyrgd.__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        st = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    modified = [ln[3:] for ln in st.stdout.splitlines() if ln.strip()]
    return {"commit": head.stdout.strip(), "modified": modified}


def machine_facts(device: str = "cpu") -> dict:
    """CPU model, cores, threads, BLAS, versions; the GPU's name, driver and runtime when device is 'cuda'."""
    from .. import __version__

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    facts = {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "memory_available_bytes": available_bytes(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pyrgd": __version__,
        "blas": _blas(),
        "blas_threads_controlled": blas_threads_controlled(),
        "source": source_state(),
    }
    try:
        from ..backends import cpu

        ok, why = cpu.available()
        facts["pyrgd_cpu_backend"] = why
        if ok:
            facts["pyrgd_cpu_threads"] = cpu.get_num_threads()
            facts["pyrgd_cpu_build"] = cpu.build_info()
    except ImportError as e:
        facts["pyrgd_cpu_backend"] = f"unavailable: {e}"
    ok, why = torch_available()
    facts["torch"] = why if ok else None
    if ok:
        import torch

        facts["torch_threads"] = torch.get_num_threads()
    ok, why = jax_available()
    facts["jax"] = why if ok else None
    if device == "cuda":
        import cupy as cp

        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        name = props["name"]
        facts.update(gpu_name=name.decode() if isinstance(name, bytes) else name,
                     gpu_memory_bytes=int(props["totalGlobalMem"]),
                     gpu_multiprocessors=int(props["multiProcessorCount"]),
                     cuda_driver=cp.cuda.runtime.driverGetVersion(),
                     cuda_runtime=cp.cuda.runtime.runtimeGetVersion(), cupy=cp.__version__)
    return facts


def _loadavg():
    """The 1, 5 and 15-minute load averages (other work on a shared machine shows here), or None."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


# ------------------------------------------------------------------------------------------------ everything
def run(problems, opts: Options, on_problem=None) -> dict:
    """Run ``problems`` (a list of Problem); returns the whole result (see pyrgd.bench.report for the schema).

    ``on_problem(partial_result)``, when given, is called after each problem with the result so far (targets
    evaluated on what has run, ``complete`` False), so that a run cut short still leaves its numbers behind.
    """
    from tqdm.auto import tqdm

    from .report import evaluate_targets

    if opts.device == "cuda":
        import cupy  # noqa: F401  (fails early, before any timing)
    facts = machine_facts(opts.device)
    result = {
        "schema": SCHEMA,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "pyrgd_version": facts["pyrgd"],
        "mode": "tiny" if opts.tiny else "full",
        "device": opts.device,
        "backend_requested": opts.backend,
        "dtype": opts.dtype,
        "repeats": opts.n_repeats,
        "warmup": opts.warmup,
        "warmup_seconds": opts.warmup_s,
        "seed": opts.seed,
        "machine": facts,
        "load_average_start": _loadavg(),
        "sgemm": {},
        "problems": [],
    }
    total = sum(len(p.candidates) for p in problems) + 1
    bar = tqdm(total=total, file=sys.stderr, disable=not opts.progress, dynamic_ncols=True, leave=False,
               desc="SGEMM")
    try:
        # the rates of every (threads, dtype) the step problems run at, keyed by rate_key
        kinds = sorted({(p.threads or 0, problem_dtype(p, opts.dtype).name) for p in problems if p.kind == "step"}
                       | {(0, np.dtype(opts.dtype).name)})
        if opts.device == "cuda":
            result["fma_peak"] = {}
            for _, dt in kinds:
                key = rate_key(None, dt, opts.dtype)
                result["sgemm"][key] = sgemm_gpu(2048 if opts.tiny else 8192, dtype=dt)
                result["fma_peak"][key] = simt_peak_gpu(dt)
        else:
            n = 512 if opts.tiny else 2048
            result["fma_peak"] = {}
            for t, dt in kinds:
                key = rate_key(t or None, dt, opts.dtype)
                result["sgemm"][key] = sgemm_cpu(n, threads=t or None, dtype=dt)
                result["fma_peak"][key] = fma_peak_cpu(t or None, dtype=dt)
        bar.update(1)
        for p in problems:
            if p.kind in ("train", "load", "mpi"):
                run_other = {"train": run_train_problem, "load": run_load_problem, "mpi": run_mpi_problem}[p.kind]
                result["problems"].append(run_other(p, opts, bar))
                if on_problem is not None:
                    on_problem({**result, "targets": evaluate_targets(result), "complete": False})
                continue
            # the SGEMM rate again just before the problem, at its thread count: on a shared machine the load
            # changes within a run, and %SGEMM should compare with the machine as the problem found it
            dt = problem_dtype(p, opts.dtype)
            if opts.device == "cuda":
                near = {"default": sgemm_gpu(2048 if opts.tiny else 8192, dtype=dt)}
            else:
                near = {"default": sgemm_cpu(512 if opts.tiny else 2048, threads=p.threads, dtype=dt)}
            r = run_problem(p, opts, near, bar, fma_peak=result.get("fma_peak"))
            r["sgemm"] = near["default"]
            result["problems"].append(r)
            if on_problem is not None:
                on_problem({**result, "targets": evaluate_targets(result), "complete": False})
        for g in INTERLEAVED_GROUPS:
            ps = [p for p, r in zip(problems, result["problems"])
                  if p.group == g and r["candidates"].get("fused", {}).get("status") == "ok"]
            if opts.device == "cpu" and len(ps) >= 2:
                result.setdefault("interleaved", {})[g] = interleave_group(ps, opts, bar)
    finally:
        bar.close()
    result["load_average_end"] = _loadavg()
    backs = {r.get("fused_backend") for r in result["problems"] if r.get("fused_backend")}
    result["fused_backend"] = ",".join(sorted(backs)) if backs else None
    result["targets"] = evaluate_targets(result)
    result["complete"] = True
    return result
