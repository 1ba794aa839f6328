"""Peak memory of one candidate's GD steps.

CPU: each candidate is measured in a fresh Python process (``python -m pyrgd.bench.memory SPEC``), so that what an
earlier candidate left in the allocator cannot hide or inflate anything. There: imports and a tiny warm-up (which
loads the BLAS and starts its threads), the baseline resident size RSS0, then the problem's data (drawn in place,
no temporaries), then the high-water mark is reset (Linux: ``echo 5 > /proc/self/clear_refs``), the candidate is
built and runs two GD steps (one for B3, a one-step problem), and VmHWM is read from /proc/self/status. The peak
is VmHWM - RSS0: the data plus everything the candidate allocated on top of it, at the worst moment. Where the reset is refused, VmHWM since the
process started is used (method ``vmhwm-no-reset``: an upper bound, it includes the imports' own peak), and where
/proc is missing, ``resource.getrusage`` (``ru_maxrss``, same caveat). The train problems (group L) run in the same
kind of fresh process (:func:`spawn_spec` of ``python -m pyrgd.bench.train_runs``), with :class:`PeakProbe`.

GPU: in-process, the allocator's own high-water mark: CuPy's memory pool (emptied before, its ``total_bytes`` after:
the pool keeps every block it needed) or ``torch.cuda.max_memory_allocated``, next to the drop of free device
memory reported by cudaMemGetInfo.
"""
from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import tempfile
import sys

_KIB = 1024


def read_status() -> dict:
    """VmRSS and VmHWM of this process in bytes (empty dict where /proc/self/status is missing)."""
    try:
        with open("/proc/self/status") as f:
            text = f.read()
    except OSError:
        return {}
    out = {}
    for key in ("VmRSS", "VmHWM"):
        m = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.M)
        if m:
            out[key] = int(m.group(1)) * _KIB
    return out


def reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False where refused or unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _maxrss_bytes() -> int:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * _KIB


def available_bytes() -> int | None:
    """MemAvailable of the machine (bytes), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            m = re.search(r"^MemAvailable:\s+(\d+)\s+kB", f.read(), re.M)
        return int(m.group(1)) * _KIB if m else None
    except OSError:
        return None


class PeakProbe:
    """The peak resident memory a block of code adds, in this process (see the module docstring).

    ``start()`` reads the baseline RSS0 (call it before the data exist), ``reset()`` resets the high-water mark (call
    it once the data exist, so that what was freed before does not count), ``stop()`` reads VmHWM and returns
    {"peak_bytes": VmHWM - RSS0, "process_peak_bytes": VmHWM, "baseline_bytes": RSS0, "method"}; without /proc,
    ru_maxrss of the whole process (peak_bytes = process_peak_bytes, baseline_bytes None).
    """

    def __init__(self):
        self.base = None
        self.was_reset = False

    def start(self) -> "PeakProbe":
        self.base = read_status().get("VmRSS")
        return self

    def reset(self) -> None:
        self.was_reset = reset_peak() if self.base is not None else False

    def stop(self) -> dict:
        end = read_status()
        if self.base is not None and "VmHWM" in end:
            return {"peak_bytes": int(end["VmHWM"] - self.base), "process_peak_bytes": int(end["VmHWM"]),
                    "baseline_bytes": int(self.base), "method": "vmhwm-reset" if self.was_reset else "vmhwm-no-reset"}
        peak = _maxrss_bytes()  # no /proc: ru_maxrss of the whole process (includes the imports' peak)
        return {"peak_bytes": int(peak), "process_peak_bytes": int(peak), "baseline_bytes": None,
                "method": "ru_maxrss"}


# ------------------------------------------------------------------------------------------------ CPU, subprocess
def _child(spec: dict) -> dict:
    """Runs in the fresh process: the measurement described in the module docstring."""
    import numpy as np

    from .._threads import thread_limits
    from .candidates import make_candidate
    from .problems import Problem, make_data

    p = spec["problem"]
    problem = Problem(**{**p, "widths": tuple(p["widths"]), "candidates": tuple(p["candidates"])})
    name = spec["candidate"]
    with thread_limits(problem.threads):
        # warm-up on a tiny problem of the same kind: loads the BLAS, the extension, starts the thread pools
        tiny = Problem("warmup", 64, min(problem.d, 8), (128,) + tuple(min(w, 8) for w in problem.widths[1:]),
                       activation=problem.activation)
        c = make_candidate(name, make_data(tiny, spec["dtype"], 1), backend=spec["backend"], block=spec["block"])
        c.step()
        del c
        gc.collect()
        probe = PeakProbe().start()
        data = make_data(problem, spec["dtype"], spec["seed"])
        probe.reset()
        c = make_candidate(name, data, backend=spec["backend"], block=spec["block"], copy=False)
        loss = [c.step() for _ in range(spec.get("steps", 2))]
        peak = probe.stop()
    return {**peak, "loss_finite": bool(np.all(np.isfinite(loss)))}


def _spawn(problem, candidate, dtype, seed, backend, block, steps):
    spec = {"problem": problem.to_dict(), "candidate": candidate, "dtype": str(dtype), "seed": int(seed),
            "backend": backend, "block": block, "steps": int(steps)}
    return spawn_spec(spec)


def spawn_spec(spec: dict, module: str = "pyrgd.bench.memory"):
    """``python -m MODULE SPEC`` (SPEC: ``spec`` as JSON) in a fresh process, the pyrgd under test first on its path;
    read its answer with :func:`collect`."""
    import pyrgd

    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(pyrgd.__file__)))  # the pyrgd under test
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # cwd elsewhere: `python -m` puts the working folder first on sys.path, which could shadow the pyrgd under test
    return subprocess.Popen([sys.executable, "-m", module, json.dumps(spec)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tempfile.gettempdir())


def collect(proc, timeout) -> dict:
    """The JSON answer of a process from :func:`spawn_spec` (its last line starting with '{'), or {"error": why}
    (killed after ``timeout`` seconds, a non-zero exit code, no answer)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"error": f"the memory measurement ran past {timeout} s"}
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (err or out).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit code {proc.returncode}: {tail[0][:300]}"}
    return json.loads(lines[-1])


def measure_cpu_peak(problem, candidate: str, *, dtype="float32", seed=0, backend="auto", block=None,
                     steps=2, timeout=1800) -> dict:
    """Peak memory of ``candidate`` on ``problem`` in a fresh process.

    Returns {"peak_bytes", "method", "loss_finite"} or {"error": why}.
    """
    return collect(_spawn(problem, candidate, dtype, seed, backend, block, steps), timeout)


def measure_cpu_peaks(problem, candidates, *, together=False, timeout=1800, **kw) -> dict:
    """{candidate: measure_cpu_peak(...)}; with ``together`` the processes run at the same time (each measures
    only its own resident memory, so this changes no number, only the wall time)."""
    if not together:
        return {c: measure_cpu_peak(problem, c, timeout=timeout, **kw) for c in candidates}
    args = dict(dtype="float32", seed=0, backend="auto", block=None, steps=2)
    args.update(kw)
    procs = {c: _spawn(problem, c, **args) for c in candidates}
    return {c: collect(p, timeout) for c, p in procs.items()}


# ------------------------------------------------------------------------------------------------ GPU, in process
class GpuMemory:
    """Context manager: the allocator's peak and the device's free-memory drop over the block.

    ``kind`` is 'cupy' (CuPy's default memory pool) or 'torch'. Read ``peak_bytes`` and ``device_delta_bytes``
    after the block.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self.peak_bytes = None
        self.device_delta_bytes = None

    def __enter__(self):
        import cupy as cp

        gc.collect()
        self.pool = cp.get_default_memory_pool()
        self.pool.free_all_blocks()
        if self.kind == "torch":
            import torch

            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.pool.total_bytes()
        cp.cuda.Device().synchronize()
        self.free0 = cp.cuda.runtime.memGetInfo()[0]
        return self

    def __exit__(self, *exc):
        import cupy as cp

        cp.cuda.Device().synchronize()
        free1 = cp.cuda.runtime.memGetInfo()[0]
        self.device_delta_bytes = int(self.free0 - free1)
        if self.kind == "torch":
            import torch

            torch.cuda.synchronize()
            self.peak_bytes = int(torch.cuda.max_memory_allocated() - self.base)
        else:
            self.peak_bytes = int(self.pool.total_bytes() - self.base)
        return False


def release_gpu_memory() -> None:
    """Give cached device memory back (CuPy's pools, torch's cache) so that the next candidate starts clean."""
    gc.collect()
    try:
        import cupy as cp

        cp.get_default_memory_pool().free_all_blocks()
        cp.get_default_pinned_memory_pool().free_all_blocks()
    except Exception:  # noqa: BLE001
        pass
    if "torch" in sys.modules:
        try:
            sys.modules["torch"].cuda.empty_cache()
        except Exception:  # noqa: BLE001
            pass


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    print(json.dumps(_child(json.loads(argv[0]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
