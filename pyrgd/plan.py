"""The plan of a run, before anything large is allocated: memory and time per part, and a clear refusal where the
run would not fit.

Parts: ``data`` (X and Y), ``weights`` (W, plus the copy of the initial weights that the certificates' distances
need), ``step`` (the step engine's own memory: :func:`pyrgd.backends.cpu.plan_step` and its peers), ``tracking``
(the certificates' route: :mod:`pyrgd.spectrum`), ``lr`` (the ``lr="auto"`` rule's power iteration). Memory is in
bytes on the device the run computes on (host RAM for cpu/reference, GPU memory for cuda); times are estimates
from the flop counts and this machine's measured floating-point rate.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from . import spectrum
from .errors import ResourceError

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

    @property
    def total_bytes(self) -> int:
        return sum(p.bytes for p in self.parts)

    def part(self, name: str) -> Part:
        return next(p for p in self.parts if p.name == name)

    def check(self) -> None:
        """ResourceError naming the largest part, its estimate, the memory available and the setting to change, where
        the total exceeds MEMORY_FRACTION of the memory available."""
        if self.available is None or self.total_bytes <= MEMORY_FRACTION * self.available:
            return
        big = max(self.parts, key=lambda p: p.bytes)
        raise ResourceError(
            f"the run does not fit in memory: it needs about {_fmt_bytes(self.total_bytes)} on the {self.device}, "
            f"{_fmt_bytes(self.available)} are available; the largest part is {big.name} "
            f"({_fmt_bytes(big.bytes)}: {big.what}); to change it: {big.setting}")

    def as_dict(self) -> dict:
        return {"N": self.N, "d": self.d, "widths": list(self.widths), "dtype": self.dtype, "backend": self.backend,
                "method": self.method, "kept_neurons": self.kept, "tracking_route": self.tracking_route,
                "available_bytes": self.available, "device": self.device, "total_bytes": self.total_bytes,
                "parts": [{"name": p.name, "bytes": p.bytes, "seconds": p.seconds, "what": p.what,
                           "setting": p.setting} for p in self.parts]}

    def format(self) -> str:
        """The plan as a table (what ``pyrgd train --dry-run`` prints)."""
        lines = [f"plan: N = {self.N}, d = {self.d}, widths = {list(self.widths)}, {self.dtype}, backend "
                 f"{self.backend}, method {self.method}" + (f" ({self.kept} neurons kept)" if self.kept is not None
                                                            and self.kept < self.widths[0] else ""),
                 f"{'part':<10} {'memory':>10} {'time':>10}  what"]
        for p in self.parts:
            t = "" if p.seconds is None else _fmt_seconds(p.seconds)
            lines.append(f"{p.name:<10} {_fmt_bytes(p.bytes):>10} {t:>10}  {p.what}")
        avail = "unknown" if self.available is None else _fmt_bytes(self.available)
        secs = [p.seconds for p in self.parts if p.seconds is not None]
        lines.append(f"{'total':<10} {_fmt_bytes(self.total_bytes):>10} {_fmt_seconds(sum(secs)):>10}  "
                     f"({avail} available on the {self.device})")
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
             steps=1000, route="auto", timing=True) -> Plan:
    """The plan of :func:`pyrgd.train` on these shapes (see the module docstring); nothing large is allocated.

    backend: a concrete backend name; activation: a parsed activation; track_every: an int (0: no tracking) or
    'auto'; route: the tracking route asked for ('auto', 'exact' or 'estimate')."""
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
        # the power iteration: two perturbed copies of the weights, J^T u (a weights-sized vector) and the forward
        # caches of three passes (N x n_l for every layer from 2 on)
        caches = 3 * N * sum(widths[1:]) * item
        lr_seconds = None if step_seconds is None else 20 * 2 * step_seconds
        parts.append(Part("lr", 4 * weight_bytes + caches, lr_seconds,
                          "lr = 'auto': 20 power iterations on the NTK", "train.lr = a number"))
    avail, device = available_memory(backend)
    plan = Plan(N, d, widths, np.dtype(dtype).name, backend, step["method"], step["kept"], chosen, avail, device,
                parts)
    plan.estimate_block = estimate_block(N, budget - block_bytes)
    plan.estimate_block_bytes = block_bytes
    return plan
