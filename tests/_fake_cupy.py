"""A NumPy stand-in for what the CUDA backend's host loops call, so that the loops (chunks of neurons, blocks of
rows, cuBLAS accumulation, buffer sizes) run on a machine without a GPU.

:func:`install` patches :mod:`pyrgd.backends.cuda`: CuPy becomes :class:`FakeCuPy` (NumPy arrays, which tracemalloc
counts), the module compile returns a tile configuration, ``cupy.cublas.gemm`` becomes :func:`fake_gemm` and a
kernel launch calls a NumPy emulation of the chunk kernels of wide_grad and gram (:class:`FeaturesKernel`) which writes only the elements its
launch grid covers, so a grid too small leaves the NaN of the poisoned buffers. The kernels themselves are tested
on a GPU (tests/test_cuda_backend.py, tests/test_wide_grad_cuda.py); this checks the Python around them.
"""
from __future__ import annotations

import contextlib
import types

import numpy as np

from pyrgd.activations import parse_activation, sigma_and_derivative


class FakeCuPy(types.SimpleNamespace):
    """The CuPy names the host loops use, on NumPy arrays."""

    def __init__(self):
        super().__init__(cuda=types.SimpleNamespace(Device=lambda dev=None: contextlib.nullcontext()),
                         empty=np.empty, matmul=np.matmul)


def fake_gemm(transa, transb, a, b, out=None, alpha=1.0, beta=0.0):
    """cupy.cublas.gemm's contract: out = alpha op(a) op(b) + beta out, out not read when beta is 0; out must be
    given here (the backend always gives it) with the product's shape."""
    A = a.T if transa == "T" else a
    B = b.T if transb == "T" else b
    assert out is not None and out.shape == (A.shape[0], B.shape[1]), "gemm: out of the wrong shape"
    assert A.shape[1] == B.shape[0], "gemm: inner sizes differ"
    if beta == 0.0:
        np.matmul(A, B, out=out)
        if alpha != 1.0:
            out *= alpha
    else:
        out[...] = alpha * (A @ B) + beta * out
    return out


class FeaturesKernel:
    """The chunk kernels of csrc/cuda/wide_layer.cu in NumPy. Block (bx, by) covers rows [bx SM, bx SM + SM) and
    neurons j0 = jb + by ST .. j0 + ST (below je and n1) and writes, at F[r ldf + j - jb]:
    wide_grad_features_kernel S = a1 sigma(Z) and D = a1 (G W2^T) (.) sigma'(Z); wide_features_kernel
    F = a1 sigma(Z); wide_backward_features_kernel F = a1 (B2 W2^T) (.) sigma'(Z). Nothing outside the grid."""

    def __init__(self, kname, act_name, tiles, launches):
        self.kname, self.act_name, self.tiles, self.launches = kname.split("::")[-1], act_name, tiles, launches

    def __call__(self, grid, block, args):
        kind = self.kname
        if kind == "wide_grad_features_kernel":
            X, W1, W2, G, S, D, N, d, n1, n2, ldx, ldw1, ldw2, ldg, jb, je, ldf, a1, gamma = args
            outs = (S, D)
        elif kind == "wide_features_kernel":
            X, W1, S, N, d, n1, ldx, ldw1, jb, je, ldf, a1, gamma = args
            outs = (S,)
        else:
            assert kind == "wide_backward_features_kernel", f"no emulation of {kind}"
            X, W1, W2, G, D, N, d, n1, n2, ldx, ldw1, ldw2, ldg, jb, je, ldf, a1, gamma = args
            outs = (D,)
        SM, ST = self.tiles["SM"], self.tiles["ST"]
        N, jb, je, ldf = int(N), int(jb), int(je), int(ldf)
        assert X.shape[0] == N and int(ldx) == X.strides[0] // X.itemsize
        act = parse_activation(self.act_name, float(gamma) if self.act_name.endswith("leaky_relu") else None)
        rows = min(N, grid[0] * SM)
        hi = min(je, n1, jb + grid[1] * ST)
        Z = X[:rows].astype(np.float64) @ W1[:, jb:hi]
        f, df = sigma_and_derivative(act, Z)
        values = []
        if kind != "wide_backward_features_kernel":
            values.append(float(a1) * f)
        if kind != "wide_features_kernel":
            assert G.shape[0] == N
            values.append(float(a1) * (G[:rows].astype(np.float64) @ W2[jb:hi].T) * df)
        idx = (np.arange(rows)[:, None] * ldf + np.arange(hi - jb)[None, :]).ravel()
        for o, v in zip(outs, values):
            assert idx.size == 0 or idx.max() < o.size, "kernel: writes past its buffer"
            o.reshape(-1)[idx] = v.ravel()
        self.launches.append({"kernel": kind, "grid": grid, "rows": N, "jb": jb, "je": je})


def install(monkeypatch, tiles=None):
    """Patch pyrgd.backends.cuda to run on NumPy; returns the list that records every kernel launch."""
    from pyrgd.backends import cuda

    tiles = dict(SM=32, ST=16) if tiles is None else tiles
    launches = []
    fake = FakeCuPy()
    monkeypatch.setattr(cuda, "_cupy", lambda: fake)
    monkeypatch.setattr(cuda, "_check_cuda_args", lambda **arrays: 0)
    monkeypatch.setattr(cuda, "_module", lambda dtype, act_name: (act_name, tiles))
    monkeypatch.setattr(cuda, "_cublas_gemm", lambda: fake_gemm)
    monkeypatch.setattr(cuda, "_POISON", True)

    def kernel(mod, kname, dtype, act_name, smem=0):
        return FeaturesKernel(kname, act_name, tiles, launches)

    monkeypatch.setattr(cuda, "_kernel", kernel)
    return launches
