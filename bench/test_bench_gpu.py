"""pytest-benchmark suite of the GPU problems (G1, G2): pyrgd cuda vs chunked CuPy vs unfused PyTorch, cuBLAS SGEMM.

    pytest bench/test_bench_gpu.py --benchmark-only                  # full sizes (needs a GPU with ~80 GB)
    PYRGD_BENCH_SIZE=tiny pytest bench/test_bench_gpu.py --benchmark-only

Skips itself without CuPy or a CUDA device. Each round is one GD step followed by a device synchronization.
"""
from __future__ import annotations

import numpy as np
import pytest
from bench_support import TINY, add_gflops, bench_cache, checked_candidate, describe, rounds_for  # noqa: F401

from pyrgd.bench.problems import all_problems, data_bytes

cp = pytest.importorskip("cupy")
try:
    if cp.cuda.runtime.getDeviceCount() < 1:
        raise RuntimeError("no device")
except Exception as e:  # noqa: BLE001
    pytest.skip(f"no CUDA device ({e})", allow_module_level=True)

from pyrgd.bench.candidates import extra_bytes, unavailable  # noqa: E402
from pyrgd.bench.memory import release_gpu_memory  # noqa: E402
from pyrgd.bench.runner import warm_up  # noqa: E402

PROBLEMS = all_problems("cuda", tiny=TINY)
CASES = [pytest.param(p, c, id=f"{p.name}-{c}") for p in PROBLEMS for c in p.candidates]


def _skip_reason(problem, name):
    why = unavailable(name, "cuda")  # torch, torch.compile, JAX: installed and with a CUDA device?
    if why:
        return why
    release_gpu_memory()
    free = cp.cuda.runtime.memGetInfo()[0]
    need = extra_bytes(name, problem) + data_bytes(problem.N, problem.d, problem.widths)["total"]
    if need > 0.9 * free:
        return f"needs about {need / 2**30:.0f} GiB of the {free / 2**30:.0f} GiB free on the device"
    return None


@pytest.mark.gpu
@pytest.mark.parametrize("problem,name", CASES)
def test_gd_step(benchmark, bench_cache, problem, name):
    why = _skip_reason(problem, name)
    if why:
        pytest.skip(why)
    cand = None
    try:
        cand, errs = checked_candidate(bench_cache, problem, name, device="cuda", backend="cuda")
        describe(benchmark, problem, name, errs)
        warm_up(cand, 1, 0.05 if TINY else 0.3)

        def step():
            cand.step()
            cand.sync()

        benchmark.pedantic(step, rounds=rounds_for(problem), iterations=1, warmup_rounds=0)
        add_gflops(benchmark)
    finally:
        if cand is not None:
            cand.close()
        cand = None
        release_gpu_memory()


@pytest.mark.gpu
def test_cublas_sgemm(benchmark):
    n = 2048 if TINY else 8192
    rng = np.random.default_rng(1)
    a = cp.asarray(rng.standard_normal((n, n), dtype=np.float32))
    b = cp.asarray(rng.standard_normal((n, n), dtype=np.float32))
    c = cp.empty_like(a)

    def mm():
        cp.matmul(a, b, out=c)
        cp.cuda.Device().synchronize()

    benchmark.group = "cuBLAS SGEMM (cupy.matmul float32)"
    benchmark.extra_info.update(n=n, flops=2 * n**3)
    benchmark.pedantic(mm, rounds=10, iterations=1, warmup_rounds=2)
    try:
        benchmark.extra_info["gflops_median"] = 2 * n**3 / benchmark.stats.stats.median / 1e9
    except AttributeError:
        pass
