"""The candidates of the benchmark: four ways to run one full GD step of the same network on the same data.

Each candidate is built from a :class:`~pyrgd.bench.problems.ProblemData` (it takes its own copies of the weights
and moves them to its device), and then ``step()`` runs one GD step of the whole network with step size
``problem.lr`` and returns the loss Phi = 1/2 ||F_L - Y||^2 at the weights before the step. ``weights()`` gives
host copies of the current weights, so that the harness can check that every candidate computes the same step.

fused    what :func:`pyrgd.train` runs per step (the backend's step engine, :func:`pyrgd.ops.step_engine`): on the cpu backend one C++ pass
         over panels of rows for the loss and every gradient, then the update; on cuda the tail from H and the
         wide layer's fused ``ops.wide_step(next_forward=True)``. Never N x n1.
unfused  the textbook step on an array library: Z1 = X W1, F1 = sigma(Z1) and the backward with full N x n1
         matrices (NumPy on the CPU, CuPy on the GPU); written independently of pyrgd.tail.
chunked  a loop over blocks of ``block`` neurons, one BLAS call per product, O(N x block) memory; the next step's H
         accumulated in the same loop (the fused algorithm, but with array ops instead of a kernel).
torch    PyTorch autograd on the whole network (materializes N x n1), the activation as a small autograd Function
         that saves only Z (the leanest unfused autograd graph), TF32 off.
torch_compile  the strongest PyTorch peer: the loss compiled by ``torch.compile`` (inductor, fullgraph, static
         shapes; the activation as plain differentiable ops, so that the compiler fuses it), autograd through the
         compiled graph, then the same update as ``torch``. The compilation runs when the candidate is built
         (``compile_seconds``), before the check step and the warm-up: it is never part of a timed step.
jax_jit  the strongest JAX peer: ``jax.jit`` of jax.value_and_grad of the loss and the update, the weights donated
         (updated in place where XLA can), matmul precision HIGHEST (no TF32/bf16 passes on a GPU); compiled ahead
         of time when the candidate is built (``compile_seconds``). float64 problems build and step under
         ``jax.enable_x64``.

The two compiled peers (:data:`PEERS`) and ``torch`` are skipped with a note where their library is absent
(:func:`unavailable`): ``pip install "pyrgd[bench]"`` installs both.
"""
from __future__ import annotations

import math
import time

import numpy as np

from ..activations import parse_activation, sigma_and_derivative
from ..errors import PyrgdError

#: every candidate, in run order (fused first: the others are compared with it)
CANDIDATES = ("fused", "unfused", "chunked", "torch", "torch_compile", "jax_jit")
#: the compiled peers: the best of them is what the "best peer" targets compare the fused step with
PEERS = ("torch_compile", "jax_jit")
#: what each candidate is, in a few words (tables, JSON)
DESCRIPTIONS = {
    "fused": "pyrgd's fused step (what pyrgd.train runs)",
    "unfused": "unfused array library step, N x n1 matrices",
    "chunked": "array library loop over neuron blocks, BLAS per block",
    "torch": "PyTorch autograd, unfused (N x n1 matrices)",
    "torch_compile": "torch.compile (inductor) of the loss, autograd, GD update",
    "jax_jit": "jax.jit of value_and_grad and the GD update (XLA)",
}
#: what installs the library a candidate needs
INSTALL_HINT = 'pip install "pyrgd[bench]"'


def _host(a) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a.copy()
    if hasattr(a, "detach"):  # torch
        return a.detach().cpu().numpy().copy()
    if hasattr(a, "block_until_ready"):  # jax
        return np.array(a, copy=True)
    return a.get()  # cupy


class Candidate:
    """Base class: ``step()`` one GD step, ``weights()`` host copies, ``sync()`` waits for the device."""

    name = ""

    def __init__(self, data, xp=np, copy=True):
        self.problem = data.problem
        self.xp = xp
        self.lr = data.problem.lr
        self.act = parse_activation(data.problem.activation)
        self.X = xp.asarray(data.X)
        self.Y = xp.asarray(data.Y)
        # copy=False (NumPy only): the candidate updates data.W itself (the memory measurement, which must not
        # count the weights twice); on a GPU, asarray already makes new device arrays
        if xp is np:
            self.W = [np.array(w, copy=True) if copy else w for w in data.W]
        else:
            self.W = [xp.ascontiguousarray(xp.asarray(w)) for w in data.W]

    def step(self) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def weights(self) -> list[np.ndarray]:
        return [_host(w) for w in self.W]

    def sync(self) -> None:
        if self.xp is not np:
            self.xp.cuda.Device().synchronize()

    def close(self) -> None:
        """Drop every array (GPU memory goes back to the pool)."""
        for k in list(vars(self)):
            if k not in ("problem", "xp", "lr", "act"):
                setattr(self, k, None)


class FusedStep(Candidate):
    """pyrgd's step, exactly as pyrgd.train runs it (H of the current weights carried from the previous step)."""

    name = "fused"

    def __init__(self, data, xp=np, backend="auto", copy=True):
        super().__init__(data, xp, copy)
        from .. import ops

        self.backend = ops.resolve_backend(backend, xp)
        self.mult = [1.0] * (len(self.W) - 1)
        method = getattr(data.problem, "method", "auto")
        if method not in ("auto",) + tuple(ops.get_backend(self.backend).METHODS):
            method = "auto"
        self.gd = ops.step_engine(self.X, self.Y, self.W, activation=self.act, multipliers=self.mult,
                                  backend=self.backend, method=method)
        self.method = self.gd.method
        self.kept = self.gd.kept

    def step(self) -> float:
        loss = self.gd.evaluate()
        self.grad_sq = self.gd.update(self.lr)
        return loss


class UnfusedStep(Candidate):
    """The textbook step with the whole N x n1 matrices, on NumPy (CPU) or CuPy (GPU)."""

    name = "unfused"

    def step(self) -> float:
        X, Y, W, act, lr = self.X, self.Y, self.W, self.act, self.lr
        L = len(W)
        Fs, dSs = [X], []  # F_0..F_{L-1}; sigma'(Z_1)..sigma'(Z_{L-1})
        F = X
        for l in range(L - 1):
            S, dS = sigma_and_derivative(act, F @ W[l])
            Fs.append(S)
            dSs.append(dS)
            F = S
        D = F @ W[L - 1] - Y  # D_L = F_L - Y
        loss = 0.5 * float((D * D).sum())
        grads = [None] * L
        for l in range(L - 1, -1, -1):  # weight index l holds W_{l+1}
            grads[l] = Fs[l].T @ D
            if l > 0:
                D = (D @ W[l].T) * dSs[l - 1]
        del Fs, dSs, D
        for w, g in zip(W, grads):
            w -= lr * g
        return loss


class ChunkedStep(Candidate):
    """Blocks of ``block`` neurons: per block Z = X W1[:, T], sigma, the block's gradients and update, then the
    block's share of the next H from the updated weights; pyrgd.tail for layers 2..L."""

    name = "chunked"

    def __init__(self, data, xp=np, block=512, copy=True):
        super().__init__(data, xp, copy)
        self.block = int(block)
        if self.block < 1:
            raise PyrgdError(f"block: expected a positive number of neurons, got {block!r}")
        self.mult = [1.0] * (len(self.W) - 1)
        self.H = self._forward()

    def _forward(self):
        X, W, xp, B = self.X, self.W, self.xp, self.block
        H = xp.zeros((X.shape[0], W[1].shape[1]), dtype=X.dtype)
        for j in range(0, W[0].shape[1], B):
            S, _ = sigma_and_derivative(self.act, X @ W[0][:, j:j + B], derivative=False)
            H += S @ W[1][j:j + B]
        return H

    def step(self) -> float:
        from ..tail import tail_backward, tail_forward

        X, W, xp, act, B, lr = self.X, self.W, self.xp, self.act, self.block, self.lr
        cache = tail_forward(self.H, W, act, self.mult)
        loss_d, G, tail_grads = tail_backward(cache, self.Y, W, act, self.mult)
        loss = float(loss_d)
        del cache
        H = xp.zeros_like(self.H)
        for j in range(0, W[0].shape[1], B):
            W1b, W2b = W[0][:, j:j + B], W[1][j:j + B]  # views: the updates below land in W[0], W[1]
            S, dS = sigma_and_derivative(act, X @ W1b)
            gW2 = S.T @ G
            D = (G @ W2b.T) * dS
            gW1 = X.T @ D
            W1b -= lr * gW1
            W2b -= lr * gW2
            S, _ = sigma_and_derivative(act, X @ W1b, derivative=False)
            H += S @ W2b
        for l, g in enumerate(tail_grads, start=2):
            W[l] -= lr * g
        self.H = H
        return loss


def torch_available() -> tuple[bool, str]:
    try:
        import torch  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return False, f"PyTorch is not importable ({type(e).__name__}: {str(e)[:120]}; {INSTALL_HINT})"
    return True, f"torch {torch.__version__}"


def _import_jax():
    """import jax, with its GPU allocator growing on demand (by default it takes 75% of the GPU memory at its first
    use, which the other candidates of the run need)."""
    import os

    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    return jax


def jax_available() -> tuple[bool, str]:
    try:
        jax = _import_jax()
    except Exception as e:  # ImportError, or a broken install
        return False, f"JAX is not importable ({type(e).__name__}: {str(e)[:120]}; {INSTALL_HINT})"
    return True, f"jax {jax.__version__}"


def _jax_device(jax, device: str):
    """The JAX device of ``device`` ('cpu' or 'cuda'), or None where JAX has none of that kind."""
    try:
        devs = jax.devices("cpu" if device == "cpu" else "gpu")
    except Exception:  # noqa: BLE001 - RuntimeError where JAX has no backend of that kind
        return None
    return devs[0] if devs else None


def unavailable(name: str, device: str = "cpu") -> str | None:
    """Why candidate ``name`` cannot run on ``device`` for want of a library or a device (None: it can)."""
    if name in ("torch", "torch_compile"):
        ok, why = torch_available()
        if not ok:
            return why
        import torch

        if name == "torch_compile" and not hasattr(torch, "compile"):
            return f"torch {torch.__version__} has no torch.compile (needs torch >= 2.0; {INSTALL_HINT})"
        if device != "cpu" and not torch.cuda.is_available():
            return "PyTorch has no CUDA device"
    elif name == "jax_jit":
        ok, why = jax_available()
        if not ok:
            return why
        jax = _import_jax()
        if _jax_device(jax, device) is None:
            return ("JAX has no GPU (its CUDA build: pip install 'jax[cuda12]' or 'jax[cuda13]')"
                    if device != "cpu" else "JAX has no CPU device")
    return None


def _torch_value(torch, act, inplace: bool = True):
    """sigma(z) in torch ops. inplace=False: out-of-place ops only (differentiable by autograd, traceable by
    torch.compile); inplace=True: fewer temporaries (for use under no_grad, in the autograd Function below)."""
    name, g = act.name, float(act.gamma)
    ln2 = math.log(2.0)
    F = torch.nn.functional

    def value(z):
        if name == "relu":
            return torch.relu(z)
        if name == "leaky_relu":
            return F.leaky_relu(z, g)
        if name in ("softplus", "smooth_leaky_relu"):
            s = F.softplus(z)
            if name == "smooth_leaky_relu":
                if inplace:
                    s.sub_(ln2).mul_(1.0 - g).add_(z, alpha=g)
                else:
                    s = g * z + (1.0 - g) * (s - ln2)
            return s
        if name == "tanh":
            return torch.tanh(z)
        if name == "erf":
            return torch.erf(z)
        if name == "identity":
            return z.clone() if inplace else z
        raise PyrgdError(f"torch baseline: activation {name} is not wired")

    return value


def _torch_activation(torch, act):
    """An autograd Function sigma(Z) that saves only Z and builds sigma'(Z) in the backward (in place)."""
    name, g = act.name, float(act.gamma)
    value = _torch_value(torch, act, inplace=True)

    def deriv(z):
        if name == "relu":
            return (z > 0).to(z.dtype)
        if name == "leaky_relu":
            return (z > 0).to(z.dtype).mul_(1.0 - g).add_(g)
        if name in ("softplus", "smooth_leaky_relu"):
            s = torch.sigmoid(z)
            if name == "smooth_leaky_relu":
                s.mul_(1.0 - g).add_(g)
            return s
        if name == "tanh":
            t = torch.tanh(z)
            return t.mul_(t).neg_().add_(1.0)
        if name == "erf":
            return torch.exp(-z * z).mul_(2.0 / math.sqrt(math.pi))
        return torch.ones_like(z)

    class Sigma(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z):
            ctx.save_for_backward(z)
            return value(z)

        @staticmethod
        def backward(ctx, grad):
            (z,) = ctx.saved_tensors
            return deriv(z).mul_(grad)

    return Sigma.apply


def network_loss(X, Y, W, sigma):
    """Phi = 1/2 ||F_L - Y||^2 of the network with weights W (a list) and activation ``sigma``, in whatever array
    library X, Y, W and sigma belong to (torch, jax.numpy): the one loss of the torch and JAX candidates."""
    F = X
    for w in W[:-1]:
        F = sigma(F @ w)
    R = F @ W[-1] - Y
    return 0.5 * (R * R).sum()


class TorchStep(Candidate):
    """PyTorch autograd over the whole network (CPU or CUDA tensors), then W -= lr grad under no_grad."""

    name = "torch"

    def __init__(self, data, device="cpu", copy=True):
        import torch

        self.problem = data.problem
        self.xp = None
        self.torch = torch
        self.device = device
        self.lr = data.problem.lr
        self.act = parse_activation(data.problem.activation)
        if device != "cpu":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.X = torch.as_tensor(data.X, device=device)
        self.Y = torch.as_tensor(data.Y, device=device)
        if copy or device != "cpu":
            self.W = [torch.tensor(w, device=device).requires_grad_(True) for w in data.W]
        else:  # shares data.W's memory (the memory measurement)
            self.W = [torch.from_numpy(w).requires_grad_(True) for w in data.W]
        self.sigma = _torch_activation(torch, self.act)

    def _loss(self):
        return network_loss(self.X, self.Y, self.W, self.sigma)

    def step(self) -> float:
        loss = self._loss()  # no N x n1 reference is kept here: the graph frees them during backward
        loss.backward()
        with self.torch.no_grad():
            for W in self.W:
                W.sub_(W.grad, alpha=self.lr)
                W.grad = None
        return float(loss.detach())

    def weights(self) -> list[np.ndarray]:
        return [_host(w) for w in self.W]

    def sync(self) -> None:
        if self.device != "cpu":
            self.torch.cuda.synchronize()


class TorchCompileStep(TorchStep):
    """:class:`TorchStep` with the loss compiled by torch.compile (inductor; the activation as plain differentiable
    ops that the compiler fuses, autograd's backward compiled with it). Compiled when built: ``compile_seconds`` is
    the first forward and backward (through the compiler), whose gradients are thrown away."""

    name = "torch_compile"

    def __init__(self, data, device="cpu", copy=True):
        super().__init__(data, device=device, copy=copy)
        torch = self.torch
        import torch._dynamo

        # every candidate compiles afresh: earlier problems' graphs (other shapes, dtypes) would count against
        # dynamo's recompilation limit, past which it silently runs the function eagerly
        torch._dynamo.reset()
        self.sigma = _torch_value(torch, self.act, inplace=False)
        sigma = self.sigma

        def loss(X, Y, *W):
            return network_loss(X, Y, W, sigma)

        self._compiled = torch.compile(loss, fullgraph=True, dynamic=False)
        t0 = time.perf_counter()
        self._compiled(self.X, self.Y, *self.W).backward()
        for W in self.W:
            W.grad = None
        self.sync()
        self.compile_seconds = time.perf_counter() - t0

    def _loss(self):
        return self._compiled(self.X, self.Y, *self.W)


def _jax_value(jax, act):
    """sigma(z) in jax.numpy ops (differentiated by jax.grad; relu'(0) = 0 as in pyrgd)."""
    name, g = act.name, float(act.gamma)
    ln2 = math.log(2.0)
    nn = jax.nn

    def value(z):
        if name == "relu":
            return nn.relu(z)
        if name == "leaky_relu":
            return nn.leaky_relu(z, g)
        if name == "softplus":
            return nn.softplus(z)
        if name == "smooth_leaky_relu":
            return g * z + (1.0 - g) * (nn.softplus(z) - ln2)
        if name == "tanh":
            return jax.numpy.tanh(z)
        if name == "erf":
            return jax.scipy.special.erf(z)
        if name == "identity":
            return z
        raise PyrgdError(f"jax baseline: activation {name} is not wired")

    return value


def _x64_scope(jax, on: bool):
    """A context factory in which float64 arrays stay float64 (jax_enable_x64) for a float64 candidate: only around
    its own building and steps, so that other JAX code in the process keeps its setting. Where this JAX has no such
    context, the setting is switched on for the process."""
    import contextlib

    if not on or jax.config.jax_enable_x64:
        return contextlib.nullcontext
    scope = getattr(jax, "enable_x64", None)
    if scope is None:
        try:
            from jax.experimental import enable_x64 as scope
        except ImportError:
            scope = None
    if scope is None:
        jax.config.update("jax_enable_x64", True)
        return contextlib.nullcontext
    return lambda: scope(True)


class JaxJitStep(Candidate):
    """jax.jit of one whole GD step: jax.value_and_grad of the loss, then W - lr grad, the weights donated.
    Compiled ahead of time when built (``compile_seconds``). ``lr`` is an argument of the compiled step (not a
    constant folded into it)."""

    name = "jax_jit"

    def __init__(self, data, device="cpu", copy=True):
        jax = _import_jax()
        self.problem = data.problem
        self.xp = None
        self.jax = jax
        self.device = device
        self.lr = data.problem.lr
        self.act = parse_activation(data.problem.activation)
        self._x64 = _x64_scope(jax, data.X.dtype == np.float64)
        dev = _jax_device(jax, device)
        if dev is None:
            raise PyrgdError(f"device: JAX has no {device} device")
        with self._x64():
            self._build(data, dev)

    def _build(self, data, dev):
        jax = self.jax
        # copies first: on the CPU, device_put may alias a NumPy array, and the donated weights are overwritten
        put = lambda a: jax.device_put(np.array(a, copy=True), dev)  # noqa: E731
        self.X, self.Y = put(data.X), put(data.Y)
        self.W = [put(w) for w in data.W]
        sigma = _jax_value(jax, self.act)

        def loss(W, X, Y):
            with jax.default_matmul_precision("highest"):
                return network_loss(X, Y, W, sigma)

        def step(W, X, Y, lr):
            value, grads = jax.value_and_grad(loss)(W, X, Y)
            return [w - lr * g for w, g in zip(W, grads)], value

        t0 = time.perf_counter()
        lr0 = np.asarray(self.lr, dtype=data.X.dtype)
        self._step = jax.jit(step, donate_argnums=(0,)).lower(self.W, self.X, self.Y, lr0).compile()
        self.compile_seconds = time.perf_counter() - t0

    def step(self) -> float:
        with self._x64():
            self.W, loss = self._step(self.W, self.X, self.Y, np.asarray(self.lr, dtype=self.X.dtype))
        return float(loss)

    def sync(self) -> None:
        self.jax.block_until_ready(self.W)


#: N x n1 matrices each candidate holds at its worst moment (a rough count, for skipping what would not fit)
_N_BY_N1 = {"unfused": 5, "torch": 4, "torch_compile": 4, "jax_jit": 4}


def extra_bytes(name: str, problem, itemsize: int = 4, block: int = 512) -> int:
    """A rough bound of what a candidate allocates beyond the data (to skip one that would not fit)."""
    N, n1 = problem.N, problem.n1
    n2 = problem.widths[1] if len(problem.widths) > 1 else 1
    if name == "fused":  # neurons: the N x n2 buffers; rows: gradients, W2^T and a panel of a few MiB
        weights = sum(a * b for a, b in zip([problem.d] + list(problem.widths), problem.widths))
        return (8 * N * n2 + 2 * weights + 2 * min(N, 64) * n1) * itemsize
    if name == "chunked":
        return (8 * N * min(block, n1) + 8 * N * n2) * itemsize
    if name in _N_BY_N1:  # unfused: Z1, F1, sigma'(Z1), D1 and one temporary; torch: Z1, F1 (saved), dPhi/dF1,
        return _N_BY_N1[name] * N * n1 * itemsize  # sigma'(Z1); the compiled peers: about as many
    raise PyrgdError(f"candidate: unknown {name!r}; expected one of {', '.join(CANDIDATES)}")


def make_candidate(name: str, data, *, device="cpu", backend="auto", block=None, copy=True):
    """Build candidate ``name`` on ``device`` ('cpu': NumPy, 'cuda': CuPy / torch CUDA / JAX GPU).

    copy=False lets a CPU candidate update ``data.W`` in place instead of its own copies (JAX always copies).
    """
    if name == "torch":
        return TorchStep(data, device=device, copy=copy)
    if name == "torch_compile":
        return TorchCompileStep(data, device=device, copy=copy)
    if name == "jax_jit":
        return JaxJitStep(data, device=device, copy=copy)
    if device == "cpu":
        xp = np
    else:
        import cupy as xp
    if name == "fused":
        return FusedStep(data, xp, backend=backend, copy=copy)
    if name == "unfused":
        return UnfusedStep(data, xp, copy=copy)
    if name == "chunked":
        return ChunkedStep(data, xp, block=block or default_block(data.problem, device), copy=copy)
    raise PyrgdError(f"candidate: unknown {name!r}; expected one of {', '.join(CANDIDATES)}")


def default_block(problem, device="cpu") -> int:
    """Neurons per block of the chunked baseline: on the CPU 512 (a sweep over 64..2048 on B1 and B2: 64 and 128
    were slower, 256..2048 alike within noise; see bench/README.md);
    on the GPU as many as keep an N x block matrix under 1 GiB (between 256 and 8192)."""
    if device == "cpu":
        return 512
    return int(min(8192, max(256, 2**28 // max(problem.N, 1))))
