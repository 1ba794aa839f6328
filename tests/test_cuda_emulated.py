"""What the CPU emulator of the CUDA kernels (tests/_cuda_emu.py) can check that a GPU run does not: the kernels'
results do not depend on the order a block's threads run in (a read of a shared word that another thread writes in
the same barrier interval would change them). On every machine, in the plain test run.

The GPU test files themselves run on the emulator with ``pytest --cuda-emulator -m gpu`` (.ci/run does), and on a
GPU with ``pytest -m gpu`` (bench/device_run.sh).
"""
import math

import numpy as np
import pytest

import _cuda_emu as E
from pyrgd.activations import parse_activation
from pyrgd.backends import cuda, reference

TOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}


@pytest.fixture
def cp(monkeypatch):
    fake = E.install(monkeypatch)
    monkeypatch.setattr(cuda, "_POISON", True)  # an element no thread writes stays NaN
    return fake


def _case(dtype):
    """150 rows (3 row tiles of the float64 step, 2 of the float32 blocked kernels), d = 20, n1 = 300, n2 = 3;
    float32 X and W1 dyadic so that Z = X W1 is exact in both precisions."""
    rng = np.random.default_rng(8)
    N, d, n1, n2 = 150, 20, 300, 3
    if np.dtype(dtype) == np.float32:
        X = rng.integers(-8, 9, (N, d)) / (8 * 2.0 ** round(math.log2(math.sqrt(d))))
        W1 = rng.integers(-8, 9, (d, n1)) / 8
    else:
        X, W1 = rng.standard_normal((N, d)) / math.sqrt(d), rng.standard_normal((d, n1))
    W2 = rng.standard_normal((n1, n2)) / math.sqrt(n1)
    G, B2 = rng.standard_normal((N, n2)), rng.standard_normal((N, n2))
    return [a.astype(dtype) for a in (X, W1, W2, G, B2)]


def _every_output(cp, arrays, act, a1):
    """forward, wide_grad (with dX), both Grams, then a step with the next forward: host arrays, in that order."""
    Xd, W1d, W2d, Gd, B2d = (cp.asarray(a) for a in arrays)
    out = [cuda.forward(Xd, W1d, W2d, act, a1)]
    out += list(cuda.wide_grad(Xd, W1d, W2d, Gd, act, a1, True))
    out += [cuda.gram(Xd, W1d, act, a1), cuda.gram(Xd, W1d, act, a1, W2=W2d, B2=B2d)]
    r = cuda.step(Xd, W1d, W2d, Gd, 0.05, act, a1, True)
    out += [W1d, W2d, r.H_next]
    return [a.get() for a in out] + [np.array([r.grad_sq_w1, r.grad_sq_w2])]


def _reference_outputs(arrays, act, a1):
    X, W1, W2, G, B2 = (a.astype(np.float64) for a in arrays)
    out = [reference.forward(X, W1, W2, act, a1)]
    out += list(reference.wide_grad(X, W1, W2, G, act, a1, True))
    out += [reference.gram(X, W1, act, a1), reference.gram(X, W1, act, a1, W2=W2, B2=B2)]
    W1s, W2s = W1.copy(), W2.copy()
    r = reference.step(X, W1s, W2s, G, 0.05, act, a1, True)
    return out + [W1s, W2s, r.H_next, np.array([r.grad_sq_w1, r.grad_sq_w2])]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_results_do_not_depend_on_the_order_of_a_blocks_threads(cp, dtype):
    """Ascending, descending and two shuffled thread orders give the same bits, close to the reference; float32
    runs the register-blocked kernels, with their dynamic shared memory opted in above 48 KiB."""
    arrays, act = _case(dtype), parse_activation("smooth_leaky_relu", 0.2)
    runs = []
    for order, seed in ((0, 0), (1, 0), (2, 1), (2, 2)):
        with E.order(order, seed):
            runs.append(_every_output(cp, arrays, act, 0.7))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert np.array_equal(a, b)
    for got, want in zip(runs[0], _reference_outputs(arrays, act, 0.7)):
        assert np.isfinite(got).all()
        assert np.linalg.norm(got - want) <= TOL[np.dtype(dtype)] * np.linalg.norm(want)
    if np.dtype(dtype) == np.float32:
        smem = {l["kernel"].split("<")[0]: l["shared_mem"] for l in cp.launches}
        assert smem["pyrgd::cuda::wide_step_f32"] > 48 * 1024 and smem["pyrgd::cuda::wide_forward_f32"] > 48 * 1024


@pytest.mark.parametrize("flags", [[], ["--no-poison"]], ids=["poisoned", "uninitialized"])
def test_the_gpu_sanitizer_case_passes_on_the_emulator(monkeypatch, flags):
    """bench/gpu_sanitize_case.py (what bench/device_run.sh hands to compute-sanitizer) runs and matches the
    reference: the device's one call is not spent on a broken script."""
    import importlib.util
    from pathlib import Path

    E.install_module(monkeypatch)
    for knob in ("_POISON", "_STEP_GRID_LIMIT", "_GRAM_CHUNK_BYTES"):  # the script sets them; restored after
        monkeypatch.setattr(cuda, knob, getattr(cuda, knob))
    path = Path(__file__).resolve().parents[1] / "bench" / "gpu_sanitize_case.py"
    spec = importlib.util.spec_from_file_location("gpu_sanitize_case", path)
    case = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(case)
    assert case.main(flags) == 0
