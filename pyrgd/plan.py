"""The plan of a run, before anything large is allocated: memory and time per part, and a clear refusal where the
run would not fit.

Parts: ``data`` (X and Y), ``weights`` (W, plus the copy of the initial weights that the certificates' distances
need), ``step`` (the step engine's own memory: :func:`pyrgd.backends.cpu.plan_step` and its peers), ``tracking``
(the certificates' route: :mod:`pyrgd.spectrum`), ``lr`` (the ``lr="auto"`` rule's power iteration). Memory is in
bytes on the device the run computes on (host RAM for cpu/reference, GPU memory for cuda); times are estimates
from the flop counts and this machine's measured floating-point rate.

A distributed run (``mpiexec -n P``, :mod:`pyrgd.distributed`) is planned per rank (``plan_run(..., ranks=P)``):
``data`` (X and Y, whole on every rank), ``weights`` (the full weights, and the initial ones, on every rank),
``shard`` (the rank's neurons of W_1 and W_2 and its tail, and their last finite copy), ``step`` (its parts of Z_2,
one N x n_2 array per group of neurons it owns, H, G and the tail's gradients), ``gather`` (the full weights
gathered for the certificates, the checkpoints and the end of the run), ``tracking`` (on rank 0 only) and ``lr``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from . import spectrum
from .errors import PyrgdError, ResourceError

#: the tracker may take at most this fraction of the steps' time (:class:`pyrgd.tracker.Tracker`): under 10% of the
#: run's wall time, with room for the error of its cost prediction and the loop's own bookkeeping
TRACKING_TIME_FRACTION = 0.08
#: the tracker may use as much memory as the step itself (data, weights, the step's buffers), or this, if more
TRACKING_MEMORY_FLOOR = 16 << 20
#: a run is refused where its planned peak exceeds this fraction of the memory available
MEMORY_FRACTION = 0.9
#: the fraction of the FMA peak the time estimates assume for the fused kernels
ASSUMED_EFFICIENCY = 0.5


@dataclass
class Part:
    """One part of a run: its peak bytes, its estimated seconds (None: not estimated), what it holds, and the
    setting that changes it."""

    name: str
    bytes: int
    seconds: float | None
    what: str
    setting: str


@dataclass
class Plan:
    """The plan of one run (see the module docstring). ``available``: bytes of memory available on the device
    (None: unknown); ``tracking_route``: 'exact', 'estimate' or 'off'."""

    N: int
    d: int
    widths: list
    dtype: str
    backend: str
    method: str
    kept: int | None
    tracking_route: str
    available: int | None
    device: str
    parts: list = field(default_factory=list)
    estimate_block: int = 16
    estimate_block_bytes: int = spectrum.BLOCK_BYTES
    #: a distributed run: None (one process), or the ranks P; the parts are then those of rank ``rank`` (the rank
    #: that needs the most, unless one was asked for), owning ``rank_neurons`` neurons in ``rank_groups`` groups of
    #: 1024 (method 'neurons') or lanes (method 'rows', pyrgd.distributed.ShardedRowsEngine);
    #: ``per_rank_bytes``: every rank's total; ``sharing``: ranks sharing the host, whose ``available`` is this
    #: rank's share of the host's memory
    ranks: int | None = None
    rank: int | None = None
    rank_neurons: int | None = None
    rank_groups: int | None = None
    per_rank_bytes: list = field(default_factory=list)
    sharing: int = 1
    _inputs: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def total_bytes(self) -> int:
        return sum(p.bytes for p in self.parts)

    def part(self, name: str) -> Part:
        return next(p for p in self.parts if p.name == name)

    def check(self, comm=None) -> None:
        """ResourceError naming the largest part, its estimate, the memory available and the setting to change, where
        the total exceeds MEMORY_FRACTION of the memory available (per rank in a distributed plan).

        ``comm``: None, or (distributed, collective) the run's communicator: every rank checks its own plan and every
        rank raises the lowest refusing rank's ResourceError, so that no rank goes on to wait for the others."""
        if comm is None:
            return self._check()
        try:
            self._check()
            err = None
        except ResourceError as e:
            err = str(e)
        refused = next((m for m in comm.allgather(err) if m is not None), None)
        if refused is not None:
            raise ResourceError(refused)

    def _check(self) -> None:
        if self.available is None or self.total_bytes <= MEMORY_FRACTION * self.available:
            return
        big = max(self.parts, key=lambda p: p.bytes)
        if self.ranks is None:
            who = f"it needs about {_fmt_bytes(self.total_bytes)} on the {self.device}, " \
                  f"{_fmt_bytes(self.available)} are available"
        else:
            shared = f" (its share: {self.sharing} ranks share the {self.device}'s memory)" if self.sharing > 1 else ""
            who = f"rank {self.rank} of {self.ranks} needs about {_fmt_bytes(self.total_bytes)} on its " \
                  f"{self.device}, {_fmt_bytes(self.available)} are available to it{shared}"
        raise ResourceError(
            f"the run does not fit in memory: {who}; the largest part is {big.name} "
            f"({_fmt_bytes(big.bytes)}: {big.what}); to change it: {big.setting}")

    def for_ranks(self, ranks: int, rank: int | None = None, sharing: int = 1) -> "Plan":
        """The plan of the same run distributed over ``ranks`` ranks (:func:`plan_run` with ``ranks``)."""
        return plan_run(**self._inputs, ranks=ranks, rank=rank, sharing=sharing)

    def as_dict(self) -> dict:
        return {"N": self.N, "d": self.d, "widths": list(self.widths), "dtype": self.dtype, "backend": self.backend,
                "method": self.method, "kept_neurons": self.kept, "tracking_route": self.tracking_route,
                "available_bytes": self.available, "device": self.device, "total_bytes": self.total_bytes,
                "parts": [{"name": p.name, "bytes": p.bytes, "seconds": p.seconds, "what": p.what,
                           "setting": p.setting} for p in self.parts]} | ({} if self.ranks is None else {
                "ranks": self.ranks, "rank": self.rank, "rank_neurons": self.rank_neurons,
                "rank_groups": self.rank_groups, "per_rank_bytes": list(self.per_rank_bytes),
                "ranks_sharing_host": self.sharing})

    def format(self) -> str:
        """The plan as a table (what ``pyrgd train --dry-run`` prints)."""
        lines = [f"plan: N = {self.N}, d = {self.d}, widths = {list(self.widths)}, {self.dtype}, backend "
                 f"{self.backend}, method {self.method}" + (f" ({self.kept} neurons kept)" if self.kept is not None
                                                            and self.kept < self.widths[0] else "")]
        if self.ranks is not None:
            lo, hi = min(self.per_rank_bytes), max(self.per_rank_bytes)
            lines.append(
                f"per rank, on {self.ranks} rank{'s' if self.ranks > 1 else ''}: rank {self.rank} "
                f"({self.rank_neurons} neurons in {self.rank_groups} "
                f"{'lane' if self.method == 'rows' else 'group'}{'s' if self.rank_groups > 1 else ''})"
                + (", the rank that needs the most" if self.ranks > 1 else "")
                + ("" if lo == hi else f"; the ranks need {_fmt_bytes(lo)} to {_fmt_bytes(hi)}"))
        lines.append(f"{'part':<10} {'memory':>10} {'time':>10}  what")
        for p in self.parts:
            t = "" if p.seconds is None else _fmt_seconds(p.seconds)
            lines.append(f"{p.name:<10} {_fmt_bytes(p.bytes):>10} {t:>10}  {p.what}")
        avail = "unknown" if self.available is None else _fmt_bytes(self.available)
        secs = [p.seconds for p in self.parts if p.seconds is not None]
        where = f"on the {self.device}" if self.ranks is None else (
            f"to this rank: 1/{self.sharing} of its {self.device}'s" if self.sharing > 1 else
            f"on the {self.device}; ranks on one {self.device} share it")
        lines.append(f"{'total':<10} {_fmt_bytes(self.total_bytes):>10} {_fmt_seconds(sum(secs)):>10}  "
                     f"({avail} available {where})")
        return "\n".join(lines)


def _fmt_bytes(n) -> str:
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _fmt_seconds(s) -> str:
    if s < 120:
        return f"{s:.2g} s" if s < 10 else f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def available_memory(backend: str) -> tuple[int | None, str]:
    """(bytes available, the device's name): MemAvailable and the cgroup's limit on the host, the free memory of
    the current GPU (cudaMemGetInfo) for cuda; None where it cannot be read."""
    if backend == "cuda":
        try:
            import cupy

            free, _ = cupy.cuda.runtime.memGetInfo()
            pool = cupy.get_default_memory_pool()
            return int(free + pool.free_bytes()), "GPU"
        except Exception:
            return None, "GPU"
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                limit = f.read().strip()
            used_path = os.path.join(os.path.dirname(path), "memory.current" if path.endswith("max")
                                     else "memory.usage_in_bytes")
            with open(used_path) as f:
                used = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            room = int(limit) - used
            avail = room if avail is None else min(avail, room)
        break
    return avail, "host"


_RATE = {}


def flop_rate(backend: str, dtype) -> float | None:
    """Flop/s the time estimates assume: ASSUMED_EFFICIENCY of the FMA peak measured once per process on the cpu
    backend; None elsewhere (no estimate)."""
    key = (backend, np.dtype(dtype).name)
    if key not in _RATE:
        rate = None
        if backend in ("cpu", "reference"):
            try:
                from .ops import get_backend

                peak = get_backend("cpu").fma_peak_gflops(np.dtype(dtype).name, 0.05) * 1e9
                rate = ASSUMED_EFFICIENCY * peak * (0.1 if backend == "reference" else 1.0)
            except Exception:
                rate = None
        _RATE[key] = rate
    return _RATE[key]


def step_flops(N, d, widths, method="neurons", kept=None) -> int:
    """Flops of one GD step (docs/performance.md): each product of every layer three times (forward, the two
    gradients) less the input gradient; the neurons method computes X W_1 once more, the rows method once more for
    its recomputed neurons only."""
    dims = [int(d)] + [int(w) for w in widths]
    N, n1 = int(N), dims[1]
    useful = sum(6 * N * a * b for a, b in zip(dims, dims[1:])) - 2 * N * dims[0] * n1
    again = n1 if method == "neurons" else n1 - (n1 if kept is None else int(kept))
    return useful + 2 * N * dims[0] * again


def tracking_route(N: int, itemsize: int, budget_bytes: int, track_every, route: str = "auto") -> str:
    """'off' (track_every 0), the route asked for ('exact', 'certified', 'estimate'), or for 'auto': 'exact' where
    the N x N Gram and eigvalsh fit in ``budget_bytes``, else 'estimate' (matrix-free)."""
    if track_every == 0:
        return "off"
    if route in ("exact", "certified", "estimate"):
        return route
    return "exact" if spectrum.exact_memory_bytes(N, itemsize) <= budget_bytes else "estimate"


def estimate_block(N: int, budget_bytes: int) -> int:
    """Vectors of the matrix-free estimate's LOBPCG block: as many as fit ``budget_bytes`` (at most 16, at least
    1)."""
    per_vector = spectrum.estimator_bytes(N, 1)
    return int(max(1, min(16, int(budget_bytes) // max(1, per_vector))))


def plan_run(N, d, widths, dtype, activation, backend="cpu", method="auto", lr="auto", track_every="auto",
             steps=1000, route="auto", timing=True, ranks=None, rank=None, sharing=1) -> Plan:
    """The plan of :func:`pyrgd.train` on these shapes (see the module docstring); nothing large is allocated.

    backend: a concrete backend name; activation: a parsed activation; track_every: an int (0: no tracking) or
    'auto'; route: the tracking route asked for ('auto', 'exact' or 'estimate').

    ranks: None (one process), or the P ranks of a distributed run (``train(..., comm=...)``, ``mpiexec -n P``): the
    plan of one rank (module docstring), the rank that needs the most unless ``rank`` names one; ``sharing``: how
    many ranks share this host's memory, or with the cuda backend this rank's GPU (the memory available to the rank
    is that share). A distributed plan keeps
    one process's 'neurons' plan of the tracking route and its parts (the certificates are taken on rank 0)."""
    inputs = dict(N=N, d=d, widths=widths, dtype=dtype, activation=activation, backend=backend, method=method, lr=lr,
                  track_every=track_every, steps=steps, route=route, timing=timing)
    if ranks is None:
        plan = _plan_one(**inputs)
    else:
        plan = _plan_ranks(inputs, ranks, rank, sharing)
    plan._inputs = inputs
    return plan


def _count(name, v, low=1) -> int:
    import numbers

    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
        raise PyrgdError(f"{name}: expected an integer >= {low}, got {v!r}")
    return int(v)


def _plan_ranks(inputs, ranks, rank, sharing) -> Plan:
    """The plan of rank ``rank`` (None: the rank that needs the most) of a run distributed over ``ranks`` ranks."""
    from .activations import parse_activation
    from .backends.engine import neurons_step_bytes
    from .distributed import NEURON_GROUP, distributed_method, rows_shard_bytes, shard_bytes

    ranks, sharing = _count("ranks", ranks), _count("sharing", sharing)
    backend = inputs["backend"]
    if backend not in ("cpu", "cuda"):
        raise PyrgdError(f"ranks: a distributed run needs the cpu or the cuda backend, got backend {backend!r}")
    N, d, widths = int(inputs["N"]), int(inputs["d"]), [int(w) for w in inputs["widths"]]
    act = parse_activation(inputs["activation"])
    try:
        method = distributed_method(N, d, widths, inputs["dtype"], act, inputs["method"], ranks, backend)
    except PyrgdError as e:  # "comm: P ranks but ..." is, in a plan, about its argument ranks
        msg = str(e)
        raise PyrgdError("ranks: " + msg[len("comm: "):] if msg.startswith("comm: ") else msg) from None
    G = -(-widths[0] // NEURON_GROUP)
    if method == "neurons" and ranks > G:
        raise PyrgdError(f"ranks: {ranks} ranks but the wide layer has {G} group{'s' if G > 1 else ''} of "
                         f"{NEURON_GROUP} neurons (n1 = {widths[0]}); a run needs at most {G} "
                         f"rank{'s' if G > 1 else ''}")
    if rank is not None and (_count("rank", rank, 0) >= ranks):
        raise PyrgdError(f"rank: expected 0 to {ranks - 1} (of {ranks} ranks), got {rank!r}")
    # one process's plan of the method: the data, the tracking route and its parts, lr = 'auto', as a distributed
    # run has them
    one = _plan_one(**{**inputs, "method": method})
    item = np.dtype(inputs["dtype"]).itemsize
    dims = [d] + widths
    weight_bytes = sum(a * b for a, b in zip(dims, dims[1:])) * item
    certified = one.tracking_route != "off"
    rate = flop_rate(backend, inputs["dtype"]) if inputs["timing"] else None
    steps = int(inputs["steps"])
    track = one.part("tracking")

    common = [one.part("data"),
              Part("weights", weight_bytes * (2 if certified else 1), None,
                   "the full weights, on every rank (gathered for the certificates and the result)" +
                   (" and the initial ones (the certificates' distances)" if certified else ""),
                   "model.widths" + ("; train.track_every = 0 drops the initial ones" if certified else ""))]
    lr_part = [p for p in one.parts if p.name == "lr"]  # every rank runs lr = 'auto' on the full weights

    # GPU ranks: besides the shard's buffers, what the cuda step allocates per call (the forward launch's N x n_2
    # result before its copy, the tail's forward cache and CuPy temporaries, the step kernel's scratch)
    cuda_extra = 0 if backend != "cuda" else \
        neurons_step_bytes(N, widths, item, n2_buffers=2) + (8 << 20)

    def own(r):
        """Rank r's own parts: its shard, its step's buffers, the gather, the tracking (rank 0's)."""
        s = shard_bytes(N, d, widths, item, ranks, r) if method == "neurons" else \
            rows_shard_bytes(N, d, widths, inputs["dtype"], act, ranks, r)
        s = {**s, "buffers": s["buffers"] + cuda_extra}
        secs = None if rate is None else step_flops(N, d, [s["neurons"]] + widths[1:], method,
                                                    s["neurons"]) / rate * steps
        t_secs = None if track.seconds is None or secs is None else TRACKING_TIME_FRACTION * secs
        many = "s" if s.get("groups", 1) > 1 else ""
        return s, [
            Part("shard", 2 * s["shard"], None,
                 f"this rank's {s['neurons']} neurons of W_1 and W_2 and the tail W_3..W_L, and their last finite "
                 "copy", "more ranks (fewer neurons each)"),
            Part("step", s["buffers"], secs,
                 (f"{s['groups']} N x n_2 part{many} of Z_2 (one per group it owns), H, G and the tail's gradients"
                  + ("; the cuda step's temporaries (a forward result, the tail's cache, scratch)" if cuda_extra
                     else "")
                  if method == "neurons" else
                  "the gradients of its neurons and of the tail, and the rows method's workspace (a batch of up to "
                  "4 panels of its lanes)") + f"; at most {steps} steps of this rank's neurons (communication not counted)",
                 "more ranks (fewer groups each), or a smaller data.N" if method == "neurons" else
                 "more ranks (fewer neurons each), or train.method = neurons"),
            Part("gather", s["gather"], None,
                 "the full W_1 and W_2 gathered from every rank (certificates, checkpoints, the end of the run)",
                 "model.widths (every rank gathers the whole W_1 and W_2)"),
            Part("tracking", track.bytes, t_secs, track.what + ("; on rank 0" if track.bytes else ""), track.setting)
            if r == 0 or track.bytes == 0 else
            Part("tracking", 0, t_secs, "on rank 0 only (this rank waits)", track.setting),
        ]

    held = sum(p.bytes for p in common + lr_part)
    totals = [held + sum(p.bytes for p in own(r)[1]) for r in range(ranks)]
    if rank is None:  # the rank that needs the most (the lowest of equals)
        rank = max(range(ranks), key=lambda r: (totals[r], -r))
    s, parts = own(rank)
    parts = common + parts + lr_part
    avail, device = available_memory(backend)
    if avail is not None:
        avail //= sharing
    plan = Plan(N, d, widths, one.dtype, backend, method, widths[0] if method == "rows" else None,
                one.tracking_route, avail, device, parts, one.estimate_block, one.estimate_block_bytes, ranks=ranks,
                rank=rank, rank_neurons=s["neurons"], rank_groups=s.get("groups", s.get("lanes")),
                per_rank_bytes=totals, sharing=sharing)
    return plan


def _plan_one(N, d, widths, dtype, activation, backend="cpu", method="auto", lr="auto", track_every="auto",
              steps=1000, route="auto", timing=True) -> Plan:
    from .ops import get_backend

    N, d, widths = int(N), int(d), [int(w) for w in widths]
    item = np.dtype(dtype).itemsize
    be = get_backend(backend)
    step = be.plan_step(N, d, widths, dtype, activation, method)
    dims = [d] + widths
    weight_bytes = sum(a * b for a, b in zip(dims, dims[1:])) * item
    data_bytes = N * (d + widths[-1]) * item
    tracked = track_every != 0
    rate = flop_rate(backend, dtype) if timing else None
    step_seconds = None if rate is None else step_flops(N, d, widths, step["method"], step["kept"]) / rate
    parts = [
        Part("data", data_bytes, None, f"X ({N} x {d}) and Y ({N} x {widths[-1]})", "data.N (fewer samples)"),
        Part("weights", weight_bytes * (3 if tracked else 2), None,
             "the weights, the last finite ones (kept if the run diverges)" +
             (" and the initial ones (the certificates' distances)" if tracked else ""),
             "model.widths" + ("; train.track_every = 0 drops the initial ones" if tracked else "")),
        Part("step", int(step["bytes"]), None if step_seconds is None else step_seconds * int(steps),
             f"the {step['method']} method's buffers; at most {int(steps)} steps",
             "train.method = neurons (no gradient arrays)" if step["method"] == "rows" else "model.widths"),
    ]
    budget = max(TRACKING_MEMORY_FLOOR, data_bytes + weight_bytes + int(step["bytes"]))
    chosen = tracking_route(N, item, budget, track_every, route)
    if chosen == "exact":
        t_bytes = spectrum.exact_memory_bytes(N, item)
        what = "the N x N Gram and eigvalsh at each certificate"
    elif chosen == "certified":
        t_bytes = spectrum.certified_memory_bytes(N) + spectrum.estimator_bytes(N, 16)
        what = "the N x N float64 Gram and a Cholesky test (a certified lower bound) at each certificate"
    # the estimate's blocks of neurons take at most half the budget (at least 8 neurons), LOBPCG the rest
    block_bytes = int(max(2 * N * 8 * 8, min(spectrum.BLOCK_BYTES, budget // 2, 2 * N * widths[0] * 8)))
    if chosen == "estimate" and route == "auto" and spectrum.estimator_bytes(N, 1) + block_bytes > budget:
        chosen, t_bytes = "off", 0
        what = "off: even the matrix-free estimate would need more memory than the step itself"
    elif chosen == "estimate":
        k = estimate_block(N, budget - block_bytes)
        t_bytes = block_bytes + spectrum.estimator_bytes(N, k)
        what = f"matrix-free estimates (LOBPCG on {k} vectors, blocks of neurons; no N x N matrix)"
    elif chosen == "off":
        t_bytes, what = 0, "off (train.track_every = 0)"
    if chosen == "off" and tracked:  # no certificate: no copy of the initial weights either
        parts[1] = Part("weights", 2 * weight_bytes, None, "the weights and the last finite ones", "model.widths")
    t_seconds = None
    if chosen != "off" and step_seconds is not None:
        t_seconds = TRACKING_TIME_FRACTION * step_seconds * int(steps)
        what += f"; at most {TRACKING_TIME_FRACTION:.0%} of the run's time" if track_every == "auto" else ""
    parts.append(Part("tracking", int(t_bytes), t_seconds, what,
                      "train.track_every = 0 (off), or a smaller N for the exact route"))
    if isinstance(lr, str) and lr == "auto":
        # the Lanczos products (pyrgd.lr_rule): the perturbed copy of the weights, J^T u (a weights-sized vector) and
        # its workspace, the forward caches of three passes (N x n_l for every layer from 2 on); the time: about 20
        # products of two passes each (an upper figure past 512 samples, where subsets of 128 and 512 rows serve)
        caches = 3 * N * sum(widths[1:]) * item
        lr_seconds = None if step_seconds is None else 20 * 2 * step_seconds
        parts.append(Part("lr", 4 * weight_bytes + caches, lr_seconds,
                          "lr = 'auto': Lanczos on the NTK at initialization (about 20 products through the kernels)",
                          "train.lr = a number"))
    avail, device = available_memory(backend)
    plan = Plan(N, d, widths, np.dtype(dtype).name, backend, step["method"], step["kept"], chosen, avail, device,
                parts)
    plan.estimate_block = estimate_block(N, budget - block_bytes)
    plan.estimate_block_bytes = block_bytes
    return plan
