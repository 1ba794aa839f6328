"""GPU benchmark of one full GD step (issue 4, item 5): pyrgd's CUDA backend against baselines in the same run.

    python bench/gpu_bench.py [--problems G1,G2] [--act smooth_leaky_relu(0.2)] [--repeats 3] [--out FILE.json]

Candidates, all float32, all on the same data and initial weights, each doing exactly one GD step of the whole
network (wide layer + pyramidal tail, with the next step's forward pass so that a step is self-contained):
  pyrgd    pyrgd.ops.wide_step(next_forward=True) + pyrgd.tail, what pyrgd.train runs per step;
  chunked  a CuPy loop over blocks of neurons with cuBLAS per block (O(N x block) memory), elementwise by CuPy;
  torch    an unfused PyTorch autograd step (materializes N x n1; skipped when it does not fit);
and the cuBLAS SGEMM rate (an 8192^3 float32 CuPy matmul, TF32 off) as the roofline reference.
Reported per candidate: median seconds per step, useful GFLOP/s (docs/theory.md section 2: sum_l 6 N n_{l-1} n_l minus
2 N d n1), % of the SGEMM rate, peak device memory against the bytes of X, Y, the weights and two N x n2 buffers,
and the relative difference of its updated W1 and W2 from pyrgd's after one step from the same weights.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, when run as a script

PROBLEMS = {
    "G1": dict(N=65536, d=256, widths=[65536, 128, 64, 10]),
    "G2": dict(N=131072, d=256, widths=[131072, 64, 32, 1]),
    "tiny": dict(N=1024, d=32, widths=[1536, 32, 16, 4]),
}
LR = 1e-4


def useful_flops(N, d, widths):
    dims = [d] + list(widths)
    return sum(6 * N * a * b for a, b in zip(dims, dims[1:])) - 2 * N * d * widths[0]


def data_bytes(N, d, widths, itemsize=4):
    dims = [d] + list(widths)
    return itemsize * (N * d + N * widths[-1] + sum(a * b for a, b in zip(dims, dims[1:])) + 2 * N * widths[0 + 1])


def make_problem(xp, N, d, widths, seed=0, dtype=np.float32):
    """Host-generated (reproducible) data and LeCun weights, moved to xp."""
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((N, d), dtype=np.float32) / np.float32(math.sqrt(d))).astype(dtype)
    Y = rng.standard_normal((N, widths[-1]), dtype=np.float32).astype(dtype)
    dims = [d] + list(widths)
    W = [(rng.standard_normal((a, b), dtype=np.float32) / np.float32(math.sqrt(a))).astype(dtype)
         for a, b in zip(dims, dims[1:])]
    return xp.asarray(X), xp.asarray(Y), [xp.ascontiguousarray(xp.asarray(w)) for w in W]


# ---------------------------------------------------------------------------------------------------- candidates
class PyrgdStep:
    """What pyrgd.train does per step: tail forward/backward from H, fused wide step (+ next forward), tail update."""

    def __init__(self, X, Y, W, act, backend):
        from pyrgd import ops

        self.X, self.Y, self.W, self.act, self.backend = X, Y, W, act, backend
        self.H = ops.wide_forward(X, W[0], W[1], activation=act, backend=backend)

    def __call__(self):
        from pyrgd import ops
        from pyrgd.tail import tail_backward, tail_forward

        W, act = self.W, self.act
        mult = [1.0] * (len(W) - 1)
        cache = tail_forward(self.H, W, act, mult)
        loss, G, tail_grads = tail_backward(cache, self.Y, W, act, mult)
        res = ops.wide_step(self.X, W[0], W[1], G, LR, activation=act, next_forward=True, backend=self.backend)
        for l, g in enumerate(tail_grads, start=2):
            W[l] -= LR * g
        self.H = res.H_next
        return float(loss)


class ChunkedStep:
    """Blocks of neurons, one BLAS call per product, the activation by array ops on N x block intermediates."""

    def __init__(self, X, Y, W, act, xp, block=4096):
        from pyrgd.activations import sigma_and_derivative

        self.X, self.Y, self.W, self.act, self.xp, self.block = X, Y, W, act, xp, block
        self.sd = sigma_and_derivative
        self.H = self._forward()

    def _forward(self):
        X, W, xp = self.X, self.W, self.xp
        H = xp.zeros((X.shape[0], W[1].shape[1]), dtype=X.dtype)
        for j in range(0, W[0].shape[1], self.block):
            S, _ = self.sd(self.act, X @ W[0][:, j:j + self.block], derivative=False)
            H += S @ W[1][j:j + self.block]
        return H

    def __call__(self):
        from pyrgd.tail import tail_backward, tail_forward

        X, W, xp, act, B = self.X, self.W, self.xp, self.act, self.block
        mult = [1.0] * (len(W) - 1)
        cache = tail_forward(self.H, W, act, mult)
        loss, G, tail_grads = tail_backward(cache, self.Y, W, act, mult)
        H = xp.zeros_like(self.H)
        for j in range(0, W[0].shape[1], B):
            W1b, W2b = W[0][:, j:j + B], W[1][j:j + B]
            S, dS = self.sd(act, X @ W1b)
            gW2 = S.T @ G
            D = (G @ W2b.T) * dS
            gW1 = X.T @ D
            W1b -= LR * gW1  # views: updates W[0], W[1] in place
            W2b -= LR * gW2
            S2, _ = self.sd(act, X @ W1b, derivative=False)
            H += S2 @ W2b
        for l, g in enumerate(tail_grads, start=2):
            W[l] -= LR * g
        self.H = H
        return float(loss)


class TorchStep:
    """Unfused PyTorch autograd: the whole network as tensors, loss.backward(), then W -= lr grad."""

    def __init__(self, X, Y, W, act):
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        self.torch = torch
        dev = "cuda"
        self.X = torch.as_tensor(X, device=dev)
        self.Y = torch.as_tensor(Y, device=dev)
        self.W = [torch.as_tensor(w, device=dev).clone().requires_grad_(True) for w in W]
        self.act = act

    def sigma(self, z):
        t, a = self.torch, self.act
        if a.name == "relu":
            return t.relu(z)
        if a.name == "smooth_leaky_relu":
            return a.gamma * z + (1 - a.gamma) * (t.nn.functional.softplus(z) - math.log(2.0))
        if a.name == "tanh":
            return t.tanh(z)
        raise ValueError(f"torch baseline: activation {a.name} not wired")

    def __call__(self):
        F = self.X
        for W in self.W[:-1]:
            F = self.sigma(F @ W)
        R = F @ self.W[-1] - self.Y
        loss = 0.5 * (R * R).sum()
        loss.backward()
        with self.torch.no_grad():
            for W in self.W:
                W -= LR * W.grad
                W.grad = None
        return float(loss)


# ---------------------------------------------------------------------------------------------------- measuring
def sync():
    import cupy as cp

    cp.cuda.Device().synchronize()
    try:
        import torch

        if torch.cuda.is_initialized():
            torch.cuda.synchronize()
    except ImportError:
        pass


def time_calls(fn, repeats):
    fn()  # warm-up (compiles, allocates)
    sync()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return ts


def sgemm_rate(cp, n=8192, repeats=10):
    a = cp.random.standard_normal((n, n), dtype=cp.float32)
    b = cp.random.standard_normal((n, n), dtype=cp.float32)
    ts = time_calls(lambda: a @ b, repeats)
    del a, b
    cp.get_default_memory_pool().free_all_blocks()
    return 2.0 * n ** 3 / float(np.median(ts)) / 1e9


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def run_problem(name, spec, act, repeats, have_torch):
    import cupy as cp

    pool = cp.get_default_memory_pool()
    N, d, widths = spec["N"], spec["d"], spec["widths"]
    flops = useful_flops(N, d, widths)
    dbytes = data_bytes(N, d, widths)
    out = {"problem": name, **spec, "activation": str(act), "useful_gflop_per_step": flops / 1e9,
           "data_bytes": dbytes, "candidates": {}}
    ref_w = None
    for cand in ("pyrgd", "chunked", "torch"):
        row = {}
        pool.free_all_blocks()
        try:
            if cand == "torch":
                if not have_torch:
                    raise RuntimeError("torch is not installed")
                import torch

                unfused = 4 * (3 * N * widths[0] + N * d + d * widths[0])  # Z1, F1, dF1 at least
                free = torch.cuda.mem_get_info()[0]
                if unfused > 0.9 * free:
                    raise RuntimeError(f"an unfused step needs over {unfused / 2**30:.0f} GiB of the "
                                       f"{free / 2**30:.0f} GiB free")
                X, Y, W = make_problem(np, N, d, widths)
                step = TorchStep(X, Y, W, act)
                torch.cuda.reset_peak_memory_stats()
                step()
                torch.cuda.synchronize()
                w1 = [step.W[0].detach().cpu().numpy(), step.W[1].detach().cpu().numpy()]
                ts = time_calls(step, repeats)
                row["peak_bytes"] = int(torch.cuda.max_memory_allocated())
                del step
                torch.cuda.empty_cache()
            else:
                X, Y, W = make_problem(cp, N, d, widths)
                step = PyrgdStep(X, Y, W, act, "cuda") if cand == "pyrgd" else ChunkedStep(X, Y, W, act, cp)
                step()
                sync()
                w1 = [W[0].get(), W[1].get()]
                ts = time_calls(step, repeats)
                row["peak_bytes"] = int(pool.total_bytes())  # the pool keeps every block it ever needed
                del step, X, Y, W
                pool.free_all_blocks()
            med = float(np.median(ts))
            row.update(seconds=med, times=ts, gflops=flops / med / 1e9, peak_over_data=row["peak_bytes"] / dbytes)
            if cand == "pyrgd":
                ref_w = w1
                row["rel_diff_vs_pyrgd"] = 0.0
            elif ref_w is not None:
                row["rel_diff_vs_pyrgd"] = max(rel(w1[0], ref_w[0]), rel(w1[1], ref_w[1]))
        except Exception as e:  # noqa: BLE001 - a baseline that cannot run is reported, not fatal
            row = {"skipped": f"{type(e).__name__}: {str(e)[:200]}"}
            step = X = Y = W = None  # drop every reference before the next candidate
            gc.collect()
            pool.free_all_blocks()
            if "torch" in sys.modules:
                sys.modules["torch"].cuda.empty_cache()  # torch's cache would starve the next candidate
        out["candidates"][cand] = row
        print(f"  {name} {cand}: {row.get('seconds', row.get('skipped'))}", file=sys.stderr, flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", default="G1,G2")
    ap.add_argument("--act", default="smooth_leaky_relu(0.2)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import cupy as cp

    from pyrgd import __version__
    from pyrgd.activations import parse_activation

    try:
        import torch  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False
    act = parse_activation(args.act)
    props = cp.cuda.runtime.getDeviceProperties(0)
    res = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
        "driver": cp.cuda.runtime.driverGetVersion(), "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
        "cupy": cp.__version__, "pyrgd": __version__, "python": platform.python_version(),
        "torch": __import__("torch").__version__ if have_torch else None,
        "sgemm_gflops": sgemm_rate(cp), "problems": [],
    }
    print(f"SGEMM {res['sgemm_gflops']:.0f} GFLOP/s on {res['device']}", file=sys.stderr, flush=True)
    for p in args.problems.split(","):
        res["problems"].append(run_problem(p, PROBLEMS[p], act, args.repeats, have_torch))
    text = json.dumps(res, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(report(res))
    return 0


def report(res):
    lines = [f"{res['device']}  driver {res['driver']}  CUDA {res['cuda_runtime']}  CuPy {res['cupy']}  "
             f"{res['date']}", f"cuBLAS SGEMM: {res['sgemm_gflops']:.0f} GFLOP/s",
             f"{'problem':8}{'candidate':10}{'s/step':>10}{'GFLOP/s':>10}{'%SGEMM':>8}{'peak GiB':>10}"
             f"{'peak/data':>10}{'rel.diff':>10}"]
    for p in res["problems"]:
        c = p["candidates"]
        for name, row in c.items():
            if "skipped" in row:
                lines.append(f"{p['problem']:8}{name:10}  skipped: {row['skipped']}")
                continue
            lines.append(f"{p['problem']:8}{name:10}{row['seconds']:10.4f}{row['gflops']:10.0f}"
                         f"{100 * row['gflops'] / res['sgemm_gflops']:8.1f}{row['peak_bytes'] / 2**30:10.2f}"
                         f"{row['peak_over_data']:10.2f}{row.get('rel_diff_vs_pyrgd', float('nan')):10.1e}")
        base = c.get("pyrgd", {})
        for name in ("chunked", "torch"):
            if "seconds" in base and "seconds" in c.get(name, {}):
                lines.append(f"{p['problem']:8}speedup of pyrgd over {name}: {c[name]['seconds'] / base['seconds']:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
