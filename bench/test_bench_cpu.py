"""pytest-benchmark suite of the CPU problems (B1, B2, B3, B4, T): one GD step per round, every candidate.

    pytest bench/test_bench_cpu.py --benchmark-only                  # full sizes (minutes)
    PYRGD_BENCH_SIZE=tiny pytest bench/ --benchmark-only             # tiny sizes (seconds)
    pytest bench/ --benchmark-only --benchmark-json=out.json         # pytest-benchmark's own JSON

Same candidates, data and checks as ``pyrgd bench`` (pyrgd.bench), which also reports memory and the targets.
"""
from __future__ import annotations

import numpy as np
import pytest
from bench_support import TINY, add_gflops, bench_cache, checked_candidate, describe, rounds_for  # noqa: F401

from pyrgd.bench.candidates import extra_bytes, torch_available
from pyrgd.bench.memory import available_bytes
from pyrgd.bench.problems import all_problems, data_bytes
from pyrgd.bench.runner import thread_limits, warm_up

PROBLEMS = all_problems("cpu", tiny=TINY)
CASES = [pytest.param(p, c, id=f"{p.name}-{c}") for p in PROBLEMS for c in p.candidates]


def _skip_reason(problem, name):
    if name == "torch":
        ok, why = torch_available()
        if not ok:
            return why
    free = available_bytes()
    need = extra_bytes(name, problem) + data_bytes(problem.N, problem.d, problem.widths)["total"]
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
