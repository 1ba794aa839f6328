"""pytest-benchmark suite of the CPU problems (B1, B2, B1d, B2d, B3, B4, T): one GD step per round, every candidate
(the compiled peers torch_compile and jax_jit included: their compilation happens when the candidate is built, before
the rounds; skipped where torch or jax is absent); and the train problems (group L: L1, L2, B1_track): one
pyrgd.train run with its defaults per round.

    pytest bench/test_bench_cpu.py --benchmark-only                  # full sizes (minutes)
    PYRGD_BENCH_SIZE=tiny pytest bench/ --benchmark-only             # tiny sizes (seconds)
    pytest bench/ --benchmark-only --benchmark-json=out.json         # pytest-benchmark's own JSON

Same candidates, data and checks as ``pyrgd bench`` (pyrgd.bench), which also reports memory and the targets. The
train problems run here in this process (one round each; the time split of train's summary in extra_info), not in a
fresh one as ``pyrgd bench --problems L`` runs them for their peak memory.
"""
from __future__ import annotations

import numpy as np
import pytest
from bench_support import TINY, add_gflops, bench_cache, checked_candidate, describe, rounds_for  # noqa: F401

from pyrgd.bench.candidates import extra_bytes, unavailable
from pyrgd.bench.memory import available_bytes
from pyrgd.bench.problems import all_problems, data_bytes, problem_dtype
from pyrgd.bench.runner import thread_limits, warm_up

PROBLEMS = all_problems("cpu", tiny=TINY)
CASES = [pytest.param(p, c, id=f"{p.name}-{c}") for p in PROBLEMS if p.kind == "step" for c in p.candidates]
TRAIN = [pytest.param(p, id=p.name) for p in PROBLEMS if p.kind == "train"]


def _skip_reason(problem, name):
    why = unavailable(name, "cpu")
    if why:
        return why
    free = available_bytes()
    size = problem_dtype(problem).itemsize
    need = extra_bytes(name, problem, size) + data_bytes(problem.N, problem.d, problem.widths, size)["total"]
    if free is not None and need > 0.6 * free:
        return f"needs about {need / 2**30:.1f} GiB of the {free / 2**30:.1f} GiB available"
    return None


@pytest.mark.parametrize("problem,name", CASES)
def test_gd_step(benchmark, bench_cache, problem, name):
    why = _skip_reason(problem, name)
    if why:
        pytest.skip(why)
    with thread_limits(problem.threads):
        cand, errs = checked_candidate(bench_cache, problem, name)
        describe(benchmark, problem, name, errs)
        warm_up(cand, 1, 0.05 if TINY else 0.3)
        benchmark.pedantic(cand.step, rounds=rounds_for(problem), iterations=1, warmup_rounds=0)
    add_gflops(benchmark)
    assert all(np.all(np.isfinite(w)) for w in cand.weights())
    cand.close()


@pytest.mark.parametrize("problem", TRAIN)
def test_train_defaults(benchmark, problem):
    """pyrgd.train with its defaults for problem.steps steps, from the benchmark's initial weights each round."""
    from pyrgd.bench.train_runs import run_train, train_inputs

    free = available_bytes()
    need = 3 * data_bytes(problem.N, problem.d, problem.widths)["total"]
    if free is not None and need > 0.6 * free:
        pytest.skip(f"needs about {need / 2**30:.1f} GiB of the {free / 2**30:.1f} GiB available")
    steps = f"{problem.steps} step{'s' if problem.steps != 1 else ''}"
    benchmark.group = (f"{problem.name}: pyrgd.train defaults, {steps}, N={problem.N} d={problem.d} "
                       f"widths={list(problem.widths)}")
    out = {}

    def setup():
        return (problem, *train_inputs(problem)), {}

    def run(problem, net, X, Y):
        out["result"], out["wall_s"] = run_train(problem, net, X, Y)

    benchmark.pedantic(run, setup=setup, rounds=1, iterations=1, warmup_rounds=0)
    s = out["result"].summary
    benchmark.extra_info.update(
        steps=s["steps"], wall_s=out["wall_s"], method=s.get("method"),
        **{k: s.get(k) for k in ("step_time_s", "tracking_time_s", "lr_time_s")},
        tracking={k: (s.get("tracking") or {}).get(k) for k in ("every", "route", "certificates")})
    assert np.isfinite(s["final_loss"]) and s["steps"] == problem.steps


@pytest.mark.parametrize("threads", [None, 1, 2], ids=["default", "1thread", "2threads"])
def test_sgemm(benchmark, threads):
    """The float32 SGEMM rate of this machine (NumPy matmul), the yardstick of the GFLOP/s figures."""
    n = 512 if TINY else 2048
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty_like(a)
    benchmark.group = "SGEMM (numpy.matmul float32)"
    benchmark.extra_info.update(n=n, threads=threads, flops=2 * n**3)
    with thread_limits(threads):
        np.matmul(a, b, out=c)
        benchmark.pedantic(np.matmul, args=(a, b), kwargs={"out": c}, rounds=5, iterations=1, warmup_rounds=1)
    try:
        benchmark.extra_info["gflops_median"] = 2 * n**3 / benchmark.stats.stats.median / 1e9
    except AttributeError:
        pass
