"""The step engine: full-batch gradient descent on one network, the interface every backend provides.

A :class:`StepEngine` holds the data X (N, d), the targets Y (N, n_L) and the weights W = [W_1, ..., W_L] (updated
in place, so the caller's arrays always hold the current weights), plus whatever the backend's GD step carries from
step to step (buffers, a workspace, the wide layer's output). :func:`pyrgd.train` and the benchmark talk to the
backends through it only; :func:`pyrgd.ops.step_engine` builds one for the backend of the arrays.

- :meth:`StepEngine.evaluate` -> the loss 1/2 ||F_L - Y||_F^2 at the current weights (a float);
- :meth:`StepEngine.gradients` -> [dPhi/dW_1, ..., dPhi/dW_L] at the current weights, without updating;
- :meth:`StepEngine.update` -> one step W <- W - lr dPhi/dW at the weights of the last evaluate, whole or not at all;
- :meth:`StepEngine.step_gradients` -> the gradients at the weights of the last evaluate (reusing what it computed),
  and :meth:`StepEngine.apply` -> W <- W - lr D for a given direction D, whole or not at all: with them an update
  rule other than GD (:mod:`pyrgd.update_rules`) runs on any engine;
- :meth:`StepEngine.state` / :meth:`StepEngine.load_state` -> what a checkpoint needs to resume bit for bit.

:class:`NeuronsEngine` is the "neurons" method, written once over a backend's functional operations (``forward``,
``step``, ``tail``, ``network_gradients``): every backend can run it. The cpu backend adds the "rows" method
(:class:`pyrgd.backends.cpu.RowsEngine`). A distributed engine shards the wide layer's neurons over ranks and
passes ``allreduce``: the wide layer's output and its squared gradient norms are then partial sums that the engine
completes across ranks, while the tail, replicated, runs unchanged.
"""
from __future__ import annotations

import abc

import numpy as np

from ..errors import PyrgdError


class StepEngine(abc.ABC):
    """Full-batch GD on the weights ``W`` (a list, updated in place) of one network; see the module docstring.

    Attributes: ``backend`` (its name), ``method`` ('rows' or 'neurons'), ``kept`` (rows method: the neurons kept
    in its panels; None otherwise), ``X``, ``Y``, ``W``, ``act`` (parsed activation), ``mult`` ([a_1, .., a_{L-1}],
    floats). Arrays are validated by :func:`pyrgd.ops.step_engine` before an engine is built.
    """

    backend: str = ""
    method: str = ""
    kept: int | None = None

    def __init__(self, X, Y, W, act, mult):
        self.X, self.Y, self.W, self.act, self.mult = X, Y, W, act, [float(a) for a in mult]
        self._evaluated = False

    @property
    def weights(self) -> list:
        """[W_1, ..., W_L], the arrays the engine updates in place."""
        return self.W

    @abc.abstractmethod
    def _evaluate(self) -> float:
        ...

    @abc.abstractmethod
    def _update(self, lr: float) -> list[float]:
        ...

    @abc.abstractmethod
    def gradients(self) -> list:
        """[dPhi/dW_1, ..., dPhi/dW_L] at the current weights (arrays shaped like the weights, on their device),
        without updating anything. The arrays may be the engine's own buffers, overwritten by the next call."""

    def evaluate(self) -> float:
        """The loss 1/2 ||F_L - Y||_F^2 at the current weights (a float); prepares the next :meth:`update`."""
        loss = self._evaluate()
        self._evaluated = True
        return loss

    def update(self, lr) -> list[float]:
        """W <- W - lr dPhi/dW at the weights of the last :meth:`evaluate` (which must come first), in place.

        Returns the L squared gradient norms ||dPhi/dW_l||_F^2 (floats) at the weights before the update."""
        from .._validate import check_scalar

        if not self._evaluated:
            raise PyrgdError("update: call evaluate() first (the update uses its gradients)")
        lr = check_scalar("lr", lr)
        self._evaluated = False
        return self._update(lr)

    def step_gradients(self) -> list:
        """[dPhi/dW_1, ..., dPhi/dW_L] at the weights of the last :meth:`evaluate` (which must come first), reusing
        what it computed where the engine can. The arrays may be the engine's own buffers, overwritten by the next
        evaluate. Follow it with :meth:`apply` (or :meth:`update`)."""
        if not self._evaluated:
            raise PyrgdError("step_gradients: call evaluate() first (the gradients are those of its weights)")
        return self.gradients()

    def apply(self, direction, lr=1.0) -> None:
        """W_l <- W_l - lr D_l for every layer, in place, with ``direction`` = [D_1, ..., D_L] (arrays shaped like
        the weights, of their dtype and device). Everything is checked before any weight changes, so the update is
        applied whole or not at all (a caller that must not be cut by a signal runs it in a critical block, as
        :func:`pyrgd.train` does). The next call must be :meth:`evaluate`."""
        from .._validate import check_scalar

        lr = check_scalar("lr", lr)
        if not isinstance(direction, (list, tuple)) or len(direction) != len(self.W):
            raise PyrgdError(f"direction: expected a list of {len(self.W)} arrays shaped like the weights")
        host = isinstance(self.W[0], np.ndarray)
        for l, (w, d) in enumerate(zip(self.W, direction)):
            if host != isinstance(d, np.ndarray) or (not host and not hasattr(d, "__cuda_array_interface__")):
                raise PyrgdError(f"direction[{l}]: expected a {'NumPy' if host else 'CuPy'} array like the weights, "
                                 f"got {type(d).__name__}")
            if tuple(d.shape) != tuple(w.shape) or d.dtype != w.dtype:
                raise PyrgdError(f"direction[{l}]: expected shape {tuple(w.shape)} and dtype {w.dtype}, got "
                                 f"{tuple(d.shape)} {d.dtype}")
        lr_t = self.W[0].dtype.type(lr)
        for w, d in zip(self.W, direction):
            w -= lr_t * d
        self._evaluated = False
        self._after_apply()

    def _after_apply(self) -> None:
        """The weights changed outside :meth:`update`: drop what was carried from the last evaluate."""

    def state(self) -> dict:
        """What a checkpoint needs: {'weights': host copies of W, 'carry': host copies of the arrays carried from
        step to step (possibly empty), 'method': the method}."""
        return {"weights": [_host_copy(w) for w in self.W], "carry": self._carry(), "method": self.method}

    def load_state(self, state: dict) -> None:
        """Put back a :meth:`state`: the weights are copied into W in place; the next call must be evaluate()."""
        ws = state.get("weights") if isinstance(state, dict) else None
        if not isinstance(ws, (list, tuple)) or len(ws) != len(self.W):
            raise PyrgdError(f"state: expected a dict with 'weights', a list of {len(self.W)} arrays")
        for l, (w, s) in enumerate(zip(self.W, ws), start=1):
            s = np.asarray(s) if isinstance(s, np.ndarray) or not hasattr(s, "__cuda_array_interface__") else s
            if tuple(s.shape) != tuple(w.shape):
                raise PyrgdError(f"state: weights[{l - 1}] has shape {tuple(s.shape)}, expected {tuple(w.shape)}")
            w[...] = _to_device(s, w)
        self._load_carry(state.get("carry") or {})
        self._evaluated = False

    def _carry(self) -> dict:
        return {}

    def _load_carry(self, carry: dict) -> None:
        pass


def _host_copy(a):
    return np.array(a, copy=True) if isinstance(a, np.ndarray) else a.get()


def _to_device(a, like):
    if isinstance(like, np.ndarray):
        return a if isinstance(a, np.ndarray) else a.get()
    import cupy

    return cupy.asarray(a)


class NeuronsEngine(StepEngine):
    """The "neurons" method over a backend module ``be`` (its forward, step, tail and network_gradients).

    H = Z_2 (N, n_2) is carried from step to step: :meth:`evaluate` runs the tail from H (loss, G = dPhi/dZ_2 and the
    tail's gradients); :meth:`update` runs the wide layer's fused step, streamed over its neurons, which applies the
    update to W_1, W_2 and computes the next H in the same call (written over G: two N x n_2 arrays in all), then
    updates the tail. It computes X W_1 twice per step and holds no gradient of the wide layer.

    ``allreduce``: None, or a function summing an array across ranks in place (a distributed engine's): W_1 and W_2
    are then this rank's shard of the wide layer's neurons (columns of W_1, rows of W_2), and H and the two squared
    gradient norms of the wide layer are completed by it; the tail is replicated on every rank.
    """

    method = "neurons"

    def __init__(self, be, X, Y, W, act, mult, allreduce=None):
        super().__init__(X, Y, W, act, mult)
        self._be = be
        self.backend = be.name
        self._allreduce = allreduce
        self._H = self._G = self._tail_grads = None

    def _forward(self):
        H = self._be.forward(self.X, self.W[0], self.W[1], self.act, self.mult[0])
        if self._allreduce is not None:
            self._allreduce(H)
        return H

    def _evaluate(self) -> float:
        if self._H is None:
            self._H = self._forward()
        loss, self._G, self._tail_grads = self._be.tail(self._H, self.Y, self.W[2:], self.act, self.mult[1:],
                                                        out=self._G)
        return float(loss)

    def _update(self, lr: float) -> list[float]:
        X, W, G = self.X, self.W, self._G
        res = self._be.step(X, W[0], W[1], G, lr, self.act, self.mult[0], True, out=G)
        sq = [res.grad_sq_w1, res.grad_sq_w2]
        if self._allreduce is not None:
            part = np.array(sq, dtype=np.float64)
            self._allreduce(part)
            sq = [float(v) for v in part]
            self._allreduce(res.H_next)
        tail_grads, self._tail_grads = self._tail_grads, None
        tail_sq = [(g * g).sum() for g in tail_grads]
        for l, g in enumerate(tail_grads, start=3):
            W[l - 1] -= lr * g
        if tail_sq:
            host = np.array(tail_sq) if isinstance(tail_sq[0], (np.ndarray, np.generic, float)) else \
                __import__("cupy").stack(tail_sq).get()
            sq += [float(s) for s in host]
        # the next H is written over G; the old H becomes the next tail's G
        self._G, self._H = self._H, res.H_next
        return sq

    def gradients(self) -> list:
        if self._allreduce is not None:
            raise PyrgdError("gradients: not available on a sharded (distributed) neurons engine")
        return self._be.network_gradients(self.X, self.Y, self.W, self.act, self.mult)

    def step_gradients(self) -> list:
        """The tail's gradients and G of the last evaluate, and the wide layer's gradients for that G
        (:func:`wide_layer_gradients`): no second forward pass."""
        if not self._evaluated:
            raise PyrgdError("step_gradients: call evaluate() first (the gradients are those of its weights)")
        if self._allreduce is not None:
            raise PyrgdError("step_gradients: not available on a sharded (distributed) neurons engine")
        gW1, gW2 = wide_layer_gradients(self._be, self.X, self.W[0], self.W[1], self._G, self.act, self.mult[0])
        return [gW1, gW2] + list(self._tail_grads)

    def _after_apply(self) -> None:
        self._H = self._tail_grads = None  # the next evaluate runs the forward pass of the new weights

    def _carry(self) -> dict:
        return {} if self._H is None else {"H": _host_copy(self._H)}

    def _load_carry(self, carry: dict) -> None:
        H = carry.get("H")
        self._G = self._tail_grads = None
        if H is None:
            self._H = None
            return
        n2 = self.W[1].shape[1]
        if tuple(H.shape) != (self.X.shape[0], n2):
            raise PyrgdError(f"state: carry['H'] has shape {tuple(H.shape)}, expected {(self.X.shape[0], n2)}")
        xp = np if isinstance(self.X, np.ndarray) else __import__("cupy")
        self._H = xp.ascontiguousarray(xp.asarray(_to_device(H, self.X), dtype=self.X.dtype))


def neurons_step_bytes(N: int, widths, itemsize: int, n2_buffers: int = 2) -> int:
    """Bytes the neurons method holds besides the data and the weights: ``n2_buffers`` N x n_2 arrays (H and G,
    the next H written over G) and one N x n_l array per hidden tail layer (the tail's forward cache)."""
    N, widths = int(N), [int(w) for w in widths]
    tail = sum(N * n for n in widths[2:-1])
    return (int(n2_buffers) * N * widths[1] + tail) * int(itemsize)


#: bytes of the N x block matrices :func:`blocked_network_gradients` materializes at a time
GRADIENT_BLOCK_BYTES = 64 << 20


def blocked_network_gradients(be, X, Y, W, act, mult, block_bytes=GRADIENT_BLOCK_BYTES) -> list:
    """[dPhi/dW_1, ..., dPhi/dW_L] at the current weights with the array library (NumPy or CuPy) of X.

    H = Z_2 comes from ``be.forward`` and the tail from ``be.tail``; the wide layer's gradients (docs/theory.md
    section 2) are then formed over blocks of neurons whose N x block matrices take at most ``block_bytes``
    (Z_1, sigma, sigma' of the block), never N x n_1 at once. ``mult``: [a_1, ..., a_{L-1}] as floats.
    """
    W1, W2 = W[0], W[1]
    a1 = mult[0]
    H = be.forward(X, W1, W2, act, a1)
    _, G, tail_grads = be.tail(H, Y, W[2:], act, mult[1:])
    gW1, gW2 = blocked_wide_gradients(X, W1, W2, G, act, a1, block_bytes)
    return [gW1, gW2] + list(tail_grads)


def blocked_wide_gradients(X, W1, W2, G, act, a1, block_bytes=GRADIENT_BLOCK_BYTES):
    """(dPhi/dW_1, dPhi/dW_2) of the wide layer for a given G = dPhi/dZ_2 (N, n_2), with the array library (NumPy
    or CuPy) of X, over blocks of neurons whose N x block matrices take at most ``block_bytes``."""
    from ..activations import sigma_and_derivative

    xp = np if isinstance(X, np.ndarray) else __import__("cupy")
    N, n1 = X.shape[0], W1.shape[1]
    block = max(1, min(n1, int(block_bytes) // max(1, 3 * N * X.dtype.itemsize)))
    gW1, gW2 = xp.empty_like(W1), xp.empty_like(W2)
    for j in range(0, n1, block):
        sl = slice(j, min(n1, j + block))
        S, dS = sigma_and_derivative(act, X @ W1[:, sl])
        gW2[sl] = (a1 * S).T @ G
        gW1[:, sl] = X.T @ (a1 * (G @ W2[sl].T) * dS)
    return gW1, gW2


def wide_layer_gradients(be, X, W1, W2, G, act, a1):
    """(dPhi/dW_1, dPhi/dW_2) of the wide layer for a given G = dPhi/dZ_2 on backend module ``be``: the one place
    where the update rules and the user losses get them. The backend's fused ``wide_grad`` (nothing N x n_1; the
    function behind :func:`pyrgd.ops.wide_grad`) where the backend has it, else :func:`blocked_wide_gradients`."""
    fused = getattr(be, "wide_grad", None)
    if fused is not None:
        res = fused(X, W1, W2, G, act, a1)
        return res[0], res[1]
    return blocked_wide_gradients(X, W1, W2, G, act, a1)
