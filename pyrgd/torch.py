"""PyTorch adapter: the wide first layer as an autograd function and an ``nn.Module`` (``pip install 'pyrgd[torch]'``).

    H = a1 sigma(X W1 [+ b1]) W2      X (..., d), W1 (d, n1), W2 (n1, n2), H (..., n2)

The forward pass is :func:`pyrgd.ops.wide_forward`, the backward pass :func:`pyrgd.ops.wide_grad` (with the input
gradient only when X needs one): fused kernels that never store anything N x n1, so a layer far wider than what
PyTorch could hold as an activation trains in the memory of its weights. CPU tensors run on the C++ kernels, CUDA
tensors on the CUDA kernels (CuPy) on torch's current stream; float32 and float64. Tensors cross through DLPack,
zero-copy, and the results are written into tensors torch allocates (on CUDA from its caching allocator, as any
torch operator's, not from CuPy's memory pool). As in torch's own operators, NaN and infinite values are not
rejected but propagate (``ops``' ``check_finite=False``): no pass over the inputs and no wait for the GPU to check
them, and an overflowing gradient reaches ``torch.amp.GradScaler`` or ``torch.autograd.detect_anomaly`` as
infinities.

- :class:`WideFunction` -- ``WideFunction.apply(X, W1, W2, activation="relu", a1=1.0)``, a
  ``torch.autograd.Function`` (first-order: its backward is not itself differentiable).
- :class:`WideLayer` -- ``WideLayer(d, n1, n2, activation=..., bias=False)``: Parameters ``W1`` (d, n1), ``W2``
  (n1, n2) and, with ``bias=True``, ``b1`` (n1,) inside the activation.

torch.compile: the kernels are registered as the custom operators ``torch.ops.pyrgd.wide_forward`` and
``torch.ops.pyrgd.wide_grad`` (torch.library.custom_op, with shape functions for fake tensors), so Dynamo traces
a model that uses WideFunction / WideLayer without a graph break (``fullgraph=True`` compiles: tested with the
``aot_eager`` backend; the default inductor backend compiles it too, checked by hand with torch 2.13 on the CPU) and
treats the kernels as opaque calls: nothing is fused across them. The backward saves only X, W1, W2 and recomputes
sigma(X W1) inside its own kernel (no N x n1 activation is kept between the passes).
"""
from __future__ import annotations

import math

try:
    import torch
except ImportError as _e:  # pragma: no cover - the extra is not installed
    raise ImportError("pyrgd.torch needs PyTorch: pip install 'pyrgd[torch]'") from _e

from . import ops
from ._validate import check_scalar
from .activations import parse_activation
from .errors import PyrgdError

__all__ = ["WideFunction", "WideLayer", "wide"]


def _check(X, W1, W2):
    for name, t, nd in (("X", X, 2), ("W1", W1, 2), ("W2", W2, 2)):
        if not isinstance(t, torch.Tensor):
            raise PyrgdError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() != nd:
            raise PyrgdError(f"{name}: expected a {nd}-D tensor, got shape {tuple(t.shape)}")
    if W1.shape[0] != X.shape[1] or W2.shape[0] != W1.shape[1]:
        raise PyrgdError(f"X, W1, W2: expected shapes (N, d), (d, n1), (n1, n2), got {tuple(X.shape)}, "
                         f"{tuple(W1.shape)}, {tuple(W2.shape)}")
    if X.device != W1.device or X.device != W2.device:
        raise PyrgdError(f"X, W1, W2: expected one device, got {X.device}, {W1.device}, {W2.device}")


@torch.library.custom_op("pyrgd::wide_forward", mutates_args=())
def _wide_forward(X: torch.Tensor, W1: torch.Tensor, W2: torch.Tensor, activation: str, a1: float) -> torch.Tensor:
    """H = a1 sigma(X W1) W2 (N, n2) by :func:`pyrgd.ops.wide_forward` (on torch's current stream for CUDA), written
    into a tensor from torch's allocator (its caching allocator on CUDA: counted, reused and freed by torch)."""
    return ops.wide_forward(X, W1, W2, activation=activation, a1=a1, out=X.new_empty((X.shape[0], W2.shape[1])),
                            check_finite=False)


@_wide_forward.register_fake
def _(X, W1, W2, activation, a1):
    return X.new_empty((X.shape[0], W2.shape[1]))


@torch.library.custom_op("pyrgd::wide_grad", mutates_args=())
def _wide_grad(X: torch.Tensor, W1: torch.Tensor, W2: torch.Tensor, G: torch.Tensor, activation: str, a1: float,
               input_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dW1, dW2, dX) by :func:`pyrgd.ops.wide_grad`, written into tensors from torch's allocator; dX is an empty
    (0,) tensor without ``input_grad``."""
    out = (W1.new_empty(tuple(W1.shape)), W2.new_empty(tuple(W2.shape))) + (
        (X.new_empty(tuple(X.shape)),) if input_grad else ())
    res = ops.wide_grad(X, W1, W2, G, activation=activation, a1=a1, input_grad=input_grad, out=out,
                        check_finite=False)
    return res[0], res[1], res[2] if input_grad else X.new_empty((0,))


@_wide_grad.register_fake
def _(X, W1, W2, G, activation, a1, input_grad):
    dX = X.new_empty(tuple(X.shape)) if input_grad else X.new_empty((0,))
    return W1.new_empty(tuple(W1.shape)), W2.new_empty(tuple(W2.shape)), dX


class WideFunction(torch.autograd.Function):
    """``WideFunction.apply(X, W1, W2, activation="relu", a1=1.0)`` -> H = a1 sigma(X W1) W2.

    X (N, d), W1 (d, n1), W2 (n1, n2): tensors of one dtype (float32 or float64) and device (CPU or CUDA); H (N, n2).
    ``activation``: a name such as ``"tanh"`` or ``"smooth_leaky_relu(0.2)"``; ``a1``: the layer's multiplier.
    Backward: :func:`pyrgd.ops.wide_grad`, the input gradient computed only when X requires grad. Saves X, W1, W2 for
    the backward pass (no N x n1 activation). First-order only (``once_differentiable``).
    """

    @staticmethod
    def forward(ctx, X, W1, W2, activation="relu", a1=1.0):
        _check(X, W1, W2)
        act = str(parse_activation(activation))
        ctx.save_for_backward(X, W1, W2)
        ctx.act, ctx.a1 = act, float(a1)
        return torch.ops.pyrgd.wide_forward(X, W1, W2, act, float(a1))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gH):
        X, W1, W2 = ctx.saved_tensors
        need_x, need_w1, need_w2 = ctx.needs_input_grad[:3]
        dW1, dW2, dX = torch.ops.pyrgd.wide_grad(X, W1, W2, gH.contiguous(), ctx.act, ctx.a1, bool(need_x))
        return (dX if need_x else None, dW1 if need_w1 else None, dW2 if need_w2 else None, None, None)


def wide(X, W1, W2, activation="relu", a1=1.0):
    """``WideFunction.apply`` with X of any leading shape (..., d) -> (..., n2)."""
    if isinstance(X, torch.Tensor) and X.dim() > 2:
        lead = X.shape[:-1]
        return WideFunction.apply(X.reshape(-1, X.shape[-1]), W1, W2, activation, a1).reshape(*lead, W2.shape[1])
    return WideFunction.apply(X, W1, W2, activation, a1)


class WideLayer(torch.nn.Module):
    """The wide first layer as a module: ``forward(X)`` = a1 sigma(X W1 [+ b1]) W2 through pyrgd's kernels.

    d, n1, n2: input size, width of the wide layer, output size. Parameters ``W1`` (d, n1) and ``W2`` (n1, n2), drawn
    with pyrgd's default (LeCun) scale: N(0, 1/d) and N(0, 1/n1) (torch's generator, so ``torch.manual_seed``
    applies). ``bias=True`` adds ``b1`` (n1,), zeros at first, inside the activation: the kernels see X with a
    column of ones and W1 with b1 as its last row (one copy of X per call). ``activation``: a name or
    :class:`pyrgd.Activation`; ``a1``: the multiplier. X (..., d) -> (..., n2); dtype and device: those of the
    parameters (``.to(...)``, ``.double()``, ``.cuda()`` as for any module).
    """

    def __init__(self, d, n1, n2, activation="relu", bias=False, a1=1.0, dtype=None, device=None):
        super().__init__()
        for name, v in (("d", d), ("n1", n1), ("n2", n2)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise PyrgdError(f"{name}: expected a positive integer, got {v!r}")
        if not isinstance(bias, bool):
            raise PyrgdError(f"bias: expected True or False, got {bias!r}")
        self.activation = str(parse_activation(activation))
        self.a1 = check_scalar("a1", a1)
        kw = dict(dtype=dtype, device=device)
        self.W1 = torch.nn.Parameter(torch.empty(d, n1, **kw))
        self.W2 = torch.nn.Parameter(torch.empty(n1, n2, **kw))
        self.b1 = torch.nn.Parameter(torch.empty(n1, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.W1.normal_(0.0, 1.0 / math.sqrt(self.W1.shape[0]))
            self.W2.normal_(0.0, 1.0 / math.sqrt(self.W2.shape[0]))
            if self.b1 is not None:
                self.b1.zero_()

    def forward(self, X):
        if not isinstance(X, torch.Tensor) or X.dim() < 1 or X.shape[-1] != self.W1.shape[0]:
            raise PyrgdError(f"X: expected a tensor of shape (..., {self.W1.shape[0]}), got "
                             f"{tuple(X.shape) if isinstance(X, torch.Tensor) else type(X).__name__}")
        W1 = self.W1
        if self.b1 is not None:
            X = torch.cat([X, X.new_ones(X.shape[:-1] + (1,))], dim=-1)
            W1 = torch.cat([W1, self.b1.unsqueeze(0)], dim=0)
        if X.dim() == 1:
            return wide(X.unsqueeze(0), W1, self.W2, self.activation, self.a1).squeeze(0)
        return wide(X, W1, self.W2, self.activation, self.a1)

    def extra_repr(self) -> str:
        d, n1 = self.W1.shape
        return (f"d={d}, n1={n1}, n2={self.W2.shape[1]}, activation={self.activation!r}, bias={self.b1 is not None}, "
                f"a1={self.a1:g}")
