"""pyrgd.torch: WideFunction (gradcheck), WideLayer (trains with torch.optim like an all-torch model), torch.compile."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pyrgd.ops as ops  # noqa: E402
import pyrgd.torch as pt  # noqa: E402
from pyrgd.errors import PyrgdError  # noqa: E402

F = torch.nn.functional


def torch_sigma(name, x):
    """The activations in plain torch (docs/theory.md section 3), for the all-torch reference model."""
    if name == "tanh":
        return torch.tanh(x)
    if name == "softplus":
        return F.softplus(x, threshold=1e9)
    if name.startswith("smooth_leaky_relu"):
        g = float(name[name.index("(") + 1:-1])
        return g * x + (1 - g) * (F.softplus(x, threshold=1e9) - math.log(2.0))
    if name == "erf":
        return torch.erf(x)
    raise AssertionError(name)


def _inputs(dtype=torch.float64, N=6, d=3, n1=40, n2=2, seed=0, x_grad=True):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, d, dtype=dtype, generator=g).requires_grad_(x_grad)
    W1 = (torch.randn(d, n1, dtype=dtype, generator=g) / math.sqrt(d)).requires_grad_()
    W2 = (torch.randn(n1, n2, dtype=dtype, generator=g) / math.sqrt(n1)).requires_grad_()
    return X, W1, W2


@pytest.mark.parametrize("spec", ["tanh", "softplus", "smooth_leaky_relu(0.2)", "erf"])
@pytest.mark.parametrize("x_grad", [True, False], ids=["dX", "no_dX"])
def test_gradcheck_float64(spec, x_grad):
    X, W1, W2 = _inputs(n1=70, x_grad=x_grad)
    assert torch.autograd.gradcheck(lambda X, W1, W2: pt.WideFunction.apply(X, W1, W2, spec, 0.7), (X, W1, W2))


def test_gradcheck_layer_with_bias_and_batch_dims():
    layer = pt.WideLayer(3, 50, 2, activation="tanh", bias=True, dtype=torch.float64)
    with torch.no_grad():
        layer.b1.normal_()
    X = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    params = (X, layer.W1, layer.W2, layer.b1)

    def f(X, W1, W2, b1):
        return torch.func.functional_call(layer, {"W1": W1, "W2": W2, "b1": b1}, (X,))

    assert layer(X).shape == (2, 4, 2)
    assert torch.autograd.gradcheck(f, params)


def _assert_autograd_is_ops(X, W1, W2, act, a1):
    """WideFunction's output and gradients are ops.wide_forward / ops.wide_grad's for ``act``, bit for bit."""
    H = pt.WideFunction.apply(X, W1, W2, act, a1)
    G = torch.randn_like(H)
    H.backward(G)
    Xn, W1n, W2n = (t.detach().numpy() for t in (X, W1, W2))
    assert np.array_equal(H.detach().numpy(), ops.wide_forward(Xn, W1n, W2n, activation=act, a1=a1))
    want = ops.wide_grad(Xn, W1n, W2n, G.numpy(), activation=act, a1=a1, input_grad=True)
    for t, w in zip((W1, W2, X), want):
        assert np.array_equal(t.grad.numpy(), w)


def test_forward_and_gradients_equal_ops():
    """The autograd results are ops.wide_forward / ops.wide_grad's, bit for bit."""
    _assert_autograd_is_ops(*_inputs(N=30, n1=130), "softplus", 1.5)


def test_outputs_are_tensors_from_torchs_allocator():
    """H and the gradients live in storage torch allocated (resizable), not in memory imported from another library
    through DLPack (not resizable): torch counts, reuses and frees it (on CUDA: its caching allocator)."""
    X, W1, W2 = _inputs(N=12, n1=50)
    H = pt.WideFunction.apply(X, W1, W2, "tanh", 1.0)
    assert H.untyped_storage().resizable()
    H.backward(torch.ones_like(H))
    assert all(t.grad.untyped_storage().resizable() for t in (X, W1, W2))
    imported = torch.from_dlpack(ops.wide_forward(*(t.detach().numpy() for t in (X, W1, W2))))
    assert not imported.untyped_storage().resizable()  # what the check tells apart


def test_non_finite_values_propagate_as_in_torch():
    """No PyrgdError for NaN or infinities (torch's semantics): a NaN sample gives NaN in its own row only, and an
    infinite upstream gradient (a GradScaler overflow) reaches the weights' gradients for GradScaler to see."""
    X, W1, W2 = _inputs(N=8, n1=30)
    with torch.no_grad():
        X[3, 0] = float("nan")
    H = pt.WideFunction.apply(X, W1, W2, "softplus", 1.0)
    rows = torch.arange(8) != 3
    assert torch.isnan(H[3]).all() and torch.isfinite(H[rows]).all()
    X, W1, W2 = _inputs(N=8, n1=30)
    H = pt.WideFunction.apply(X, W1, W2, "softplus", 1.0)
    G = torch.zeros_like(H)
    G[5, 1] = float("inf")
    H.backward(G)
    assert not torch.isfinite(W2.grad).all() and not torch.isfinite(W1.grad).all()
    assert torch.isfinite(W2.grad[:, 0]).all()


def test_a_gamma_with_more_than_six_digits_is_passed_on_exactly():
    """The activation travels to the custom op as a string: gamma = 1/3 must keep every bit (not '0.333333')."""
    act = "leaky_relu(0.3333333333333333)"
    _assert_autograd_is_ops(*_inputs(N=20, n1=90), act, 1.0)
    assert pt.WideLayer(3, 8, 1, activation="leaky_relu(0.3333333333333333)").activation == act


def test_input_gradient_only_when_needed(monkeypatch):
    calls = []
    real = ops.wide_grad

    def spy(*a, **k):
        calls.append(k["input_grad"])
        return real(*a, **k)

    monkeypatch.setattr(ops, "wide_grad", spy)
    for x_grad in (False, True):
        X, W1, W2 = _inputs(x_grad=x_grad)
        pt.WideFunction.apply(X, W1, W2, "tanh").sum().backward()
        assert (X.grad is not None) == x_grad
    assert calls == [False, True]


class TorchWide(torch.nn.Module):
    """The all-torch reference of WideLayer: a1 sigma(X W1 + b1) W2 with autograd's own gradients."""

    def __init__(self, layer):
        super().__init__()
        self.W1 = torch.nn.Parameter(layer.W1.detach().clone())
        self.W2 = torch.nn.Parameter(layer.W2.detach().clone())
        self.b1 = None if layer.b1 is None else torch.nn.Parameter(layer.b1.detach().clone())
        self.act, self.a1 = layer.activation, layer.a1

    def forward(self, X):
        Z = X @ self.W1 + (0 if self.b1 is None else self.b1)
        return self.a1 * torch_sigma(self.act, Z) @ self.W2


def _train(model, tail, X, Y, steps):
    opt = torch.optim.Adam(list(model.parameters()) + list(tail.parameters()), lr=1e-2)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.mse_loss(tail(model(X)), Y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("bias", [False, True])
def test_trains_with_adam_like_an_all_torch_model(bias):
    torch.manual_seed(0)
    X, Y = torch.randn(64, 8, dtype=torch.float64), torch.randn(64, 1, dtype=torch.float64)
    layer = pt.WideLayer(8, 256, 16, activation="smooth_leaky_relu(0.2)", bias=bias, dtype=torch.float64)
    ref = TorchWide(layer)
    tail = torch.nn.Sequential(torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()
    tail_ref = torch.nn.Sequential(torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()
    tail_ref.load_state_dict(tail.state_dict())
    got, want = _train(layer, tail, X, Y, 30), _train(ref, tail_ref, X, Y, 30)
    assert got[-1] < 0.5 * got[0]
    np.testing.assert_allclose(got, want, rtol=1e-9)
    np.testing.assert_allclose(layer.W1.detach().numpy(), ref.W1.detach().numpy(), rtol=1e-7, atol=1e-10)


def test_float32_layer_matches_torch_in_float32():
    torch.manual_seed(1)
    layer = pt.WideLayer(5, 300, 3, activation="tanh")
    assert layer.W1.dtype == torch.float32
    X = torch.randn(50, 5)
    ref = TorchWide(layer)
    torch.testing.assert_close(layer(X), ref(X), rtol=1e-5, atol=1e-6)
    layer(X).square().sum().backward()
    ref(X).square().sum().backward()
    torch.testing.assert_close(layer.W1.grad, ref.W1.grad, rtol=1e-4, atol=1e-5)


def test_compiles_without_graph_break():
    """torch.compile(fullgraph=True) traces the layer (custom operators) and gives eager's values and gradients."""
    torch.manual_seed(2)
    layer = pt.WideLayer(4, 100, 2, activation="softplus", dtype=torch.float64)
    model = torch.nn.Sequential(layer, torch.nn.Tanh())
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    X = torch.randn(9, 4, dtype=torch.float64)
    out = compiled(X)
    assert torch.equal(out, model(X))
    out.sum().backward()
    g_compiled = layer.W1.grad.clone()
    layer.W1.grad = None
    model(X).sum().backward()
    assert torch.equal(g_compiled, layer.W1.grad)


def test_bad_arguments_are_pyrgd_errors():
    with pytest.raises(PyrgdError, match="activation"):
        pt.WideLayer(3, 10, 2, activation="nope")
    with pytest.raises(PyrgdError, match="n1: expected a positive integer"):
        pt.WideLayer(3, 0, 2)
    with pytest.raises(PyrgdError, match="bias: expected True or False"):
        pt.WideLayer(3, 10, 2, bias=1)
    layer = pt.WideLayer(3, 10, 2)
    with pytest.raises(PyrgdError, match=r"X: expected a tensor of shape \(\.\.\., 3\)"):
        layer(torch.randn(5, 4))
    X, W1, W2 = _inputs()
    with pytest.raises(PyrgdError, match="X, W1, W2: expected shapes"):
        pt.WideFunction.apply(X, W1, W2[:5], "tanh")
    with pytest.raises(PyrgdError, match="W1: expected dtype float64 like the other arguments"):
        pt.WideFunction.apply(X, W1.float(), W2, "tanh")
