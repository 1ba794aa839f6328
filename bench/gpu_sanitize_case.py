"""A tiny run of every CUDA kernel of pyrgd, for compute-sanitizer (memcheck, racecheck, synccheck, initcheck).

    compute-sanitizer --tool memcheck python bench/gpu_sanitize_case.py [--no-poison]

CuPy's memory pool is switched off (every array is its own cudaMalloc) so that memcheck sees the true bounds of
each buffer. Shapes are small but cross every tile boundary: several row tiles, a partial neuron tile, n2 > 64
(two column blocks in the forward, two dW2 chunks in the step), a step grid of 2 blocks for 5+ neuron tiles (the
persistent loop and the scratch reuse), a Gram in several chunks, and wide_grad in chunks of neurons, then also
in blocks of rows. ``--no-poison`` leaves the backend's buffers
uninitialized (for initcheck: a kernel reading memory nothing wrote is then reported). Exits 1 when a result is
off the NumPy reference.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-poison", action="store_true", help="leave backend buffers uninitialized (for initcheck)")
    args = ap.parse_args(argv)

    import cupy as cp

    from pyrgd.activations import parse_activation
    from pyrgd.backends import cuda, reference

    cp.cuda.set_allocator(None)  # no pool: memcheck sees every buffer's own bounds
    cuda._POISON = not args.no_poison
    cuda._STEP_GRID_LIMIT = 2
    act = parse_activation("smooth_leaky_relu", 0.2)
    a1, lr = 0.8, 0.05
    N, d, n1, n2 = 70, 20, 150, 70
    bad = 0
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-4)):
        rng = np.random.default_rng(0)
        X = rng.standard_normal((N, d)) / np.sqrt(d)
        W1 = rng.standard_normal((d, n1))
        W2 = rng.standard_normal((n1, n2)) / np.sqrt(n1)
        G = rng.standard_normal((N, n2))
        X, W1, W2, G = (a.astype(dtype) for a in (X, W1, W2, G))
        Xd, W1d, W2d, Gd = (cp.asarray(a) for a in (X, W1, W2, G))
        f = lambda a: np.asarray(cp.asnumpy(a) if isinstance(a, cp.ndarray) else a, np.float64)  # noqa: E731

        def rel(a, b):
            a, b = f(a), f(b)
            return float(np.linalg.norm(a - b) / np.linalg.norm(b)) if np.isfinite(a).all() else float("inf")

        cuda._GRAM_CHUNK_BYTES = N * np.dtype(dtype).itemsize * 70  # several chunks, the last one partial
        errs = {
            "forward": rel(cuda.forward(Xd, W1d, W2d, act, a1), reference.forward(f(X), f(W1), f(W2), act, a1)),
            "gram": rel(cuda.gram(Xd, W1d, act, a1), reference.gram(f(X), f(W1), act, a1)),
            "gram_backward": rel(cuda.gram(Xd, W1d, act, a1, W2=W2d, B2=Gd),
                                 reference.gram(f(X), f(W1), act, a1, W2=f(W2), B2=f(G))),
        }
        want = reference.wide_grad(f(X), f(W1), f(W2), f(G), act, a1, True)
        for name, got in (("wide_grad", cuda.wide_grad(Xd, W1d, W2d, Gd, act, a1, True)),
                          ("wide_grad_rows", _in_row_blocks(cuda, Xd, W1d, W2d, Gd, act, a1))):
            for part, g, w in zip(("dW1", "dW2", "dX"), got, want):
                errs[f"{name}_{part}"] = rel(g, w)
        W1r, W2r = f(W1).copy(), f(W2).copy()
        ref = reference.step(f(X), W1r, W2r, f(G), lr, act, a1, True)
        res = cuda.step(Xd, W1d, W2d, Gd, lr, act, a1, True)
        errs["step_W1"] = rel(W1d, W1r)
        errs["step_W2"] = rel(W2d, W2r)
        errs["step_H_next"] = rel(res.H_next, ref.H_next)
        errs["step_sq1"] = abs(res.grad_sq_w1 - ref.grad_sq_w1) / ref.grad_sq_w1
        errs["step_sq2"] = abs(res.grad_sq_w2 - ref.grad_sq_w2) / ref.grad_sq_w2
        cp.cuda.runtime.deviceSynchronize()
        for k, v in errs.items():
            ok = v <= tol
            bad += not ok
            print(f"{np.dtype(dtype).name:8s} {k:14s} rel err {v:.2e} {'ok' if ok else 'FAIL'}")
    print("sanitize case:", "all results match the reference" if not bad else f"{bad} result(s) off")
    return 1 if bad else 0


def _in_row_blocks(cuda, X, W1, W2, G, act, a1):
    """cuda.wide_grad with a budget of one neuron tile over one row tile: chunks of neurons and blocks of rows."""
    _, tiles = cuda._module(X.dtype, act.name)
    saved = cuda._GRAM_CHUNK_BYTES
    cuda._GRAM_CHUNK_BYTES = 2 * X.dtype.itemsize * tiles["SM"] * tiles["ST"]
    try:
        return cuda.wide_grad(X, W1, W2, G, act, a1, True)
    finally:
        cuda._GRAM_CHUNK_BYTES = saved


if __name__ == "__main__":
    sys.exit(main())
