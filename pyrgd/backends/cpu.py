"""C++ CPU backend: the fused, OpenMP-parallel kernels of the extension module ``pyrgd._cpu``.

Never allocates anything of size N x n1. Two GD step methods (:func:`engine`; docs/performance.md describes both):

- ``rows`` (:class:`RowsEngine`, :func:`network_grad`): one pass over panels of rows with all the (kept) neurons of
  a panel (at most :data:`pyrgd._cpu.GRAD_PANEL_BYTES`, or one row) returns the loss and every gradient of the
  network, so that each product of a GD step is done once (X W_1 twice for the neurons it recomputes where n1 is
  too wide for the panels: :func:`rows_kept`);
- ``neurons`` (:class:`pyrgd.backends.engine.NeuronsEngine` over :func:`forward`, :func:`step` and :func:`tail`):
  ``forward``, ``step`` and ``gram`` stream over blocks of 64 neurons of the wide layer (a few tiles of 256
  samples x 64 neurons per thread, no d x n1 gradient).

Signatures as in :mod:`pyrgd.backends`; the arrays are expected already validated by :mod:`pyrgd.ops` (the
extension checks them again and raises instead of crashing).

Speed: register-tiled products with the activation fused between them on tiles that stay in the L2 cache,
compiled for AVX-512, AVX2+FMA and the platform's baseline and chosen at run time (:func:`get_isa`,
:func:`set_isa`, the environment variable ``PYRGD_CPU_ISA``); the smooth activations use a vectorized exp/log1p
(accuracy within a few ulp, tested). The C++ API is declared in csrc/include/pyrgd/.

Determinism: the same inputs give the same bits run after run, and for ANY number of threads: ``forward``,
``gram``, all of ``step``'s outputs (W1, W2, the gradient norms and ``H_next``), ``tail`` and ``network_grad``. The
AVX2 and AVX-512 kernels give the same bits too; the baseline kernels may differ from them in the last bits on an
x86-64 CPU without FMA.

Threads: :func:`set_num_threads` (OpenMP). NumPy's own BLAS keeps idle worker threads spinning for a while after a
multithreaded call, which takes cores from these kernels when the two alternate, as in training (the tail's small
products, then a wide-layer step): wrap such a loop in :func:`blas_single_thread`.
"""
from __future__ import annotations

import contextlib

import numpy as np

from ..errors import BackendUnavailable, PyrgdError
from . import StepResult
from .engine import NeuronsEngine, StepEngine

name = "cpu"

from .._omp import set_default_wait_policy

#: how the kernels' OpenMP threads wait at a barrier (see pyrgd._omp.DEFAULT_SPINCOUNT)
WAIT_POLICY = set_default_wait_policy()

try:
    from .. import _cpu
except ImportError as exc:  # not built, or built for another interpreter
    _cpu = None
    _IMPORT_ERROR = f"cannot import pyrgd._cpu: {exc}"
else:
    _IMPORT_ERROR = None


def array_namespace():
    """The array library of this backend's arrays: NumPy."""
    return np


def available() -> tuple[bool, str]:
    """(True, a one-line description of the build) or (False, why pyrgd._cpu cannot be imported)."""
    if _cpu is None:
        return False, _IMPORT_ERROR
    info = _cpu.build_info()
    omp = f"OpenMP, {info['max_threads']} threads" if info["openmp"] else "no OpenMP, 1 thread"
    return True, (f"C++ extension pyrgd._cpu ({info['compiler']}, {omp}, {info['isa']} kernels, "
                  f"block {info['block_size']})")


def _module():
    if _cpu is None:
        raise BackendUnavailable(f"backend 'cpu' is not available ({_IMPORT_ERROR})")
    return _cpu


def _call(fn, *args):
    try:
        return fn(*args)
    except (TypeError, ValueError) as e:  # the extension's own input checks: report them as pyrgd errors
        if isinstance(e, PyrgdError):
            raise
        raise PyrgdError(str(e)) from None


def forward(X, W1, W2, act, a1, out=None):
    """H = a1 sigma(X W1) W2, shape (N, n2); written into ``out`` when given (an (N, n2) array of the dtype, sharing
    no memory with X, W1, W2)."""
    m = _module()
    return _call(m.forward, X, W1, W2, act.code, float(act.gamma), float(a1), out)


def step(X, W1, W2, G, lr, act, a1, next_forward, out=None):
    """One GD step of the wide layer, W1 and W2 updated in place; returns StepResult.

    With ``next_forward``, H_next is written into ``out`` when given: an (N, n2) array of the dtype sharing no memory
    with X, W1, W2; it may be G itself (written after the last read of G), which saves one N x n2 buffer.
    """
    m = _module()
    H, g1, g2 = _call(m.step, X, W1, W2, G, float(lr), act.code, float(act.gamma), float(a1), bool(next_forward),
                      out)
    return StepResult(H, float(g1), float(g2))


def wide_grad(X, W1, W2, G, act, a1, input_grad=False, out=None):
    """(dW1 (d, n1), dW2 (n1, n2)), or (dW1, dW2, dX (N, d)) with ``input_grad``, given G = dPhi/dH (N, n2); nothing
    updated. dW1 and dW2 are bit for bit the gradients :func:`step` applies; dX = (a1 (G W2^T) (.) sigma'(X W1)) W1^T
    comes from a second pass over tiles of rows. ``out``: None or a tuple of those arrays (C-contiguous, of the
    dtype, sharing no memory with the inputs or each other), written. Nothing N x n1; the same bits for any number
    of threads."""
    m = _module()
    return tuple(_call(m.wide_grad, X, W1, W2, G, act.code, float(act.gamma), float(a1), bool(input_grad),
                       None if out is None else list(out)))


def gram(X, W1, act, a1, W2=None, B2=None):
    """K = F1 F1^T (B2 None) or B1 B1^T with B1 = a1 (B2 W2^T) (.) sigma'(X W1); shape (N, N)."""
    m = _module()
    return _call(m.gram, X, W1, W2, B2, act.code, float(act.gamma), float(a1))


def get_num_threads() -> int:
    """Threads the C++ kernels use."""
    return _module().get_num_threads()


def set_num_threads(n: int) -> None:
    """Threads the C++ kernels use from now on (process-wide); 0 restores OpenMP's default."""
    _call(_module().set_num_threads, n)


def tail(H, Y, tail_weights, act, tail_multipliers, out=None):
    """The pyramidal tail (layers 2..L) from H = Z_2 in one streamed C++ pass: (loss, G, grads).

    loss = 1/2 ||F_L - Y||_F^2 (a float), G = dPhi/dZ_2 (N, n2; written into ``out`` when given, an (N, n2) array
    of the dtype sharing no memory with H, Y or the weights), grads = [dPhi/dW_3, ..., dPhi/dW_L].
    tail_weights: [W_3, ..., W_L]; tail_multipliers: [a_2, ..., a_{L-1}]. Nothing of N rows is allocated besides G,
    and no BLAS is called (whose worker threads would compete with the kernels' for the cores); the same bits for
    any number of threads.
    """
    m = _module()
    loss, G, grads = _call(m.tail, H, Y, list(tail_weights), act.code, float(act.gamma),
                           [float(a) for a in tail_multipliers], out)
    return float(loss), G, list(grads)


def network_grad(X, Y, weights, act, multipliers, grads=None, panel_rows=0, kept_neurons=None, workspace=None):
    """The loss and every gradient of the whole network at the current weights, in one C++ pass over panels of rows.

    Returns (loss, grads, grad_sq): loss = 1/2 ||F_L - Y||_F^2 (a float), grads = [dPhi/dW_1, ..., dPhi/dW_L]
    (written into ``grads`` when given: L C-contiguous writeable arrays shaped like the weights, sharing no memory
    with the inputs or each other) and grad_sq = [||dPhi/dW_l||_F^2] (floats). weights: [W_1, ..., W_L] (L >= 2);
    multipliers: [a_1, ..., a_{L-1}].

    Per panel of R rows it computes Z_1 for all n1 neurons (keeping a1 sigma(Z_1) and a1 sigma'(Z_1) for the panel:
    R x n1 values each, never N x n1), Z_2, the tail on those rows, and the panel's share of every gradient, so each
    product of the wide layer is done once per step (the neuron-streamed ``step`` computes X W_1 twice). Besides
    the gradients it needs W_2^T, W_1 and its gradient in contiguous blocks of 64 neurons, and the panel (at most
    16 MiB or one row; R = ``panel_rows``, or 0: :func:`grad_panel_rows`).

    ``kept_neurons`` (None: all n1): the panels hold sigma, sigma' of the first ``kept_neurons`` neurons only (rounded
    up to a block of 64); the others are recomputed, X W_1 twice for them as in ``step``: a pass over tiles of rows
    gives their part of Z_2 before the panels, and a pass over their blocks their gradients after (with G of all N
    rows, an N x n_2 array). It bounds the panel where n1 is large (:func:`rows_kept`). ``workspace``: None, or a 1-D
    array of X's dtype with at least :func:`grad_workspace_size` elements, kept from call to call (:class:`RowsEngine`
    does): the large work arrays (W_2^T, the
    blocks of W_1 and its gradient, the panel, G) live there instead of being allocated, page-faulted and cleared by
    the kernel on every call. The same bits for any number of threads, with or without it.

    Row groups (:func:`grad_row_groups`): the panels form up to 8 groups, each accumulating its own share of the
    gradients (the extra copies at most 32 MiB), added in group order. With a workspace sized for the thread count
    (``grad_workspace_size(..., threads=)``: a panel per thread), the threads may run whole groups each instead of
    sharing every panel, which keeps two threads faster than one beside another process (:func:`set_grad_schedule`).
    """
    m = _module()
    loss, g, sq = _call(m.network_grad, X, Y, list(weights), act.code, float(act.gamma),
                        [float(a) for a in multipliers], None if grads is None else list(grads), int(panel_rows),
                        -1 if kept_neurons is None else int(kept_neurons), workspace)
    return float(loss), list(g), [float(v) for v in sq]


def network_grad_shard(X, Y, weights, act, multipliers, panel_rows, lane_blocks, groups, combine, grads=None,
                       workspace=None, block_sq=None):
    """One rank's share of :func:`network_grad` in a run whose wide layer is sharded by lanes of neurons
    (:class:`pyrgd.distributed.ShardedRowsEngine`): returns (loss, grads, grad_sq) as network_grad does, with
    weights[0] (d, n_r) and weights[1] (n_r, n2) the shard's neurons (whole lanes of the layer) and grads[0], grads[1]
    their gradients; the loss, the tail's gradients and grad_sq[2:] are the whole network's, grad_sq[0:2] the
    shard's.

    ``panel_rows``, ``lane_blocks`` and ``groups``: the whole layer's :func:`grad_panel_rows`, :func:`grad_lane_blocks`
    and :func:`grad_row_groups` (every neuron kept). ``combine(r0, rows, lanes, f2)`` is called once per batch of
    up to ``pyrgd._cpu.GRAD_SHARD_BATCH`` consecutive panels of a row group (so ``rows`` is up to that many times
    ``panel_rows``), in panel order, on the calling thread: ``lanes`` (n_lanes, rows, n2; read-only) holds the
    shard's lanes' parts of Z_2 for rows [r0, r0 + rows), and it must write their whole Z_2 into ``f2`` (rows, n2):
    every lane of the layer added in lane order, from a copy of lane 0 (what network_grad does, so that the
    gradients are its bits). Both are views of the workspace, valid during the call. An exception it raises ends the
    call and is raised again. ``block_sq``: None or a float64 array of 2 x (the shard's
    blocks of 64) that receives ||dW_1 block||^2 per block, then ||dW_2 block||^2."""
    m = _module()
    loss, g, sq = _call(m.network_grad, X, Y, list(weights), act.code, float(act.gamma),
                        [float(a) for a in multipliers], None if grads is None else list(grads), int(panel_rows), -1,
                        workspace, int(lane_blocks), int(groups), combine, block_sq)
    return float(loss), list(g), [float(v) for v in sq]


def grad_lane_blocks(n1) -> int:
    """Blocks of 64 neurons per lane of :func:`network_grad` for a wide layer of ``n1`` neurons, all kept (at most 16
    lanes; the lanes' parts of Z_2 are added in lane order)."""
    return int(_call(_module().grad_lane_blocks, int(n1)))


def grad_shard_workspace_size(N, d, n1, n2, act, itemsize, panel_rows, lane_blocks, groups) -> int:
    """The elements of the ``workspace`` of :func:`network_grad_shard` for a shard of ``n1`` neurons (the other
    arguments as there)."""
    return int(_call(_module().grad_shard_workspace_size, int(N), int(d), int(n1), int(n2), act.code, int(itemsize),
                     int(panel_rows), int(lane_blocks), int(groups)))


def grad_workspace_size(N, d, n1, n2, act, itemsize, panel_rows=0, kept_neurons=None, threads=1) -> int:
    """The elements of the ``workspace`` of :func:`network_grad` for these shapes and activation (parsed), when it
    runs on ``threads`` threads (where they can take row groups of their own, :func:`grad_row_groups`, a panel's
    arrays for each; with less, network_grad runs the threads together on each panel, with the same bits)."""
    return int(_call(_module().grad_workspace_size, int(N), int(d), int(n1), int(n2), act.code, int(itemsize),
                     int(panel_rows), -1 if kept_neurons is None else int(kept_neurons), int(threads)))


def grad_row_groups(N, d, n1, n2, act, itemsize, panel_rows=0, kept_neurons=None) -> int:
    """The row groups of :func:`network_grad` for these shapes: runs of consecutive panels, each accumulating its own
    share of the gradients, added in group order (fixed by the shapes, so the bits do not depend on the threads;
    the threads take whole groups where there are at least two per thread, docs/performance.md "Under load")."""
    return int(_call(_module().grad_row_groups, int(N), int(d), int(n1), int(n2), act.code, int(itemsize),
                     int(panel_rows), -1 if kept_neurons is None else int(kept_neurons)))


def grad_panel_rows(N, n1, n2, itemsize, act=None) -> int:
    """The rows R of one panel of :func:`network_grad` (panel_rows=0) for these shapes and activation (parsed; the
    ReLU panel holds sigma alone, so it gets more rows; None: any other activation)."""
    code = -1 if act is None else int(act.code)
    return int(_call(_module().grad_panel_rows, int(N), int(n1), int(n2), int(itemsize), code))


#: how network_grad's threads may share a step (:func:`set_grad_schedule`)
GRAD_SCHEDULES = ("auto", "team", "groups")


def set_grad_schedule(schedule: str) -> None:
    """How :func:`network_grad`'s threads share a step where its workspace has a panel per thread (two or more
    threads with at least two row groups each, :func:`grad_row_groups`), process-wide: 'team' (all threads on each
    panel, its lanes of neurons shared: the faster on a quiet machine), 'groups' (whole row groups per thread, no
    barrier until the end: the faster beside another process) or 'auto' (the default, or the environment variable
    ``PYRGD_GRAD_SCHEDULE``: every call timed, the faster
    of the two for its shapes and threads run, the other again every 10 calls). The bits are the same under all
    three; only the speed differs (docs/performance.md, "Under load")."""
    if schedule not in GRAD_SCHEDULES:
        raise PyrgdError(f"schedule: expected one of {', '.join(GRAD_SCHEDULES)}, got {schedule!r}")
    _call(_module().set_grad_schedule, schedule)


def get_grad_schedule() -> str:
    """The schedule :func:`set_grad_schedule` set ('auto' by default)."""
    return str(_module().get_grad_schedule())


def last_grad_schedule():
    """What the last :func:`network_grad` call of this process ran: 'team' or 'groups' (None before any)."""
    return _module().last_grad_schedule()


def sgd_update(weights, grads, lr) -> None:
    """W -= lr * G for every pair, in place, in one C++ call (a KeyboardInterrupt cannot fall between two layers);
    the same bits as NumPy's ``W -= lr * G``."""
    _call(_module().sgd_update, list(weights), list(grads), float(lr))


def fma_peak_gflops(dtype="float32", seconds: float = 0.2) -> float:
    """This machine's floating-point roof in GFLOP/s: independent FMA chains on registers with the kernels'
    instruction set, on the kernels' threads at once (no memory traffic), over about ``seconds``."""
    return float(_call(_module().fma_peak_gflops, str(dtype), float(seconds)))


def get_isa() -> str:
    """Instruction set of the kernels in use: 'generic', 'avx2' or 'avx512'."""
    return _module().get_isa()


def set_isa(name: str) -> None:
    """Use the kernels of one instruction set from now on (process-wide): 'auto' (the best this CPU has, the
    default), 'generic', 'avx2' or 'avx512'. PyrgdError when this build or this CPU lacks it."""
    _call(_module().set_isa, name)


def available_isas() -> list[str]:
    """Instruction sets this build can use on this CPU, from the baseline up."""
    return list(_module().available_isas())


def build_info() -> dict:
    """How pyrgd._cpu was built: compiler, OpenMP (and max threads), kernel instruction set in use and available,
    block size, baseline ISA flags (-march), fast-math."""
    return _module().build_info()


_blas_controller = None


@contextlib.contextmanager
def blas_single_thread():
    """While inside, NumPy's BLAS (OpenBLAS, MKL, BLIS, ...) runs on one thread.

    For loops that alternate small NumPy products with these kernels (a training step: the tail, then the wide
    layer): a multithreaded BLAS call leaves worker threads spinning for a while (OpenBLAS), on the cores the
    OpenMP kernels then need (docs/performance.md). Needs the threadpoolctl package; without it this does nothing.
    """
    global _blas_controller
    try:
        if _blas_controller is None:
            from threadpoolctl import ThreadpoolController

            _blas_controller = ThreadpoolController()
        limiter = _blas_controller.limit(limits=1, user_api="blas")
    except Exception:  # threadpoolctl missing or failing: run unchanged
        yield
        return
    with limiter:
        yield


# --------------------------------------------------------------------------------------------- the step engine
#: the GD step methods of :func:`engine` ('auto' chooses between them: :func:`auto_method`)
METHODS = ("rows", "neurons")

#: kept neurons come in multiples of this (16 lanes of one 64-neuron block: network_grad's lanes then split evenly
#: over 1, 2, 4, 8 or 16 threads; an uneven split costs more than the extra neurons gain, docs/performance.md)
KEPT_QUANTUM = 1024


def _panel_fits(N, n2, kept, item, act) -> bool:
    """Whether network_grad's panel of ``kept`` neurons gets its full minimum of rows (min(N, GRAD_PANEL_ROWS_MIN))
    within its byte budget (:data:`pyrgd._cpu.GRAD_PANEL_BYTES`)."""
    m = _module()
    return grad_panel_rows(N, max(kept, 1), n2, item, act) >= min(N, int(m.GRAD_PANEL_ROWS_MIN))


def panel_budget() -> dict:
    """The rows method's panel budget: {'bytes': GRAD_PANEL_BYTES, 'rows_min': GRAD_PANEL_ROWS_MIN}."""
    m = _module()
    return {"bytes": int(m.GRAD_PANEL_BYTES), "rows_min": int(m.GRAD_PANEL_ROWS_MIN)}


def rows_kept(N, d, n1, n2, dtype, act=None) -> int:
    """The neurons whose sigma, sigma' the rows method keeps in its panels (:func:`network_grad`'s ``kept_neurons``).

    All n1 where a panel of GRAD_PANEL_ROWS_MIN rows of all of them (S and sigma', 2 values per neuron and row; S
    alone for ReLU, ``act`` the parsed activation, None: not ReLU) fits in the panel budget
    (:data:`pyrgd._cpu.GRAD_PANEL_BYTES`); else the most multiples of :data:`KEPT_QUANTUM` neurons that fit
    (possibly 0). The others are recomputed as in the neurons method (X W_1 twice for them). The kept neurons'
    weights need not fit in the cache: the panels' products prefetch the next product's operands. ``d`` does not
    enter the rule (an argument for the callers' symmetry with the shapes)."""
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


def auto_method(N, d, n1, n2, dtype, act=None) -> str:
    """The method ``engine(method="auto")`` takes: 'rows' where it keeps at least half the neurons (:func:`rows_kept`),
    else 'neurons'. With fewer kept, the recomputed majority runs at the neurons method's rate and the rows method's
    extra memory (the gradients, G and W_1, W_2^T in blocks) buys little. Where memory is what counts, ask for
    'neurons', which holds no gradient of the wide layer."""
    return "rows" if 2 * rows_kept(N, d, n1, n2, dtype, act) >= n1 else "neurons"


class RowsEngine(StepEngine):
    """The "rows" method: :meth:`evaluate` is one :func:`network_grad` pass (the loss and every gradient, into
    buffers and a workspace kept from step to step); :meth:`update` is :func:`sgd_update` of those gradients.
    ``kept``: the neurons kept in the panels (:func:`rows_kept` by default)."""

    backend = "cpu"
    method = "rows"

    def __init__(self, X, Y, W, act, mult, kept=None):
        super().__init__(X, Y, W, act, mult)
        N, d = X.shape
        n1, n2 = W[0].shape[1], W[1].shape[1]
        self.kept = rows_kept(N, d, n1, n2, X.dtype, act) if kept is None else int(kept)
        self._grads = self._sq = None
        self._work = np.empty(0, dtype=X.dtype)
        self._work_threads = 0
        self._size_workspace()

    def _size_workspace(self) -> None:
        """Grow the workspace to what network_grad wants on the kernels' current thread count (row groups of
        their own need a panel's arrays per thread); kept from step to step, so checked only when it changes."""
        threads = get_num_threads()
        if threads == self._work_threads:
            return
        (N, d), n1, n2 = self.X.shape, self.W[0].shape[1], self.W[1].shape[1]
        n = grad_workspace_size(N, d, n1, n2, self.act, self.X.dtype.itemsize, kept_neurons=self.kept,
                                threads=threads)
        if n > self._work.size:
            self._work = np.empty(max(n, 1), dtype=self.X.dtype)
        self._work_threads = threads

    def _evaluate(self) -> float:
        self._size_workspace()
        loss, self._grads, self._sq = network_grad(self.X, self.Y, self.W, self.act, self.mult, grads=self._grads,
                                                   kept_neurons=self.kept, workspace=self._work)
        return loss

    def _update(self, lr: float) -> list[float]:
        sgd_update(self.W, self._grads, lr)
        return list(self._sq)

    def gradients(self) -> list:
        if not self._evaluated:
            self.evaluate()
        return self._grads


def plan_step(N, d, widths, dtype, act, method="auto") -> dict:
    """What :func:`engine` would take for these shapes, before anything is allocated: {'method', 'kept', 'bytes'}
    with 'bytes' the step's own memory besides X, Y and the weights (rows: the gradients and network_grad's
    workspace; neurons: two N x n_2 arrays, the tail computed in one streamed pass)."""
    N, d, n1, n2 = int(N), int(d), int(widths[0]), int(widths[1])
    item = np.dtype(dtype).itemsize
    if method == "auto":
        method = auto_method(N, d, n1, n2, dtype, act)
    if method == "rows":
        kept = rows_kept(N, d, n1, n2, dtype, act)
        dims = [d] + [int(w) for w in widths]
        grads = sum(a * b for a, b in zip(dims, dims[1:])) * item
        work = grad_workspace_size(N, d, n1, n2, act, item, kept_neurons=kept, threads=get_num_threads()) * item
        return {"method": "rows", "kept": kept, "bytes": grads + work}
    from .engine import neurons_step_bytes

    return {"method": "neurons", "kept": None, "bytes": neurons_step_bytes(N, [n1, n2], item)}


def network_gradients(X, Y, W, act, mult) -> list:
    """[dPhi/dW_1, ..., dPhi/dW_L] at the current weights, from one :func:`network_grad` pass (keeping the
    :func:`rows_kept` neurons in its panels, as the rows method does)."""
    N, d = X.shape
    kept = rows_kept(N, d, W[0].shape[1], W[1].shape[1], X.dtype, act)
    return network_grad(X, Y, W, act, mult, kept_neurons=kept)[1]


def engine(X, Y, W, act, mult, method="auto", allreduce=None):
    """The step engine of this backend: :class:`RowsEngine` ('rows'), :class:`NeuronsEngine` over this module's
    kernels ('neurons'), or the one :func:`auto_method` picks ('auto'). ``allreduce``: neurons method only (see
    :class:`~pyrgd.backends.engine.NeuronsEngine`)."""
    import sys

    _module()
    if method == "auto":
        if allreduce is not None:
            method = "neurons"
        else:
            N, d = X.shape
            method = auto_method(N, d, W[0].shape[1], W[1].shape[1], X.dtype, act)
    if method == "rows":
        if allreduce is not None:
            raise PyrgdError("method: 'rows' cannot run sharded (allreduce); use 'neurons'")
        return RowsEngine(X, Y, W, act, mult)
    return NeuronsEngine(sys.modules[__name__], X, Y, W, act, mult, allreduce=allreduce)
