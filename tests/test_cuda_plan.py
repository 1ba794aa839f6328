"""Large N on the CUDA backend: the plan reads the GPU's free memory (cudaMemGetInfo), and the matrix-free
estimate and the certified bound run on CuPy arrays with the same results as on NumPy. Skips itself without CuPy
and a CUDA device."""
import numpy as np
import pytest

cp = pytest.importorskip("cupy", reason="needs CuPy")
try:
    if cp.cuda.runtime.getDeviceCount() < 1:
        pytest.skip("no CUDA device", allow_module_level=True)
except Exception:  # pragma: no cover - no driver
    pytest.skip("no CUDA device", allow_module_level=True)

from pyrgd import plan as P  # noqa: E402
from pyrgd import spectrum  # noqa: E402
from pyrgd.activations import parse_activation  # noqa: E402

pytestmark = pytest.mark.gpu
ACT = parse_activation("erf")


def test_plan_reads_the_gpu_memory():
    avail, device = P.available_memory("cuda")
    free, total = cp.cuda.runtime.memGetInfo()
    assert device == "GPU" and free <= avail <= total
    p = P.plan_run(4096, 32, [4096, 16, 1], "float32", ACT, "cuda", timing=False)
    assert p.method == "neurons" and p.device == "GPU" and p.available == pytest.approx(avail, rel=0.5)


def test_estimate_and_bound_on_cupy_match_numpy():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 60)) / 60 ** 0.5
    W1 = rng.standard_normal((60, 500))
    host = spectrum.LambdaMinEstimator(120, k=8, iters=200, tol=1e-10).estimate(X, W1, ACT, 1.0)["lambda_min"]
    dev = spectrum.LambdaMinEstimator(120, k=8, iters=200, tol=1e-10).estimate(cp.asarray(X), cp.asarray(W1), ACT,
                                                                               1.0)["lambda_min"]
    assert dev == pytest.approx(host, rel=1e-6)
    b = spectrum.certified_lower_bound(cp.asarray(X), cp.asarray(W1), ACT, 1.0, 0.9 * host)
    assert b is not None and 0 < b <= host
    assert spectrum.certified_lower_bound(cp.asarray(X), cp.asarray(W1), ACT, 1.0, 1.1 * host) is None
