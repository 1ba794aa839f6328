"""The reference problems of the benchmark, the useful-flop count of one GD step, the data bytes, and the data.

Every problem is one full-batch GD step of a whole network (THEORY.md section 1): X (N, d), Y (N, n_L), weights
W_l (n_{l-1}, n_l), in the run's dtype (float32) unless the problem names its own (B1d, B2d: B1's and B2's shapes
in float64, with the DGEMM share where the others have the SGEMM share), LeCun initial weights, rows of X of norm
about 1.

Selectors accepted by ``--problems``: a problem's name (``B1``, ``B1d``, ``B4_2048``, ``T2``, ``L1``, ``G1``) or a
group (``B4``: every n1 of the time-per-neuron sweep; ``T``: B1 with 1 and 2 threads, quiet and beside a busy
process (T_load); ``D``: the float64 problems B1d and B2d; ``L``: the train problems); ``M1``: B1 on ``mpiexec -n 2``
(skipped without mpi4py).

A new problem is one more entry in the list of :func:`_cpu_problems` (or :func:`_gpu_problems`): its name and group
make it selectable, and :func:`default_selection` says whether a plain run includes it.

The train problems (group ``L``, ``kind="train"``) are not one GD step but a whole :func:`pyrgd.train` run with its
defaults (lr="auto", track_every="auto", method and backend auto) for ``steps`` steps, measured in a fresh process
by :mod:`pyrgd.bench.train_runs`: L1 (N = n1 = 20000, 20 steps: peak memory and the tracking's share of the time),
L2 (N = n1 = 65536, one step: peak memory and the time against one bare engine step) and B1_track (B1's shapes, 200
steps: the wall time against the steps' time). They are not in the default selection (L2 alone is minutes on two
cores): ``--problems L`` runs them, ``--problems B1,B2,D,B3,B4,T,M1,L`` everything.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import PyrgdError

#: the activation of the problems that name none (B1's)
DEFAULT_ACTIVATION = "smooth_leaky_relu(0.2)"
#: the step size is LR_SCALE / N: small enough that the ~20 steps of a timing stay finite (the NTK's largest
#: eigenvalue is of order N for these initializations), large enough that the update is far above float32 rounding
LR_SCALE = 0.1
#: candidates of the CPU problems and of the GPU problems (see pyrgd.bench.candidates)
CPU_CANDIDATES = ("fused", "unfused", "chunked", "torch", "torch_compile", "jax_jit")
#: the memory problem's (B3): the compiled peers' memory is not measured, and their N x n1 matrices would not fit
BASELINES = ("fused", "unfused", "chunked", "torch")
GPU_CANDIDATES = ("fused", "chunked", "torch", "torch_compile", "jax_jit")
#: the one "candidate" of a train problem: pyrgd.train with its defaults
TRAIN_CANDIDATES = ("train",)


@dataclass(frozen=True)
class Problem:
    """One benchmark problem.

    name: its label in tables and JSON; group: the selector it belongs to (B4, T) or its own name.
    candidates: which candidates run on it (fused is always first: the others are compared with it).
    threads: run with this many threads (pyrgd's kernels and the BLAS); None: the machine's default.
    max_repeats: at most this many timed steps (B3, the memory problem, is one large step).
    method: the fused candidate's :func:`pyrgd.ops.step_engine` method ('auto', or 'neurons' for the memory
    problem: the method that holds no gradient of the wide layer).
    kind: 'step' (candidates of one GD step, :mod:`pyrgd.bench.runner`) or 'train' (a :func:`pyrgd.train` run with
    its defaults for ``steps`` steps, :mod:`pyrgd.bench.train_runs`; ``max_repeats`` then bounds the bare engine
    steps timed after it) or 'load' (T_load: the fused step with 1 and 2 threads beside a busy process,
    :mod:`pyrgd.bench.load`) or 'mpi' (M1: the step sharded over 2 MPI ranks, :mod:`pyrgd.bench.mpi_run`).
    dtype: the problem's own dtype ('float32' or 'float64'); None: the run's (``Options.dtype``).
    """

    name: str
    N: int
    d: int
    widths: tuple
    activation: str = DEFAULT_ACTIVATION
    group: str = ""
    candidates: tuple = CPU_CANDIDATES
    threads: int | None = None
    max_repeats: int | None = None
    device: str = "cpu"
    note: str = ""
    method: str = "auto"
    kind: str = "step"
    steps: int | None = None
    dtype: str | None = None

    @property
    def dims(self) -> list[int]:
        return [self.d] + list(self.widths)

    @property
    def n1(self) -> int:
        return self.widths[0]

    @property
    def lr(self) -> float:
        return LR_SCALE / self.N

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        d["candidates"] = list(self.candidates)
        return d


def useful_flops(N: int, d: int, widths) -> int:
    """Useful flops of one GD step (THEORY.md section 2): sum over l of 6 N n_{l-1} n_l, minus 2 N d n1.

    It is the count of an unfused implementation (forward 2 N n_{l-1} n_l per layer, backward twice that), without
    the gradient with respect to X; every GFLOP/s figure of the benchmark divides this count by the time.
    """
    dims = [int(d)] + [int(w) for w in widths]
    return sum(6 * int(N) * a * b for a, b in zip(dims, dims[1:])) - 2 * int(N) * dims[0] * dims[1]


def fused_flops(N: int, d: int, widths, method: str = "rows", kept: int | None = None) -> int:
    """Flops the fused step executes (:func:`pyrgd.ops.step_engine`). ``rows`` (the cpu backend's one pass over panels of
    rows) with ``kept`` neurons kept in its panels (None: all n1): the useful flops, each product once, plus
    2 N d (n1 - kept) for the recomputed neurons' second X W_1. ``neurons`` (streamed over the wide layer's neurons):
    the useful flops plus 2 N d n1, since it computes Z_1 = X W_1 twice, once for the gradient and once, with the
    updated weights, for the next step's H (THEORY.md section 2: 6 N d n1 + 6 N n1 n2 for the wide layer). Divided
    by the FMA peak it is the least time the fused step can take (the roofline bound of the speed-up targets)."""
    if method not in ("rows", "neurons"):
        raise ValueError(f"method: expected 'rows' or 'neurons', got {method!r}")
    n1 = int(widths[0])
    if kept is not None and not 0 <= kept <= n1:
        raise ValueError(f"kept: expected 0..n1 = {n1} neurons, got {kept!r}")
    recomputed = n1 if method == "neurons" else n1 - (n1 if kept is None else int(kept))
    extra = 2 * int(N) * int(d) * recomputed
    return useful_flops(N, d, widths) + extra


def data_bytes(N: int, d: int, widths, itemsize: int = 4) -> dict:
    """Bytes a GD step cannot do without, by part, and their ``total``.

    X (N d), Y (N n_L), every weight, two N x n2 buffers (H = Z_2, the wide layer's output, and G = dPhi/dZ_2, the
    tail's gradient that the wide step consumes; H of the next step can take H's place) and one N x n_l buffer per
    hidden tail layer l = 3..L-1. This is the denominator of the peak-memory targets (B3, G2).
    """
    dims = [int(d)] + [int(w) for w in widths]
    N = int(N)
    parts = {
        "X": N * dims[0] * itemsize,
        "Y": N * dims[-1] * itemsize,
        "weights": sum(a * b for a, b in zip(dims, dims[1:])) * itemsize,
        "N_x_n2_buffers": 2 * N * dims[2] * itemsize if len(dims) > 2 else 0,
        "tail_buffers": sum(N * n for n in dims[3:-1]) * itemsize,
    }
    parts["total"] = sum(parts.values())
    return parts


def _cpu_problems(tiny: bool) -> list[Problem]:
    if tiny:
        b1 = dict(N=256, d=16, widths=(512, 16, 8, 4))
        b3 = dict(N=1024, d=8, widths=(1024, 8, 4, 1))
        sweep = (256, 512, 1024)
    else:
        b1 = dict(N=4096, d=64, widths=(4096, 64, 32, 10))
        b3 = dict(N=32768, d=32, widths=(32768, 32, 16, 1))
        sweep = (1024, 2048, 4096, 8192, 16384)
    out = [
        Problem("B1", **b1, group="B1"),
        Problem("B2", **b1, activation="relu", group="B2"),
        Problem("B1d", **b1, group="D", dtype="float64", note="B1 in float64"),
        Problem("B2d", **b1, activation="relu", group="D", dtype="float64", note="B2 in float64"),
        Problem("B3", **b3, group="B3", max_repeats=1, method="neurons", candidates=BASELINES,
                note="one large step: peak memory of the memory-lean method"),
    ]
    for n1 in sweep:
        out.append(Problem(f"B4_{n1}", b1["N"], b1["d"], (n1,) + b1["widths"][1:], group="B4",
                           candidates=("fused",), note="time per neuron"))
    for t in (1, 2):
        out.append(Problem(f"T{t}", **b1, group="T", candidates=("fused",), threads=t,
                           note=f"B1 with {t} thread{'s' if t > 1 else ''}"))
    out.append(Problem("T_load", **b1, group="T", candidates=("load",), kind="load",
                       note="B1 with 1 and 2 threads beside a busy process (pyrgd.bench.load)"))
    # M1: B1 on 2 ranks, each owning whole groups of 1024 neurons (tiny: n1 = 2048, two groups, not B1's 512)
    m1 = dict(b1, widths=(2048,) + tuple(b1["widths"][1:])) if tiny else b1
    out.append(Problem("M1", **m1, group="M1", candidates=("mpi",), kind="mpi",
                       note="B1 on mpiexec -n 2, 1 thread per rank (pyrgd.bench.mpi_run)"))
    return out + _train_problems(tiny, b1)


def _train_problems(tiny: bool, b1: dict) -> list[Problem]:
    """Group L: pyrgd.train with its defaults (see the module docstring); ``b1``: the B1 shapes of this size."""
    l1, l2 = (512, 1024) if tiny else (20000, 65536)
    common = dict(d=16, group="L", candidates=TRAIN_CANDIDATES, kind="train")
    return [
        Problem("L1", N=l1, widths=(l1, 8, 1), steps=20, **common,
                note="pyrgd.train defaults, 20 steps: peak memory, tracking's share of the wall time"),
        Problem("L2", N=l2, widths=(l2, 8, 1), steps=1, max_repeats=1, **common,
                note="pyrgd.train defaults, one step: peak memory, time against one bare engine step"),
        Problem("B1_track", **b1, group="L", candidates=TRAIN_CANDIDATES, kind="train", steps=200,
                note="pyrgd.train defaults on B1, 200 steps: wall time against the steps' time"),
    ]


def _gpu_problems(tiny: bool) -> list[Problem]:
    if tiny:
        g1 = dict(N=2048, d=32, widths=(2048, 32, 16, 4))
        g2 = dict(N=4096, d=32, widths=(4096, 16, 8, 1))
    else:
        g1 = dict(N=65536, d=256, widths=(65536, 128, 64, 10))
        g2 = dict(N=131072, d=256, widths=(131072, 64, 32, 1))
    return [
        Problem("G1", **g1, group="G1", candidates=GPU_CANDIDATES, device="cuda"),
        Problem("G2", **g2, group="G2", candidates=GPU_CANDIDATES, device="cuda", max_repeats=3,
                note="peak memory; an unfused step would need N x n1 matrices"),
    ]


def all_problems(device: str = "cpu", tiny: bool = False) -> list[Problem]:
    """Every problem of ``device`` ('cpu' or 'cuda'), in run order."""
    if device == "cpu":
        return _cpu_problems(tiny)
    if device == "cuda":
        return _gpu_problems(tiny)
    raise PyrgdError(f"device: expected 'cpu' or 'cuda', got {device!r}")


def default_selection(device: str) -> str:
    """What ``--problems`` runs when not given: every CPU problem (the float64 ones, group D, and M1 included) but the
    train problems (group L), every GPU problem."""
    return "B1,B2,D,B3,B4,T,M1" if device == "cpu" else "G1,G2"


def select_problems(selection: str | None, device: str = "cpu", tiny: bool = False) -> list[Problem]:
    """The problems named by a comma-separated selection of names and groups (None: the device's default)."""
    problems = all_problems(device, tiny)
    if selection is None or selection.strip() == "":
        selection = default_selection(device)
    wanted = [s.strip() for s in selection.split(",") if s.strip()]
    out: list[Problem] = []
    for w in wanted:
        hit = [p for p in problems if p.name.upper() == w.upper() or p.group.upper() == w.upper()]
        if not hit:
            names = ", ".join(sorted({p.group for p in problems} | {p.name for p in problems}))
            other = "cuda" if device == "cpu" else "cpu"
            hint = (f" ({w} is a {other} problem: pass --backend {'cuda' if other == 'cuda' else 'cpu'})"
                    if any(p.name.upper() == w.upper() or p.group.upper() == w.upper()
                           for p in all_problems(other, tiny)) else "")
            raise PyrgdError(f"--problems: unknown problem {w!r} for {device}; expected some of {names}{hint}")
        out += [p for p in hit if p not in out]
    return out


@dataclass
class ProblemData:
    """Host arrays of one problem: X, Y, the initial weights (never modified: candidates take copies)."""

    problem: Problem
    X: np.ndarray
    Y: np.ndarray
    W: list = field(default_factory=list)

    @property
    def dtype(self):
        return self.X.dtype


def problem_dtype(problem: Problem, default="float32") -> np.dtype:
    """The dtype a problem runs in: its own (``problem.dtype``), else ``default`` (the run's)."""
    return np.dtype(problem.dtype or default)


def make_data(problem: Problem, dtype="float32", seed: int = 0) -> ProblemData:
    """X with rows of norm about 1 (entries N(0, 1/d)), Y ~ N(0, 1), LeCun weights N(0, 1/n_{l-1}).

    ``dtype``: the arrays' dtype (a problem with a dtype of its own is drawn in that one, whatever ``dtype`` says).

    Drawn directly in ``dtype`` and scaled in place, so that making the data allocates nothing but the arrays (the
    memory measurement relies on that). The same seed gives the same arrays for every candidate.
    """
    dtype = problem_dtype(problem, dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise PyrgdError(f"dtype: expected float32 or float64, got {dtype}")
    rng = np.random.default_rng(seed)
    N, dims = problem.N, problem.dims
    X = rng.standard_normal((N, dims[0]), dtype=dtype)
    X *= dtype.type(1.0 / math.sqrt(dims[0]))
    Y = rng.standard_normal((N, dims[-1]), dtype=dtype)
    W = []
    for a, b in zip(dims, dims[1:]):
        w = rng.standard_normal((a, b), dtype=dtype)
        w *= dtype.type(1.0 / math.sqrt(a))
        W.append(w)
    return ProblemData(problem, X, Y, W)
