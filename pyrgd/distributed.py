"""Neuron-sharded gradient descent over MPI (mpi4py): two engines and the helpers of a distributed run.

The wide layer's neurons are sharded over the P ranks of a communicator: each rank holds its columns of W_1 and rows
of W_2; X, Y and the tail (W_3..W_L) are on every rank. Each engine reproduces one process's method bit for bit,
for any P, by making the ranks add the parts of Z_2 in the order one process's kernel does (an ordered chain:
rank 0 starts the running sum, each rank adds its parts in order and passes it on, the last rank broadcasts it;
MPI's own reductions have an implementation-defined order):

- :class:`ShardedRowsEngine`, the "rows" method (one process's default where its panels keep every neuron): rank r
  owns whole *lanes* of neurons (the rows method's second-level unit of the sums over neurons,
  ``pyrgd.backends.cpu.grad_lane_blocks`` blocks of 64; at most 16 lanes). Per step one
  ``pyrgd.backends.cpu.network_grad_shard`` call runs the whole layer's panels of rows on the rank's lanes; for
  each batch of panels the chain completes Z_2 of their rows (R x n_2 values per panel), the tail runs on every
  rank, and each rank accumulates its neurons' gradients, which are one process's. The gradient norms are summed
  over the blocks in block order (an allgather of 2 doubles per block): one process's bits too.
- :class:`ShardedEngine`, the "neurons" method: rank r owns whole groups of :data:`NEURON_GROUP` = 1024 neurons.
  Per step each rank runs the fused wide-layer step on each of its groups (its neurons' update and the group's part
  g_i (N, n_2) of the next H = Z_2), and the chain forms H = ((0 + g_0) + g_1) + ... as one process's ``forward``
  does. The norms are summed per group (an allgather of 2 doubles per group) and may differ from one process's in
  the last bits (the weights do not).

:func:`distributed_method` says which a run takes ("auto": one process's choice where the rows method can be
sharded). Communication per step: about N n_2 values sent by each rank along the chain (in messages of one batch
of panels' rows, or one N x n_2 message), the broadcast of as many, and the allgather of the norms. Needs the cpu
backend (NumPy arrays); GPU ranks are not implemented.
"""
from __future__ import annotations

import numpy as np

from ._validate import array_module
from .backends.engine import StepEngine, _host_copy
from .errors import BackendUnavailable, PyrgdError

#: neurons per group: the cpu kernels' kBlock (64) x kSuperBlocks (16); a shard holds whole groups
NEURON_GROUP = 1024


def check_comm(comm):
    """``comm`` if it looks like an mpi4py communicator (Get_rank, Get_size, Send, Recv, Bcast, allgather), else
    PyrgdError naming the argument."""
    for name in ("Get_rank", "Get_size", "Send", "Recv", "Bcast", "allgather"):
        if not callable(getattr(comm, name, None)):
            raise PyrgdError(f"comm: expected an mpi4py communicator (e.g. mpi4py.MPI.COMM_WORLD), got "
                             f"{type(comm).__name__}")
    return comm


def rank_backend(X) -> str:
    """'cpu' for NumPy arrays, 'cuda' for CuPy arrays: the backend a rank's engine runs on; PyrgdError otherwise."""
    xp = array_module(X)
    if xp is None:
        raise PyrgdError(f"X: a distributed run needs NumPy or CuPy arrays, got {type(X).__name__}")
    return "cpu" if xp is np else "cuda"


def _on_this_host(comm, fn, default):
    """fn(the communicator of the ranks sharing this rank's host) from MPI's shared-memory split, freed afterwards
    (collective: call it on every rank); ``default`` where ``comm`` cannot split (not an mpi4py communicator)."""
    if not callable(getattr(comm, "Split_type", None)):
        return default
    try:
        from mpi4py import MPI

        local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    except Exception:
        return default
    try:
        return fn(local)
    finally:
        local.Free()


def local_rank(comm) -> tuple[int, int]:
    """(this rank's index among the ranks on its host, how many ranks share the host); collective; (0, 1) where
    ``comm`` cannot tell."""
    return _on_this_host(comm, lambda local: (int(local.Get_rank()), max(1, int(local.Get_size()))), (0, 1))


def use_rank_device(comm) -> tuple[int, int]:
    """Make GPU (local rank mod the host's GPUs) CuPy's current device, so that the ranks of one host spread over
    its GPUs (several ranks per GPU when there are more ranks than GPUs). Collective. Returns (the device id,
    :func:`gpu_sharing`)."""
    import cupy

    rank, _ = local_rank(comm)
    n = max(1, int(cupy.cuda.runtime.getDeviceCount()))
    dev = rank % n
    cupy.cuda.Device(dev).use()
    return dev, gpu_sharing(comm)


def gpu_sharing(comm) -> int:
    """How many ranks of this host use this rank's current CuPy device (this rank included), and so share its
    memory: the same PCI bus id (ranks bound to one GPU each by CUDA_VISIBLE_DEVICES all see device 0, yet not
    the same GPU). Collective; 1 where ``comm`` cannot tell."""
    import cupy

    dev = str(cupy.cuda.Device().pci_bus_id)
    return _on_this_host(comm, lambda local: max(1, sum(1 for d in local.allgather(dev) if d == dev)), 1)


def threads_per_rank(ranks_here: int) -> int:
    """CPU threads for each of ``ranks_here`` ranks sharing a host: the CPUs this process may run on, divided
    among them (at least 1), so that ranks do not oversubscribe the host's cores."""
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // max(1, int(ranks_here)))


def groups_of(n1: int) -> list[tuple[int, int]]:
    """The wide layer's neuron groups [(start, stop), ...] in order: NEURON_GROUP neurons each, the last shorter."""
    return [(a, min(int(n1), a + NEURON_GROUP)) for a in range(0, int(n1), NEURON_GROUP)]


def shard_groups(n1: int, size: int) -> list[range]:
    """Which groups (indices into :func:`groups_of`) each of ``size`` ranks owns: contiguous, as even as can be.
    PyrgdError when there are fewer groups than ranks."""
    G = len(groups_of(n1))
    if size > G:
        raise PyrgdError(f"comm: {size} ranks but the wide layer has {G} group{'s' if G > 1 else ''} of "
                         f"{NEURON_GROUP} neurons (n1 = {n1}); run on at most {G} rank{'s' if G > 1 else ''}")
    return [range(r * G // size, (r + 1) * G // size) for r in range(size)]


def shard_bytes(N: int, d: int, widths, itemsize: int, size: int, rank: int) -> dict:
    """What rank ``rank`` of ``size`` holds in a :class:`ShardedEngine` on these shapes, in bytes; nothing is
    allocated (the planner's per-rank figures, :func:`pyrgd.plan.plan_run` with ``ranks``). The rank owns the groups
    of :func:`shard_groups` (``size`` may not exceed the groups). Returns {'groups', 'neurons', 'shard', 'buffers',
    'gather'}:

    - shard: its columns of W_1 (d x n_r), its rows of W_2 (n_r x n_2) and its copy of the tail W_3..W_L;
    - buffers: one N x n_2 part of Z_2 per owned group (kept from the step until the running sum reaches the rank),
      H and G (N x n_2 each; the next H is written over G) and the tail's gradients (held from evaluate to update);
    - gather: the most :meth:`ShardedEngine.full_weights` holds at once besides these: this rank's W_1 made
      contiguous, mpi4py's pickled messages (sent and received) and the gathered arrays of W_1 and W_2, then the
      whole W_1 and W_2 and a copy of the tail (the largest of the three phases).
    """
    N, d, item = int(N), int(d), int(itemsize)
    widths = [int(w) for w in widths]
    n1, n2 = widths[0], widths[1]
    G = -(-n1 // NEURON_GROUP)
    lo, hi = int(rank) * G // int(size), (int(rank) + 1) * G // int(size)
    n_r = min(n1, hi * NEURON_GROUP) - lo * NEURON_GROUP
    tail = sum(a * b for a, b in zip(widths[1:], widths[2:]))
    a, b, A, B = d * n_r, n_r * n2, d * n1, n1 * n2
    gather = max(2 * a + 2 * A, a + A + b + 2 * B, a + 2 * A + 2 * B + tail)
    return {"groups": hi - lo, "neurons": n_r, "shard": (a + b + tail) * item,
            "buffers": ((hi - lo + 2) * N * n2 + tail) * item, "gather": gather * item}


def ranks_on_this_host(comm) -> int:
    """How many ranks of ``comm`` share this rank's host, and so its memory: the size of MPI's shared-memory split
    (collective: call it on every rank); 1 where ``comm`` cannot tell (not an mpi4py communicator)."""
    return local_rank(comm)[1]


class _Sharded(StepEngine):
    """What both distributed engines share: the backend of the arrays (cpu for NumPy, cuda for CuPy), the
    communicator and its rank, and GD alone (no gradients handed out, no other update rule)."""

    backend = "cpu"

    def __init__(self, comm, X, Y, W, act, mult):
        super().__init__(X, Y, list(W), act, mult)
        self.backend = rank_backend(X)
        if self.backend == "cuda":
            from .backends import cuda as be
        else:
            from .backends import cpu as be
        ok, why = be.available()
        if not ok:
            raise BackendUnavailable(f"comm: a distributed run on {self.backend} arrays needs the {self.backend} "
                                     f"backend: {why}")
        self._be = be
        self.xp = array_module(X)
        self.comm = check_comm(comm)
        self.rank, self.size = int(comm.Get_rank()), int(comm.Get_size())

    def _put(self, dst, src) -> None:
        """dst[...] = src, src a host or device array (copied to dst's device)."""
        dst[...] = self.xp.asarray(src)

    def gradients(self) -> list:
        raise PyrgdError("gradients: not available on a sharded (distributed) engine")

    def step_gradients(self) -> list:
        raise PyrgdError("step_gradients: not available on a sharded (distributed) engine; use update='gd'")

    def apply(self, direction, lr=1.0) -> None:
        raise PyrgdError("apply: not available on a sharded (distributed) engine; use update='gd'")


class ShardedEngine(_Sharded):
    """The "neurons" method with the wide layer's neurons sharded over the ranks of ``comm`` (module docstring).

    X (N, d) and Y (N, n_L): NumPy arrays (cpu backend) or CuPy arrays on the rank's GPU (cuda backend; the chain
    then adds on the host, module docstring), the same on every rank. ``W``: the FULL weights [W_1, ..., W_L] (the
    same on every rank); the engine keeps its rank's shard: :attr:`weights` is the list of the arrays it updates in
    place (one (d, <=1024) array per owned group of W_1, this rank's rows of W_2, then W_3..W_L), and
    :meth:`full_weights` gathers the whole network on every rank. :meth:`state` holds the full weights, so a
    checkpoint resumes on any number of ranks (or in one process with method 'neurons').
    """

    method = "neurons"

    def __init__(self, comm, X, Y, W, act, mult):
        super().__init__(comm, X, Y, W, act, mult)
        n1 = W[0].shape[1]
        self.groups = groups_of(n1)
        self.owned = shard_groups(n1, self.size)[self.rank]
        self.n_local = sum(self.groups[g][1] - self.groups[g][0] for g in self.owned)
        self._lo = self.groups[self.owned[0]][0] if len(self.owned) else 0
        N, n2 = X.shape[0], W[1].shape[1]
        xp = self.xp
        self._W1 = [xp.empty((W[0].shape[0], b - a), dtype=X.dtype) for a, b in (self.groups[g] for g in self.owned)]
        self._W2 = xp.empty((self.n_local, n2), dtype=X.dtype)
        self._W2g, off = [], 0
        for w in self._W1:
            self._W2g.append(self._W2[off:off + w.shape[1]])
            off += w.shape[1]
        self._tail = [xp.ascontiguousarray(xp.asarray(w)).copy() for w in W[2:]]
        self._parts = [xp.empty((N, n2), dtype=X.dtype) for _ in self._W1]
        # GPU ranks: the chain's running sum, on the host
        self._host_sum = None if xp is np else np.empty((N, n2), dtype=X.dtype)
        self._H = self._G = self._tail_grads = None
        self.W = self._W1 + [self._W2] + self._tail
        self._set_full(list(W))
        #: bytes this rank sent and seconds it spent in communication (the chain, the broadcast, the allgathers)
        self.comm_bytes, self.comm_seconds = 0, 0.0

    # ----------------------------------------------------------------------------------------- the shard
    def _set_full(self, full) -> None:
        for w, (a, b) in zip(self._W1, (self.groups[g] for g in self.owned)):
            self._put(w, full[0][:, a:b])
        self._put(self._W2, full[1][self._lo:self._lo + self.n_local])
        for w, f in zip(self._tail, full[2:]):
            self._put(w, f)

    @property
    def weights(self) -> list:
        """This rank's arrays, updated in place: W_1 by owned group, this rank's rows of W_2, W_3..W_L."""
        return self.W

    def full_weights(self) -> list:
        """[W_1, ..., W_L] of the whole network (host copies), on every rank (collective: call it on every rank)."""
        host = (lambda a: a) if self.xp is np else (lambda a: a.get())  # noqa: E731 (no copy on the cpu)
        local_w1 = np.concatenate([host(w) for w in self._W1], axis=1) if self._W1 else \
            np.empty((self.X.shape[1], 0), self.X.dtype)
        w1 = self.comm.allgather(local_w1)
        w2 = self.comm.allgather(host(self._W2))
        return [np.ascontiguousarray(np.concatenate(w1, axis=1)), np.ascontiguousarray(np.concatenate(w2, axis=0))] \
            + [_host_copy(w) for w in self._tail]

    # ----------------------------------------------------------------------------------------- communication
    def _chain(self, parts, out):
        """H = ((0 + g_0) + g_1) + ... over every group in order, into ``out`` (N, n2), on every rank. GPU ranks
        add on the host (the parts copied over one by one), then copy the sum to ``out`` on the device."""
        import time

        host = out if self._host_sum is None else self._host_sum
        t0 = time.perf_counter()
        if self.rank == 0:
            host[...] = 0
        else:
            self.comm.Recv(host, source=self.rank - 1, tag=16)
        t1 = time.perf_counter()
        for p in parts:
            host += p if self._host_sum is None else p.get()
        t2 = time.perf_counter()
        if self.rank < self.size - 1:
            self.comm.Send(host, dest=self.rank + 1, tag=16)
            self.comm_bytes += host.nbytes
        if self.size > 1:
            self.comm.Bcast(host, root=self.size - 1)
            if self.rank == self.size - 1:
                self.comm_bytes += host.nbytes
        self.comm_seconds += (t1 - t0) + (time.perf_counter() - t2)
        if host is not out:
            out.set(host)
        return out

    def _forward(self):
        N, n2 = self.X.shape[0], self._W2.shape[1]
        for w1, w2, p in zip(self._W1, self._W2g, self._parts):
            self._be.forward(self.X, w1, w2, self.act, self.mult[0], out=p)
        return self._chain(self._parts, self.xp.empty((N, n2), dtype=self.X.dtype))

    # ----------------------------------------------------------------------------------------- the step
    def _evaluate(self) -> float:
        if self._H is None:
            self._H = self._forward()
        loss, self._G, self._tail_grads = self._be.tail(self._H, self.Y, self._tail, self.act, self.mult[1:],
                                                        out=self._G)
        return float(loss)

    def _update(self, lr: float) -> list[float]:
        import time

        G = self._G
        sq = np.empty((len(self._W1), 2), dtype=np.float64)
        for i, (w1, w2, p) in enumerate(zip(self._W1, self._W2g, self._parts)):
            res = self._be.step(self.X, w1, w2, G, lr, self.act, self.mult[0], True, out=p)
            sq[i] = (res.grad_sq_w1, res.grad_sq_w2)
        t0 = time.perf_counter()
        every = self.comm.allgather(sq)  # per-group norms, in group order
        self.comm_seconds += time.perf_counter() - t0
        self.comm_bytes += sq.nbytes
        t1 = t2 = 0.0
        for part in every:
            for a, b in part:
                t1 += float(a)
                t2 += float(b)
        self._chain(self._parts, G)  # the next H over G, which every group's step has read
        tail_grads, self._tail_grads = self._tail_grads, None
        tail_sq = [float((g * g).sum()) for g in tail_grads]  # as NeuronsEngine: the same bits
        for l, g in enumerate(tail_grads):
            self._tail[l] -= lr * g
        self._G, self._H = self._H, G
        return [t1, t2] + tail_sq


    # ----------------------------------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        """{'weights': the FULL weights, 'carry': {'H': ...} or {}, 'method': 'neurons'} (collective)."""
        return {"weights": self.full_weights(), "carry": {} if self._H is None else {"H": _host_copy(self._H)},
                "method": self.method}

    def load_state(self, state: dict) -> None:
        """Put back a :meth:`state` (the full weights, of any number of ranks): this rank takes its shard."""
        ws = state.get("weights") if isinstance(state, dict) else None
        L = 2 + len(self._tail)
        if not isinstance(ws, (list, tuple)) or len(ws) != L:
            raise PyrgdError(f"state: expected a dict with 'weights', a list of {L} arrays")
        shapes = [(self.X.shape[1], sum(b - a for a, b in self.groups)), (sum(b - a for a, b in self.groups),
                                                                           self._W2.shape[1])]
        shapes += [w.shape for w in self._tail]
        for l, (s, shape) in enumerate(zip(ws, shapes)):
            if tuple(np.shape(s)) != tuple(shape):
                raise PyrgdError(f"state: weights[{l}] has shape {tuple(np.shape(s))}, expected {tuple(shape)}")
        self._set_full([w if array_module(w) is not None else np.asarray(w) for w in ws])
        H = (state.get("carry") or {}).get("H")
        self._G = self._tail_grads = None
        if H is None:
            self._H = None
        else:
            if tuple(H.shape) != (self.X.shape[0], self._W2.shape[1]):
                raise PyrgdError(f"state: carry['H'] has shape {tuple(H.shape)}, expected "
                                 f"{(self.X.shape[0], self._W2.shape[1])}")
            xp = self.xp
            self._H = xp.ascontiguousarray(xp.asarray(H, dtype=self.X.dtype)).copy()
        self._evaluated = False


def rows_geometry(N, d, n1, n2, dtype, act) -> dict | None:
    """The whole layer's geometry of the cpu rows method (:func:`pyrgd.backends.cpu.network_grad`) that a
    :class:`ShardedRowsEngine` reproduces: {'panel_rows', 'groups', 'lane_blocks', 'lanes'}; None where the rows
    method would recompute some neurons (a panel cannot keep them all: :func:`pyrgd.backends.cpu.rows_kept`), which a
    shard cannot do with the same bits."""
    from .backends import cpu

    N, d, n1, n2 = int(N), int(d), int(n1), int(n2)
    item = np.dtype(dtype).itemsize
    blocks = -(-n1 // 64)
    if -(-min(cpu.rows_kept(N, d, n1, n2, dtype, act), n1) // 64) < blocks:
        return None
    lane_blocks = cpu.grad_lane_blocks(n1)
    return {"panel_rows": cpu.grad_panel_rows(N, n1, n2, item, act),
            "groups": cpu.grad_row_groups(N, d, n1, n2, act, item), "lane_blocks": lane_blocks,
            "lanes": -(-blocks // lane_blocks)}


def shard_lanes(lanes: int, size: int) -> list[range]:
    """Which lanes each of ``size`` ranks owns in a :class:`ShardedRowsEngine`: contiguous, as even as can be;
    PyrgdError when there are fewer lanes than ranks."""
    if size > lanes:
        raise PyrgdError(f"comm: {size} ranks but the rows method's wide layer has {lanes} lane"
                         f"{'s' if lanes > 1 else ''} of neurons; run on at most {lanes} rank"
                         f"{'s' if lanes > 1 else ''}, or use method 'neurons'")
    return [range(r * lanes // size, (r + 1) * lanes // size) for r in range(size)]


def distributed_method(N, d, widths, dtype, act, method, size, backend="cpu") -> str:
    """The method a run over ``size`` ranks shards: 'rows' (:class:`ShardedRowsEngine`) or 'neurons'
    (:class:`ShardedEngine`). 'auto' takes what one process would (``pyrgd.backends.cpu.auto_method``), so that the
    run gives one process's bits, where the rows method can be sharded (every neuron kept in its panels, at most one
    rank per lane), else 'neurons'; 'rows' where it cannot be sharded is a PyrgdError saying why. GPU ranks
    (``backend`` 'cuda') take 'neurons'."""
    from .backends import cpu

    N, d, n1, n2 = int(N), int(d), int(widths[0]), int(widths[1])
    if method == "neurons":
        return "neurons"
    if method not in ("auto", "rows"):
        raise PyrgdError(f"method: expected 'auto', 'rows' or 'neurons', got {method!r}")
    if backend != "cpu":
        if method == "rows":
            raise PyrgdError(f"method: 'rows' runs on the cpu backend; ranks on {backend} take 'neurons'")
        return "neurons"
    geo = rows_geometry(N, d, n1, n2, dtype, act)
    if method == "auto":
        if cpu.auto_method(N, d, n1, n2, dtype, act) != "rows" or geo is None or geo["lanes"] < size:
            return "neurons"
        return "rows"
    if geo is None:
        raise PyrgdError("method: 'rows' over ranks needs every neuron kept in the rows method's panels, and these "
                         "shapes recompute some (pyrgd.backends.cpu.rows_kept); use 'neurons'")
    shard_lanes(geo["lanes"], size)  # raises where there are more ranks than lanes
    return "rows"


def rows_shard_bytes(N, d, widths, dtype, act, size, rank) -> dict:
    """What rank ``rank`` of ``size`` holds in a :class:`ShardedRowsEngine` on these shapes, in bytes (nothing is
    allocated): {'neurons', 'shard', 'buffers', 'gather'} as :func:`shard_bytes` gives them for the neurons method;
    'buffers' is the gradients of its shard and of the tail and network_grad's workspace (one panel of its lanes)."""
    from .backends import cpu

    N, d = int(N), int(d)
    widths = [int(w) for w in widths]
    n1, n2 = widths[0], widths[1]
    item = np.dtype(dtype).itemsize
    geo = rows_geometry(N, d, n1, n2, dtype, act)
    if geo is None:
        raise PyrgdError("method: 'rows' cannot be sharded on these shapes (some neurons recomputed); use 'neurons'")
    lanes = shard_lanes(geo["lanes"], int(size))[int(rank)]
    per_lane = geo["lane_blocks"] * 64
    n_r = min(n1, lanes.stop * per_lane) - lanes.start * per_lane
    tail = sum(a * b for a, b in zip(widths[1:], widths[2:]))
    a, b, A, B = d * n_r, n_r * n2, d * n1, n1 * n2
    work = cpu.grad_shard_workspace_size(N, d, n_r, n2, act, item, geo["panel_rows"], geo["lane_blocks"],
                                         geo["groups"])
    gather = max(2 * a + 2 * A, a + A + b + 2 * B, a + 2 * A + 2 * B + tail)
    return {"lanes": len(lanes), "neurons": n_r, "shard": (a + b + tail) * item,
            "buffers": (a + b + tail + work) * item, "gather": gather * item}


class ShardedRowsEngine(_Sharded):
    """The "rows" method with the wide layer's neurons sharded over the ranks of ``comm`` by whole lanes: the SAME
    BITS as one process running the rows method (``pyrgd train``'s default where it keeps every neuron), for any
    number of ranks up to the lanes (at most 16).

    The rows method (``pyrgd.backends.cpu.network_grad``) forms Z_2 of a panel of rows as the sum, in lane order, of
    each lane's part (a lane: ``lane_blocks`` consecutive blocks of 64 neurons), and each gradient element as a sum
    over the panels of its row group, then over the groups. Rank r owns consecutive whole lanes (its columns of W_1,
    rows of W_2); per step one :func:`pyrgd.backends.cpu.network_grad_shard` call runs the whole layer's panels and
    groups on its lanes, and for each batch of up to 4 panels ``combine`` completes Z_2 of their rows along an
    ordered chain (rank 0 copies its first lane and adds its others, sends the running sum to rank 1, which adds its
    lanes in order, ...; the last rank broadcasts the result), the very additions one process does. The tail then runs
    on every rank on identical Z_2, and each rank's gradients are one process's for its neurons; the squared norms
    are summed over all blocks in block order (an allgather of 2 values per block). Each product is done once per
    step (no recomputation), at the price of two messages of up to 4 R x n_2 values per batch and rank.

    X (N, d) and Y (N, n_L): NumPy arrays, the same on every rank; ``W`` the FULL weights, the same on every rank.
    :attr:`weights`: this rank's arrays (its W_1 columns, W_2 rows, the tail); :meth:`full_weights` gathers them;
    :meth:`state` holds the full weights (method 'rows'), so a checkpoint resumes on any number of ranks or in one
    process.
    """

    method = "rows"

    def __init__(self, comm, X, Y, W, act, mult):
        if rank_backend(X) != "cpu":
            raise PyrgdError("method: 'rows' runs on the cpu backend (NumPy arrays); GPU ranks take 'neurons'")
        super().__init__(comm, X, Y, W, act, mult)
        (N, d), n1, n2 = X.shape, W[0].shape[1], W[1].shape[1]
        geo = rows_geometry(N, d, n1, n2, X.dtype, act)
        if geo is None:
            raise PyrgdError("method: 'rows' over ranks needs every neuron kept in the rows method's panels, and "
                             "these shapes recompute some; use 'neurons'")
        self.geometry = geo
        self.lanes = shard_lanes(geo["lanes"], self.size)[self.rank]
        per_lane = geo["lane_blocks"] * 64
        self._lo, self._hi = self.lanes.start * per_lane, min(n1, self.lanes.stop * per_lane)
        self.n_local = self._hi - self._lo
        self.kept = n1
        self._n1 = n1
        self.W = [np.empty((d, self.n_local), X.dtype), np.empty((self.n_local, n2), X.dtype)] + \
            [np.ascontiguousarray(w).copy() for w in W[2:]]
        self._set_full([np.asarray(w) for w in W])
        self._grads = None
        self._sq = None
        self._block_sq = np.empty(2 * (-(-self.n_local // 64)))
        work = self._be.grad_shard_workspace_size(N, d, self.n_local, n2, act, X.dtype.itemsize, geo["panel_rows"],
                                                  geo["lane_blocks"], geo["groups"])
        self._work = np.empty(max(1, work), X.dtype)
        #: bytes this rank sent and seconds it spent in communication (the chains, the broadcasts, the allgathers)
        self.comm_bytes, self.comm_seconds = 0, 0.0

    def _set_full(self, full) -> None:
        self.W[0][...] = full[0][:, self._lo:self._hi]
        self.W[1][...] = full[1][self._lo:self._hi]
        for w, f in zip(self.W[2:], full[2:]):
            w[...] = f

    def full_weights(self) -> list:
        """[W_1, ..., W_L] of the whole network (host copies), on every rank (collective: call it on every rank)."""
        w1 = self.comm.allgather(self.W[0])
        w2 = self.comm.allgather(self.W[1])
        return [np.ascontiguousarray(np.concatenate(w1, axis=1)), np.ascontiguousarray(np.concatenate(w2, axis=0))] \
            + [w.copy() for w in self.W[2:]]

    def _combine(self, r0, rows, lanes, f2) -> None:
        """The panel's Z_2 (rows x n_2) into f2, from this rank's lanes and the other ranks' (the ordered chain)."""
        import time

        t0 = time.perf_counter()
        if self.rank == 0:
            np.copyto(f2, lanes[0])
            own = lanes[1:]
        else:
            self.comm.Recv(f2, source=self.rank - 1, tag=17)
            own = lanes
        for part in own:
            np.add(f2, part, out=f2)  # one IEEE addition per element, as the kernel's add_into
        if self.rank < self.size - 1:
            self.comm.Send(f2, dest=self.rank + 1, tag=17)
            self.comm_bytes += f2.nbytes
        if self.size > 1:
            self.comm.Bcast(f2, root=self.size - 1)
            if self.rank == self.size - 1:
                self.comm_bytes += f2.nbytes
        self.comm_seconds += time.perf_counter() - t0

    def _evaluate(self) -> float:
        geo = self.geometry
        loss, self._grads, self._sq = self._be.network_grad_shard(
            self.X, self.Y, self.W, self.act, self.mult, geo["panel_rows"], geo["lane_blocks"], geo["groups"],
            self._combine, grads=self._grads, workspace=self._work, block_sq=self._block_sq)
        return loss

    def _update(self, lr: float) -> list[float]:
        import time

        t0 = time.perf_counter()
        every = self.comm.allgather(self._block_sq)  # per-block squared norms, in block order
        self.comm_seconds += time.perf_counter() - t0
        self.comm_bytes += self._block_sq.nbytes
        t1 = t2 = 0.0
        for q in every:  # the sums one process forms: block by block, in block order
            nb = q.size // 2
            for v in q[:nb]:
                t1 += float(v)
            for v in q[nb:]:
                t2 += float(v)
        self._be.sgd_update(self.W, self._grads, lr)
        return [t1, t2] + list(self._sq[2:])


    def state(self) -> dict:
        """{'weights': the FULL weights, 'carry': {}, 'method': 'rows'} (collective)."""
        return {"weights": self.full_weights(), "carry": {}, "method": self.method}

    def load_state(self, state: dict) -> None:
        """Put back a :meth:`state` (the full weights, of any number of ranks): this rank takes its shard."""
        ws = state.get("weights") if isinstance(state, dict) else None
        L = len(self.W)
        if not isinstance(ws, (list, tuple)) or len(ws) != L:
            raise PyrgdError(f"state: expected a dict with 'weights', a list of {L} arrays")
        shapes = [(self.X.shape[1], self._n1), (self._n1, self.W[1].shape[1])] + [w.shape for w in self.W[2:]]
        for l, (w, shape) in enumerate(zip(ws, shapes)):
            if tuple(np.shape(w)) != tuple(shape):
                raise PyrgdError(f"state: weights[{l}] has shape {tuple(np.shape(w))}, expected {tuple(shape)}")
        self._set_full([np.asarray(w) for w in ws])
        self._evaluated = False


def sharded_engine(comm, X, Y, W, act, mult, method="auto"):
    """The distributed engine of ``method`` (:func:`distributed_method`): :class:`ShardedRowsEngine` or
    :class:`ShardedEngine`."""
    N, d = X.shape
    widths = [w.shape[1] for w in W]
    m = distributed_method(N, d, widths, X.dtype, act, method, int(comm.Get_size()), rank_backend(X))
    return (ShardedRowsEngine if m == "rows" else ShardedEngine)(comm, X, Y, W, act, mult)


class RankError(PyrgdError):
    """An error on one rank of a distributed run, raised on every rank with the same message."""


def agree(comm, value, error=None):
    """Rank 0's ``value`` on every rank (collective), or RankError on every rank when any rank passes an ``error``
    (an exception or a message): "rank r: <message>" for the lowest such rank. The step boundary of a distributed
    run calls it, so that every rank stops, checkpoints and fails together."""
    return _gather_agreed(comm, value, error)[0]


def agree_stop(comm, stopped, error=None):
    """The stop decision for every rank (collective): rank 0's ``stopped`` (its clock, its callback's answer), or,
    where rank 0 goes on, the lowest rank's stop by a signal ('interrupted' or 'terminated': SIGTERM or Ctrl-C
    sent to that rank alone, by a scheduler preempting one node, say); RankError as :func:`agree`."""
    every = _gather_agreed(comm, stopped, error)
    if every[0] is None:
        for v in every[1:]:
            if v is not None and v[0] in ("interrupted", "terminated"):
                return v
    return every[0]


def _gather_agreed(comm, value, error):
    """Every rank's ``value`` in rank order; RankError on every rank when any rank passes an ``error``."""
    msg = None if error is None else (str(error) or type(error).__name__)
    every = comm.allgather((value, msg))
    for r, (_, m) in enumerate(every):
        if m is not None:
            raise RankError(f"rank {r}: {m}" if comm.Get_size() > 1 else m)
    return [v for v, _ in every]


#: seconds between the last line of an aborting rank and MPI_Abort (:func:`abort`)
ABORT_GRACE_S = 0.5


def abort(comm, message: str, code: int = 1) -> None:
    """The last resort where the ranks cannot agree (an error inside a step's communication): print one line and
    end every rank of ``comm`` (MPI_Abort)."""
    import sys
    import time

    print(f"pyrgd: error: rank {comm.Get_rank()}: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    # MPI_Abort makes the launcher kill every process at once; its forwarding of this rank's stderr can lose the
    # line just written (seen once in 2 CI runs under load): give the launcher a moment to pass it on
    time.sleep(ABORT_GRACE_S)
    comm.Abort(code)


def launched_by_mpi() -> bool:
    """Whether this process was started by an MPI launcher (mpiexec/mpirun of MPICH or Open MPI, srun with PMI or
    PMIx): its environment names a rank."""
    import os

    return any(k in os.environ for k in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK"))


def world():
    """mpi4py's COMM_WORLD; PyrgdError when mpi4py is missing (``pip install "pyrgd[mpi]"``). Collective the first
    time on several ranks: it also makes the communicator :func:`end_together` waits on (the command line calls it
    first on every rank)."""
    global _ERROR_COMM
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise PyrgdError(f"mpi4py is needed to run on several processes (pip install \"pyrgd[mpi]\"): {e}") from None
    comm = MPI.COMM_WORLD
    if _ERROR_COMM is None and comm.Get_size() > 1:
        _ERROR_COMM = comm.Dup()
    return comm


#: a duplicate of COMM_WORLD for :func:`end_together` alone, so that its barrier never meets a collective of the run
_ERROR_COMM = None
#: seconds :func:`end_together` waits for the other ranks to reach their own error
ERROR_WAIT_S = 10.0


def end_together(message: str, code: int, printed: bool, wait_s: float = None) -> None:
    """A command failed on this rank with ``message`` outside the collectives that agree on errors (a data file
    only this rank cannot read, say): the other ranks may be waiting in a collective of the run and would wait
    forever. Wait up to ``wait_s`` (ERROR_WAIT_S) for every rank to fail too (a non-blocking barrier on a
    communicator of its own); if they do (they failed alike: rank 0 has said why), return; else print this
    rank's message (unless ``printed``) and end every rank with MPI_Abort(``code``). Nothing outside a command
    line run under several ranks (:func:`world` made the communicator)."""
    import time

    if _ERROR_COMM is None:
        return
    wait_s = ERROR_WAIT_S if wait_s is None else float(wait_s)
    req = _ERROR_COMM.Ibarrier()
    deadline = time.monotonic() + wait_s
    while not req.Test():
        if time.monotonic() > deadline:
            if printed:
                time.sleep(ABORT_GRACE_S)
                _ERROR_COMM.Abort(code)
            abort(_ERROR_COMM, message, code)
        time.sleep(0.01)
