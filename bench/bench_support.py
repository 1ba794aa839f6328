"""Shared pieces of the pytest-benchmark suites (bench/test_bench_cpu.py, bench/test_bench_gpu.py).

(Not a conftest.py on purpose: tests/ imports helpers with ``from conftest import ...``, and a second conftest
module here would shadow that one whenever tests/ and bench/ are collected in one pytest run.)

Run with ``pytest bench/ --benchmark-only`` (pyproject's testpaths is ["tests"]: bench/ runs only when named).
``PYRGD_BENCH_SIZE=tiny|full`` picks the sizes (default full: the reference problems of pyrgd.bench.problems).
Every benchmarked candidate is first checked against the fused step from the same weights (its update must agree
to UPDATE_TOLERANCE), so that no baseline is fast because it is wrong. The numbers are for comparing candidates
within a group (one group per problem), not thresholds: nothing here fails because something is slow.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from pyrgd.bench.candidates import make_candidate
from pyrgd.bench.problems import data_bytes, make_data, problem_dtype, useful_flops
from pyrgd.bench.runner import UPDATE_TOLERANCE, step_errors

SIZE = os.environ.get("PYRGD_BENCH_SIZE", "full").strip().lower()
if SIZE not in ("tiny", "full"):
    raise pytest.UsageError(f"PYRGD_BENCH_SIZE: expected tiny or full, got {SIZE!r}")
TINY = SIZE == "tiny"


def rounds_for(problem) -> int:
    r = 5 if TINY else 7
    return min(r, problem.max_repeats) if problem.max_repeats else r


class _Cache:
    """Per-session cache: the host data of each problem and the fused step's result from its initial weights."""

    def __init__(self):
        self.data = {}
        self.fused = {}

    def problem_data(self, problem):
        if problem.name not in self.data:
            self.data[problem.name] = make_data(problem, "float32", seed=0)
        return self.data[problem.name]

    def fused_step(self, problem, device, backend):
        key = (problem.name, device)
        if key not in self.fused:
            cand = make_candidate("fused", self.problem_data(problem), device=device, backend=backend)
            loss = cand.step()
            cand.sync()
            self.fused[key] = (cand.weights(), loss, cand.backend)
            cand.close()
        return self.fused[key]


@pytest.fixture(scope="session")
def bench_cache():
    return _Cache()


def checked_candidate(bench_cache, problem, name, device="cpu", backend="auto"):
    """A candidate that has run one check step, and its errors against the fused step (pytest.fail on mismatch)."""
    data = bench_cache.problem_data(problem)
    w_ref, loss_ref, fused_backend = bench_cache.fused_step(problem, device, backend)
    cand = make_candidate(name, data, device=device, backend=backend)
    loss = cand.step()
    cand.sync()
    errs = step_errors(data.W, w_ref, cand.weights(), loss_ref, loss)
    tol = UPDATE_TOLERANCE["float32"]
    if not errs["rel_err_update"] <= tol:
        pytest.fail(f"{problem.name} {name}: its step differs from the fused one (update relative error "
                    f"{errs['rel_err_update']:.2e} > {tol:g})")
    return cand, {**errs, "fused_backend": fused_backend}


def describe(benchmark, problem, name, errs):
    """Group by problem and attach the flop and byte counts (GFLOP/s = useful_flops / median s / 1e9)."""
    benchmark.group = f"{problem.name}: N={problem.N} d={problem.d} widths={list(problem.widths)} {problem.activation}"
    benchmark.extra_info.update(
        problem=problem.name, candidate=name, useful_flops=useful_flops(problem.N, problem.d, problem.widths),
        data_bytes=data_bytes(problem.N, problem.d, problem.widths, problem_dtype(problem, "float32").itemsize)["total"],
        threads=problem.threads,
        **{k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in errs.items()})


def add_gflops(benchmark):
    """After the run: useful GFLOP/s from the median (pytest-benchmark keeps stats on benchmark.stats)."""
    try:
        med = benchmark.stats.stats.median
    except AttributeError:  # --benchmark-disable: no stats
        return
    if med:
        benchmark.extra_info["gflops_median"] = benchmark.extra_info["useful_flops"] / med / 1e9
