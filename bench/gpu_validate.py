"""Validate pyrgd's CUDA backend on a GPU machine in one call (about 2-3 minutes).

    python bench/gpu_validate.py [--out DIR] [--skip-sanitizer] [--skip-pytest] [--pytest-args "..."]

Steps, each with its own time limit, logs under --out (default $OUT when set, else /tmp/pyrgd_gpu_validate):
  1. device_info: GPU, CUDA and CuPy versions, and whether every kernel module compiles (CuPy/NVRTC);
  2. NVRTC compile check for sm_90 (pyrgd.nvrtc_check, through cuda.bindings);
  3. pytest tests/test_cuda_backend.py tests/test_nvrtc_compile.py (not with --skip-pytest);
  4. compute-sanitizer memcheck, racecheck and synccheck on bench/gpu_sanitize_case.py, and initcheck on it with
     the backend's NaN poisoning off (so that a read of memory no one wrote is reported);
  5. with --timing only: median times (CUDA events) of forward, step and gram at a few sizes, with GFLOP/s by
     the useful-flop count of docs/theory.md section 2 (informational; no pass/fail).
Prints a short summary table last; exit status 0 only when every step passed. At most 8 log files are written
(the device tool brings back 8).
"""
import argparse
import glob
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASE = REPO / "bench" / "gpu_sanitize_case.py"


def find_sanitizer():
    for c in [shutil.which("compute-sanitizer")] + sorted(glob.glob("/usr/local/cuda*/bin/compute-sanitizer")) + \
            sorted(glob.glob("/opt/nvidia/*/compute-sanitizer/compute-sanitizer")):
        if c and os.access(c, os.X_OK):
            return c
    return None


def run(name, cmd, out_dir, timeout, env=None):
    t0 = time.time()
    log = out_dir / f"{name}.log"
    try:
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
        rc, text = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc = "timeout"
        text = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        text += f"\n[timed out after {timeout} s]"
    log.write_text(" ".join(shlex.quote(str(c)) for c in cmd) + "\n\n" + text)
    dt = time.time() - t0
    tail = "\n".join(text.strip().splitlines()[-8:])
    print(f"--- {name}: rc={rc} in {dt:.0f} s (log {log})\n{tail}\n", flush=True)
    return rc, dt, text


def timing() -> int:
    """Median time of each operation over a few sizes; GFLOP/s by the useful-flop count of docs/theory.md section 2."""
    import cupy as cp
    import numpy as np

    from pyrgd.activations import parse_activation
    from pyrgd.backends import cuda

    act = parse_activation("smooth_leaky_relu", 0.2)

    def med_ms(fn, reps=5):
        fn()  # warm-up (compile, allocate)
        ts = []
        for _ in range(reps):
            a, b = cp.cuda.Event(), cp.cuda.Event()
            a.record()
            fn()
            b.record()
            b.synchronize()
            ts.append(cp.cuda.get_elapsed_time(a, b))
        return float(np.median(ts))

    print(f"{'dtype':8s} {'N':>6s} {'d':>5s} {'n1':>7s} {'n2':>4s} {'op':8s} {'ms':>9s} {'GFLOP/s':>9s}")
    for dtype in (np.float32, np.float64):
        for N, d, n1, n2 in ((4096, 256, 16384, 64), (8192, 784, 8192, 16), (2048, 64, 65536, 128)):
            rng = np.random.default_rng(0)
            X = cp.asarray(rng.standard_normal((N, d)) / np.sqrt(d), dtype=dtype)
            W1 = cp.asarray(rng.standard_normal((d, n1)), dtype=dtype)
            W2 = cp.asarray(rng.standard_normal((n1, n2)) / np.sqrt(n1), dtype=dtype)
            G = cp.asarray(rng.standard_normal((N, n2)), dtype=dtype)
            ops = {
                "forward": (lambda: cuda.forward(X, W1, W2, act, 1.0), 2 * N * d * n1 + 2 * N * n1 * n2),
                "step": (lambda: cuda.step(X, W1, W2, G, 1e-9, act, 1.0, False), 4 * N * d * n1 + 6 * N * n1 * n2),
                "gram": (lambda: cuda.gram(X, W1, act, 1.0), 2 * N * d * n1 + 2 * N * N * n1),
            }
            for op, (fn, flops) in ops.items():
                ms = med_ms(fn)
                print(f"{np.dtype(dtype).name:8s} {N:6d} {d:5d} {n1:7d} {n2:4d} {op:8s} {ms:9.3f} "
                      f"{flops / ms / 1e6:9.1f}", flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or "/tmp/pyrgd_gpu_validate")
    ap.add_argument("--skip-sanitizer", action="store_true")
    ap.add_argument("--skip-pytest", action="store_true", help="skip step 3 (bench/device_run.sh runs the tests)")
    ap.add_argument("--pytest-args", default="-q -p no:cacheprovider")
    ap.add_argument("--timing", action="store_true", help="also time the kernels (informational)")
    ap.add_argument("--timing-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.timing_child:
        return timing()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONUNBUFFERED="1")
    py = sys.executable
    results = []

    rc, dt, text = run("device_info", [py, "-c", "import json; from pyrgd.backends import cuda; "
                                       "print(json.dumps(cuda.device_info(compile_all=True), indent=1))"],
                       out, 300, env)
    ok = rc == 0 and '"kernels_compile": true' in text
    results.append(("device_info + compile all modules", ok, dt))

    rc, dt, _ = run("nvrtc_check", [py, "-m", "pyrgd.nvrtc_check", "--arch", "sm_90", "--resource-usage"],
                    out, 300, env)
    results.append(("nvrtc_check sm_90", rc == 0, dt))

    if not args.skip_pytest:
        rc, dt, text = run("pytest", [py, "-m", "pytest", *shlex.split(args.pytest_args),
                                      "tests/test_cuda_backend.py", "tests/test_nvrtc_compile.py"], out, 420, env)
        summary = [ln for ln in text.splitlines() if " passed" in ln or " failed" in ln or " error" in ln]
        results.append((f"pytest ({summary[-1].strip('= ') if summary else 'no summary'})", rc == 0, dt))

    if args.skip_sanitizer:
        pass
    elif (san := find_sanitizer()) is None:
        results.append(("compute-sanitizer: not found", False, 0.0))
    else:
        for tool, extra in (("memcheck", ["--leak-check", "no"]), ("racecheck", []), ("synccheck", []),
                            ("initcheck", [])):
            case_args = ["--no-poison"] if tool == "initcheck" else []
            cmd = [san, "--tool", tool, "--error-exitcode", "97", "--print-limit", "30", *extra, py, str(CASE),
                   *case_args]
            rc, dt, text = run(f"sanitizer_{tool}", cmd, out, 300, env)
            clean = rc == 0 and "ERROR SUMMARY: 0 errors" in text
            if tool == "racecheck":
                clean = rc == 0 and ("RACECHECK SUMMARY: 0 hazards" in text or "ERROR SUMMARY: 0 errors" in text)
            results.append((f"compute-sanitizer {tool}", clean, dt))

    if args.timing:
        rc, dt, _ = run("timing", [py, str(Path(__file__).resolve()), "--timing-child"], out, 300, env)
        results.append(("timing (informational, see log)", rc == 0, dt))

    print("=" * 72)
    print(f"{'step':52s} {'result':>8s} {'time':>8s}")
    for name, ok, dt in results:
        print(f"{name[:52]:52s} {'PASS' if ok else 'FAIL':>8s} {dt:7.0f}s")
    n_fail = sum(not ok for _, ok, _ in results)
    print(f"gpu_validate: {len(results) - n_fail} passed, {n_fail} failed (logs in {out})")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
