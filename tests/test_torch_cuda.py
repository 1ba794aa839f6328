"""pyrgd.torch and pyrgd.ops with CUDA tensors: the CUDA backend through DLPack on torch's current stream (skips
without torch, CuPy or a CUDA device: written, never run on the development machine, which has no GPU)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
cp = pytest.importorskip("cupy")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

import pyrgd.ops as ops  # noqa: E402
import pyrgd.torch as pt  # noqa: E402

pytestmark = pytest.mark.gpu


def test_ops_take_cuda_tensors_and_return_cuda_tensors():
    g = torch.Generator(device="cuda").manual_seed(0)
    X, W1, W2, G = (torch.randn(*s, device="cuda", dtype=torch.float64, generator=g)
                    for s in ((30, 4), (4, 200), (200, 3), (30, 3)))
    H = ops.wide_forward(X, W1, W2, activation="tanh")
    assert isinstance(H, torch.Tensor) and H.is_cuda
    want = ops.wide_forward(*(a.cpu().numpy() for a in (X, W1, W2)), activation="tanh", backend="reference")
    np.testing.assert_allclose(H.cpu().numpy(), want, rtol=1e-12)
    grads = ops.wide_grad(X, W1, W2, G, activation="tanh", input_grad=True)
    ref = ops.wide_grad(*(a.cpu().numpy() for a in (X, W1, W2, G)), activation="tanh", input_grad=True,
                        backend="reference")
    for a, b in zip(grads, ref):
        assert a.is_cuda
        np.testing.assert_allclose(a.cpu().numpy(), b, rtol=1e-12, atol=1e-14)


def test_layer_on_a_side_stream_matches_the_cpu_layer():
    torch.manual_seed(0)
    layer = pt.WideLayer(5, 300, 2, activation="softplus", dtype=torch.float64)
    X = torch.randn(40, 5, dtype=torch.float64)
    H_cpu = layer(X)
    H_cpu.square().sum().backward()
    g_cpu = layer.W1.grad.clone()
    layer.W1.grad = None
    layer.cuda()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        Xc = X.cuda()
        H = layer(Xc)
        H.square().sum().backward()
    torch.cuda.synchronize()
    np.testing.assert_allclose(H.detach().cpu().numpy(), H_cpu.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(layer.W1.grad.cpu().numpy(), g_cpu.numpy(), rtol=1e-11, atol=1e-13)


def test_gradcheck_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(1)
    X, W1, W2 = (torch.randn(*s, device="cuda", dtype=torch.float64, generator=g).requires_grad_()
                 for s in ((6, 3), (3, 40), (40, 2)))
    assert torch.autograd.gradcheck(lambda X, W1, W2: pt.WideFunction.apply(X, W1, W2, "tanh", 0.5), (X, W1, W2))


def test_outputs_come_from_torchs_caching_allocator():
    """H and the gradients are allocated by torch (counted by torch.cuda.memory_allocated), not by CuPy's pool."""
    g = torch.Generator(device="cuda").manual_seed(2)
    X, W1, W2 = (torch.randn(*s, device="cuda", dtype=torch.float32, generator=g).requires_grad_()
                 for s in ((4096, 8), (8, 300), (300, 64)))
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    H = pt.WideFunction.apply(X, W1, W2, "tanh", 1.0)
    assert H.untyped_storage().resizable()
    assert torch.cuda.memory_allocated() - before >= H.numel() * H.element_size()
    H.backward(torch.ones_like(H))
    assert all(t.grad.untyped_storage().resizable() for t in (X, W1, W2))
