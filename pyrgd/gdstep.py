"""One full-batch GD step of the whole network, as :func:`pyrgd.train.train` runs it (the benchmark's fused candidate
runs the same code).

:class:`GDStep` holds what a run carries from step to step and splits a step in two halves: :meth:`GDStep.evaluate`
(the loss at the current weights, and what the update needs) and :meth:`GDStep.update` (the update, in place).
Two methods:

- ``"rows"`` (cpu backend, the default there): one C++ pass over panels of rows
  (:func:`pyrgd.backends.cpu.network_grad`) gives the loss and every gradient; each product of the wide layer is done
  once per step and sigma, sigma' are evaluated once. It holds the gradients (the size of the weights), W_2^T, W_1
  and its gradient in blocks, and a panel of at most 16 MiB. Where n1 is too wide for a panel of 96 rows of all
  neurons in that budget it keeps only :func:`rows_kept` neurons in its panels and recomputes the others (X W_1
  twice for them, as the neurons method does for all; two N x n_2 arrays besides).
- ``"neurons"`` (every backend; the only one on cuda and reference): H = Z_2 is carried from step to step;
  :func:`loss_and_gradient` runs the tail from H and :func:`apply_step` the wide layer's fused step, streamed over
  its neurons, which computes the next H in the same call (on the cpu backend written over G: two N x n_2 arrays in
  all). It computes X W_1 twice per step but holds no gradient of the wide layer.
"""
from __future__ import annotations

import numpy as np

from . import ops
from ._validate import array_module, check_float_array, check_scalar
from .errors import PyrgdError
from .tail import tail_step

METHODS = ("auto", "rows", "neurons")


def loss_and_gradient(H, Y, W, act, mult, backend, out=None):
    """(loss as a float, G, [dPhi/dW_3, ..., dPhi/dW_L]) at the current weights, from H = Z_2.

    W: [W_1, ..., W_L]; mult: [a_1, ..., a_{L-1}]; ``out``: a spare (N, n_2) buffer for G (cpu backend; it must not
    be H), e.g. the H of the step before.
    """
    loss, G, tail_grads = tail_step(H, Y, W, act, mult, backend, out=out)
    return float(loss), G, tail_grads


def apply_step(X, W, G, tail_grads, lr, act, mult, backend):
    """One GD step from the gradient of :func:`loss_and_gradient`; W updated in place.

    Returns (H_next, grad_sq) with H_next = Z_2 of the updated weights (on the cpu backend written over G) and
    grad_sq the L squared Frobenius norms ||dPhi/dW_l||^2 at the weights before the update, as floats.
    """
    res = ops.wide_step(X, W[0], W[1], G, lr, activation=act, a1=mult[0], next_forward=True, backend=backend,
                        out=G if backend == "cpu" else None)
    tail_sq = [(g * g).sum() for g in tail_grads]
    for l, g in enumerate(tail_grads, start=3):
        W[l - 1] -= lr * g
    sq = [res.grad_sq_w1, res.grad_sq_w2]
    if tail_sq:
        xp = array_module(tail_sq[0]) or np
        host = np.array(tail_sq) if xp is np else xp.stack(tail_sq).get()
        sq += [float(s) for s in host]
    return res.H_next, sq


#: kept neurons come in multiples of this (16 lanes of one 64-neuron block: network_grad's lanes then split evenly
#: over 1, 2, 4, 8 or 16 threads; measured on B4, an uneven split costs more than the extra neurons gain)
KEPT_QUANTUM = 1024


def _panel_fits(N, n2, kept, item, act) -> bool:
    """Whether network_grad's panel of ``kept`` neurons gets its full minimum of rows (min(N, 96)) within its byte
    budget (:data:`pyrgd._cpu.GRAD_PANEL_BYTES`, 16 MiB)."""
    from .backends import cpu

    m = cpu._module()
    return cpu.grad_panel_rows(N, max(kept, 1), n2, item, act) >= min(N, int(m.GRAD_PANEL_ROWS_MIN))


def rows_kept(N, d, n1, n2, dtype, act=None) -> int:
    """The neurons whose sigma, sigma' the rows method keeps in its panels (:func:`pyrgd.backends.cpu.network_grad`'s
    ``kept_neurons``): all n1 where a panel of 96 rows of all of them (S and sigma', 8 bytes per neuron and row in
    float32; S alone for ReLU, ``act`` the parsed activation, None: not ReLU) fits in the panel budget of 16 MiB
    (:data:`pyrgd._cpu.GRAD_PANEL_BYTES`): up to about 21000 neurons in float32 (43000 with ReLU). Else the most
    multiples of :data:`KEPT_QUANTUM` neurons that fit (possibly 0); the others are recomputed as in the neurons
    method (X W_1 twice for them). The kept neurons' weights need not fit in the cache: the panels' products
    prefetch the next product's operands (measured on the benchmark's B4 at n1 = 16384, where they are 20 MiB: every
    neuron kept was 3 to 5% faster than 9216 kept and the rest recomputed; bench/README.md). ``d`` does not enter
    the rule (it is an argument for the callers' symmetry with the shapes)."""
    item = np.dtype(dtype).itemsize
    if _panel_fits(N, n2, n1, item, act):
        return int(n1)
    lo, hi = 0, (n1 - 1) // KEPT_QUANTUM  # the largest j with j quanta fitting: the panel grows with kept
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _panel_fits(N, n2, KEPT_QUANTUM * mid, item, act):
            lo = mid
        else:
            hi = mid - 1
    return KEPT_QUANTUM * lo


def auto_method(backend, N, d, n1, n2, dtype, act=None) -> str:
    """The method ``GDStep(method="auto")`` takes: 'rows' on the cpu backend where it keeps at least half the neurons
    (:func:`rows_kept`), else 'neurons'. With fewer kept, the recomputed majority runs at the neurons method's rate
    and the rows method's extra memory (the gradients, G and W_1, W_2^T in blocks) buys little. Where memory is
    what counts (the benchmark's B3), ask for 'neurons', which holds no gradient of the wide layer."""
    if backend != "cpu":
        return "neurons"
    return "rows" if 2 * rows_kept(N, d, n1, n2, dtype, act) >= n1 else "neurons"


class GDStep:
    """Full-batch gradient descent on the weights ``W`` (a list, updated in place) of one network.

    X (N, d), Y (N, n_L), W = [W_1, ..., W_L] (L >= 2; C-contiguous, writeable, of X's dtype and device), ``act`` a
    parsed activation (:func:`pyrgd.activations.parse_activation`), ``mult`` = [a_1, ..., a_{L-1}], ``backend`` a
    concrete backend name (:func:`pyrgd.ops.resolve_backend`), ``method`` 'auto' (:func:`auto_method`), 'rows' (cpu
    only; ``kept`` = :func:`rows_kept` neurons kept in its panels) or 'neurons' (see the module docstring).

    >>> import numpy as np
    >>> from pyrgd.activations import parse_activation
    >>> rng = np.random.default_rng(0)
    >>> X, Y = rng.standard_normal((64, 3)), rng.standard_normal((64, 1))
    >>> W = [rng.standard_normal((3, 128)) / 3 ** 0.5, rng.standard_normal((128, 1)) / 128 ** 0.5]
    >>> gd = GDStep(X, Y, W, parse_activation("tanh"), [1.0], backend="reference")
    >>> first = gd.evaluate(); _ = gd.update(0.01); gd.evaluate() < first
    True
    """

    def __init__(self, X, Y, W, act, mult, backend, method="auto"):
        if method not in METHODS:
            raise PyrgdError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
        if not isinstance(W, list) or len(W) < 2:
            raise PyrgdError("W: expected a list of at least two weight arrays [W_1, W_2, ...]")
        X = check_float_array("X", X, 2)
        xp = array_module(X)
        N = X.shape[0]
        rows = X.shape[1]
        for l, w in enumerate(W, start=1):
            check_float_array(f"W[{l - 1}]", w, 2, dtype=X.dtype, xp=xp, shape=(rows, None), inplace=True)
            rows = w.shape[1]
        self.Y = check_float_array("Y", Y, 2, dtype=X.dtype, xp=xp, shape=(N, rows))
        if len(mult) != len(W) - 1:
            raise PyrgdError(f"mult: expected L - 1 = {len(W) - 1} multipliers, got {len(mult)}")
        self.mult = [check_scalar(f"mult[{j}]", a) for j, a in enumerate(mult)]
        self.X, self.W, self.act, self.backend = X, W, act, backend
        if method == "auto":
            method = auto_method(backend, N, X.shape[1], W[0].shape[1], W[1].shape[1], X.dtype, act)
        if method == "rows" and backend != "cpu":
            raise PyrgdError(f"method: 'rows' needs the cpu backend, got backend {backend!r}")
        self.method = method
        self.kept = (rows_kept(N, X.shape[1], W[0].shape[1], W[1].shape[1], X.dtype, act) if method == "rows"
                     else None)
        self._grads = self._work = None  # rows: the gradients of the last evaluate(), network_grad's workspace
        self._H = self._spare = self._G = self._tail_grads = None  # neurons
        self._evaluated = False

    def evaluate(self) -> float:
        """The loss 1/2 ||F_L - Y||^2 at the current weights (a float); prepares the next :meth:`update`."""
        if self.method == "rows":
            from .backends import cpu

            if self._work is None:  # the kernel's work arrays, kept from step to step
                n = cpu.grad_workspace_size(self.X.shape[0], self.X.shape[1], self.W[0].shape[1],
                                            self.W[1].shape[1], self.act, self.X.dtype.itemsize,
                                            kept_neurons=self.kept)
                self._work = np.empty(max(n, 1), dtype=self.X.dtype)
            loss, self._grads, self._sq = cpu.network_grad(self.X, self.Y, self.W, self.act, self.mult,
                                                           grads=self._grads, kept_neurons=self.kept,
                                                           workspace=self._work)
        else:
            if self._H is None:
                self._H = ops.wide_forward(self.X, self.W[0], self.W[1], activation=self.act, a1=self.mult[0],
                                           backend=self.backend)
            loss, self._G, self._tail_grads = loss_and_gradient(self._H, self.Y, self.W, self.act, self.mult,
                                                                self.backend, out=self._spare)
        self._evaluated = True
        return loss

    def update(self, lr) -> list[float]:
        """W <- W - lr dPhi/dW at the weights of the last :meth:`evaluate` (which must come first), in place.

        Returns the L squared gradient norms ||dPhi/dW_l||_F^2 (floats) at the weights before the update."""
        if not self._evaluated:
            raise PyrgdError("GDStep.update: call evaluate() first (the update uses its gradients)")
        lr = check_scalar("lr", lr)
        self._evaluated = False
        if self.method == "rows":
            from .backends import cpu

            cpu.sgd_update(self.W, self._grads, lr)
            return list(self._sq)
        H_next, sq = apply_step(self.X, self.W, self._G, self._tail_grads, lr, self.act, self.mult, self.backend)
        self._spare, self._H = self._H, H_next
        self._G = self._tail_grads = None
        return sq
