"""Full-batch gradient descent with a constant step size, one :class:`pyrgd.gdstep.GDStep` per step.

On the cpu backend one C++ pass over panels of rows gives the loss and every gradient (each product of the wide
layer once per step); on cuda (and the reference) ``ops.wide_step`` applies step k to W_1, W_2 and, in the same
pass over the neurons, accumulates H = Z_2 of step k+1, and the tail (layers 2..L) is a few small products.
"""
from __future__ import annotations

import math
import platform
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import ops
from ._threads import thread_limits
from ._validate import array_module, check_float_array, check_nonnegative_int, check_scalar
from .errors import PyrgdError
from .gdstep import GDStep
from .model import PyramidalNet
from .tail import tail_backward, tail_forward
from .tracking import certificate

STATUSES = ("converged", "max_steps", "diverged", "time_budget", "interrupted")

#: ``lr="auto"`` takes this fraction of 1/lambda_max(NTK at init). GD on the linearized model is stable below
#: 2/lambda_max; the NTK's top eigenvalue often grows by 2x or more early in training ("progressive sharpening"),
#: and 1/lambda_max was seen to catapult or diverge, so the rule keeps a factor 4 from the linear stability edge.
AUTO_LR_FRACTION = 0.5
#: how ``lr="auto"`` chooses the step size (also stored in the summary)
AUTO_LR_RULE = ("0.5/lambda_max of the empirical NTK J J^T at initialization (power iteration with central "
                "differences)")


@dataclass
class TrainResult:
    """What :func:`train` returns.

    status: one of STATUSES; message: why it stopped, in one sentence.
    history: per evaluated step k = 0..K, lists of equal length: step, loss (Phi_k), factor (Phi_k/Phi_{k-1}, nan at
      k = 0), grad_norm_1..grad_norm_L (||dPhi/dW_l||_F at step k, nan at the last k when no step followed),
      time (cumulative seconds of GD steps), envelope (the PL-certified loss envelope, nan where unknown).
    certificates: every track_every steps, see :mod:`pyrgd.tracking` (plus step, time and observed_factor:
      Phi_{k+1}/Phi_k, the factor of the step the certificate at step k bounds; nan when no step followed).
    summary: scalars describing the run (JSON-friendly). net: the trained network (the same object as passed in).
    """

    status: str
    message: str
    history: dict = field(default_factory=dict)
    certificates: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    net: PyramidalNet | None = None
    lr: float = float("nan")

    @property
    def converged(self) -> bool:
        return self.status == "converged"


class _StopFlag:
    """Turns Ctrl-C into a flag checked between steps, so that a step is never left half applied."""

    def __init__(self):
        self.set = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.set:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


def _xp_of(backend):
    if backend == "cuda":
        try:
            import cupy
        except ImportError:
            ops.get_backend("cuda")  # raises BackendUnavailable with the install hint
        return cupy
    return np


def _to_host(a):
    return a if isinstance(a, np.ndarray) else a.get()


def _full_forward(X, W, act, mult, backend):
    H = ops.wide_forward(X, W[0], W[1], activation=act, a1=mult[0], backend=backend)
    return tail_forward(H, W, act, mult)


def estimate_lambda_max(X, weights, act, multipliers, backend, iters=20, seed=0) -> float:
    """Largest eigenvalue of the empirical NTK J J^T (J = dF_L/dtheta, all layers) by power iteration.

    J^T u is one backward pass (the wide layer's step with G seeded by u, applied to a copy with lr = -1); J v is a
    central difference of two forward passes. Runs in float64 whatever the network's dtype.
    """
    xp = np if isinstance(X, np.ndarray) else __import__("cupy")
    X = X.astype(xp.float64)
    W = [w.astype(xp.float64) for w in weights]
    cache = _full_forward(X, W, act, multipliers, backend)
    F = cache[-1]
    rng = np.random.default_rng(seed)
    u = xp.asarray(rng.standard_normal(F.shape))
    u /= xp.linalg.norm(u)
    lam = 0.0
    theta_norm = math.sqrt(sum(float((w * w).sum()) for w in W))
    for _ in range(iters):
        _, G, tail_grads = tail_backward(cache, F - u, W, act, multipliers)  # D_L = u
        W1, W2 = W[0].copy(), W[1].copy()
        ops.wide_step(X, W1, W2, G, -1.0, activation=act, a1=multipliers[0], backend=backend)
        v = [W1 - W[0], W2 - W[1]] + list(tail_grads)  # v = J^T u
        vnorm = math.sqrt(sum(float((a * a).sum()) for a in v))
        if vnorm == 0.0:
            return 0.0
        eps = 1e-6 * max(theta_norm, 1.0) / vnorm
        Fp = _full_forward(X, [w + eps * a for w, a in zip(W, v)], act, multipliers, backend)[-1]
        Fm = _full_forward(X, [w - eps * a for w, a in zip(W, v)], act, multipliers, backend)[-1]
        Ju = (Fp - Fm) / (2 * eps)  # J J^T u
        lam = float((u * Ju).sum())
        n = float(xp.linalg.norm(Ju))
        if n == 0.0:
            return 0.0
        u = Ju / n
    return lam


def _versions(backend):
    from . import __version__

    v = {"pyrgd": __version__, "python": platform.python_version(), "numpy": np.__version__}
    if backend == "cuda":
        import cupy

        v["cupy"] = cupy.__version__
    return v


def train(net: PyramidalNet, X, Y, lr="auto", steps=1000, backend="auto", tol=0.0, rel_tol=0.0, track_every=100,
          time_budget=None, divergence_factor=1e6, progress=True, out=None, config=None,
          threads=None, method="auto") -> TrainResult:
    """Train ``net`` in place by full-batch gradient descent on Phi = 1/2 ||F_L(X) - Y||_F^2 with a constant step.

    Parameters
    ----------
    net : PyramidalNet
    X, Y : arrays (N, d) and (N, n_L) of the net's dtype (NumPy; with backend='cuda' they are moved to the GPU).
    lr : float or "auto"
        The constant step size; "auto" chooses it once at the start by AUTO_LR_RULE: lr = 0.5/lambda_max.
    steps : int, the most GD steps.
    backend : "auto" | "cpu" | "reference" | "cuda".
    tol, rel_tol : stop as "converged" when Phi_k <= tol or Phi_k <= rel_tol * Phi_0.
    track_every : int, compute the certificates every this many steps (0: never).
    time_budget : seconds of wall-clock time (None or 0: no budget); the run stops with status "time_budget".
    divergence_factor : stop as "diverged" when Phi_k > divergence_factor * Phi_0 or Phi_k is not finite.
    progress : show a progress bar (tqdm, on stderr) with the step, the loss and the contraction factor.
    out : run folder to write (history, certificates, summary, weights, plot) when the run ends, however it ends.
    config : the resolved configuration to store in the run folder.
    threads : CPU threads of the C++ kernels and of the BLAS for this run (None or 0: as they are); both are
        restored when it returns. The cpu backend's results are the same bits for any number of threads.
    method : "auto" | "rows" | "neurons", the GD step of :class:`pyrgd.gdstep.GDStep`: "auto" the faster one for the
        shapes (rows on the cpu backend where it keeps at least half the neurons in its panels), "rows" (cpu only),
        "neurons" the memory-lean one (no gradient arrays of the wide layer). Every method computes the same step.
    """
    if not isinstance(net, PyramidalNet):
        raise PyrgdError(f"net: expected a pyrgd.PyramidalNet, got {type(net).__name__}")
    steps = check_nonnegative_int("steps", steps)
    track_every = check_nonnegative_int("track_every", track_every)
    tol = check_scalar("tol", tol, nonnegative=True)
    rel_tol = check_scalar("rel_tol", rel_tol, nonnegative=True)
    divergence_factor = check_scalar("divergence_factor", divergence_factor, positive=True)
    from .gdstep import METHODS

    if method not in METHODS:
        raise PyrgdError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    if time_budget is not None:
        time_budget = check_scalar("time_budget", time_budget, nonnegative=True) or None
    if threads is not None:
        threads = check_nonnegative_int("threads", threads) or None
        with thread_limits(threads):
            return train(net, X, Y, lr=lr, steps=steps, backend=backend, tol=tol, rel_tol=rel_tol,
                         track_every=track_every, time_budget=time_budget, divergence_factor=divergence_factor,
                         progress=progress, out=out, config=config, method=method)
    if not (isinstance(lr, str) and lr == "auto"):
        if isinstance(lr, str):
            raise PyrgdError(f"lr: expected a positive number or 'auto', got {lr!r}")
        lr = check_scalar("lr", lr, positive=True)
    X_host = check_float_array("X", X, 2, dtype=net.dtype, shape=(None, net.d))
    N = X_host.shape[0]
    Y_host = check_float_array("Y", Y, 2, dtype=net.dtype, shape=(N, net.widths[-1]), xp=array_module(X_host))
    on_gpu = not isinstance(X_host, np.ndarray)
    if backend != "cuda":  # 'auto' follows the arrays; 'cpu'/'reference' take CuPy inputs to the host
        backend = ops.resolve_backend(backend, __import__("cupy") if on_gpu and backend == "auto" else np)
        if on_gpu and backend != "cuda":
            X_host, Y_host = X_host.get(), Y_host.get()
    ops.get_backend(backend)  # fails early, with the install hint, when the backend is missing
    xp = _xp_of(backend)
    net.warn_if_narrow(N)

    act, mult = net.activation, net.multipliers
    Xd, Yd = xp.asarray(X_host), xp.asarray(Y_host)
    W = [xp.ascontiguousarray(xp.asarray(w)) for w in net.weights]
    W0 = [w.copy() for w in W]
    L = net.L

    t_start = time.perf_counter()
    lr_rule = "given"
    if lr == "auto":
        lam = estimate_lambda_max(Xd, W, act, mult, backend)
        if not (lam > 0 and math.isfinite(lam)):
            raise PyrgdError("lr: 'auto' could not estimate the curvature (lambda_max of the NTK is "
                             f"{lam!r}); give lr explicitly")
        lr = AUTO_LR_FRACTION / lam
        lr_rule = AUTO_LR_RULE
    t_lr = time.perf_counter() - t_start

    hist = {"step": [], "loss": [], "factor": []}
    for l in range(1, L + 1):
        hist[f"grad_norm_{l}"] = []
    hist["time"] = []
    hist["envelope"] = []
    certs: dict[str, list] = {}

    step_time = track_time = 0.0
    status, message = "max_steps", f"reached the step budget of {steps} steps"
    phi0 = None
    certified = float("nan")  # latest certified factor
    envelope = float("nan")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, file=sys.stderr, desc="GD", unit="step", dynamic_ncols=True, mininterval=0.25,
                   leave=True)
    last_post = 0.0
    gd_method, gd_kept = method, None  # what GDStep resolves them to, once it is built

    def record_cert(k):
        nonlocal track_time, certified
        t0 = time.perf_counter()
        row = certificate(Xd, W, W0, act, mult, lr, backend)
        track_time += time.perf_counter() - t0
        # observed_factor: Phi_{k+1}/Phi_k, the step this certificate bounds; filled in when Phi_{k+1} is known
        row = {"step": k, **row, "observed_factor": float("nan"), "time": track_time}
        for key, val in row.items():
            certs.setdefault(key, []).append(val)
        cf = row["certified_factor"]
        certified = cf if (math.isfinite(cf) and 0.0 <= cf < 1.0) else float("nan")

    try:
        with _StopFlag() as stop, warnings.catch_warnings():
            gd = GDStep(Xd, Yd, W, act, mult, backend, method=method)
            gd_method, gd_kept = gd.method, gd.kept
            k = 0
            while True:
                t0 = time.perf_counter()
                loss = gd.evaluate()
                step_time += time.perf_counter() - t0
                if phi0 is None:
                    phi0 = loss
                    envelope = loss
                prev = hist["loss"][-1] if hist["loss"] else float("nan")
                factor = loss / prev if hist["loss"] and prev > 0 else float("nan")
                hist["step"].append(k)
                hist["loss"].append(loss)
                hist["factor"].append(factor)
                hist["time"].append(step_time)
                if k > 0:
                    envelope = envelope * certified
                hist["envelope"].append(envelope)
                if certs and certs["step"][-1] == k - 1:
                    certs["observed_factor"][-1] = factor
                if track_every and k % track_every == 0 and math.isfinite(loss):
                    record_cert(k)
                    if k == 0 and not math.isfinite(certified):
                        envelope = float("nan")
                        hist["envelope"][-1] = envelope
                # stop rules, checked on the loss of the current weights
                if not math.isfinite(loss) or loss > divergence_factor * phi0:
                    status = "diverged"
                    message = (f"the loss became {loss:.3e} at step {k} (start {phi0:.3e}); try a smaller lr"
                               if math.isfinite(loss) else f"the loss became {loss} at step {k}; try a smaller lr")
                elif loss <= tol or loss <= rel_tol * phi0:
                    status = "converged"
                    message = (f"the loss fell to {loss:.3e} at step {k}, "
                               f"{loss / phi0 if phi0 > 0 else 0.0:.2e} of its start")
                elif k >= steps:
                    status, message = "max_steps", f"reached the step budget of {steps} steps"
                elif stop.set:
                    status, message = "interrupted", f"interrupted (Ctrl-C) after {k} steps"
                elif time_budget is not None and time.perf_counter() - t_start > time_budget:
                    status, message = "time_budget", f"reached the time budget of {time_budget:g} s after {k} steps"
                else:
                    status = None
                if status is not None:
                    for l in range(1, L + 1):
                        hist[f"grad_norm_{l}"].append(float("nan"))
                    break
                # one GD step (pyrgd.gdstep: on the cpu backend every gradient came from the one pass of evaluate)
                t0 = time.perf_counter()
                grad_sq = gd.update(lr)
                for l, sq in enumerate(grad_sq, start=1):
                    hist[f"grad_norm_{l}"].append(math.sqrt(sq))
                step_time += time.perf_counter() - t0
                k += 1
                if bar is not None:
                    bar.update(1)
                    now = time.perf_counter()
                    if now - last_post > 0.25:
                        bar.set_postfix(loss=f"{loss:.3e}", factor=f"{factor:.6f}", refresh=False)
                        last_post = now
    except KeyboardInterrupt:  # a second Ctrl-C, or not in the main thread: the last full step is kept
        status, message = "interrupted", f"interrupted (Ctrl-C) after {len(hist['loss']) - 1} steps"
        n = len(hist["loss"])
        for key in list(hist):
            del hist[key][n:]
        for l in range(1, L + 1):
            col = hist[f"grad_norm_{l}"]
            col += [float("nan")] * (n - len(col))
    finally:
        if bar is not None:
            if hist["loss"]:
                bar.set_postfix(loss=f"{hist['loss'][-1]:.3e}", refresh=False)
            bar.close()

    net.weights = [np.ascontiguousarray(_to_host(w)) for w in W]
    wall = time.perf_counter() - t_start
    factors = [f for f in hist["factor"] if math.isfinite(f)]
    summary = {
        "status": status,
        "message": message,
        "steps": len(hist["loss"]) - 1,
        "initial_loss": hist["loss"][0] if hist["loss"] else None,
        "final_loss": hist["loss"][-1] if hist["loss"] else None,
        "relative_loss": (hist["loss"][-1] / hist["loss"][0]) if hist["loss"] and hist["loss"][0] > 0 else None,
        "median_factor": float(np.median(factors)) if factors else None,
        "wall_time_s": wall,
        "step_time_s": step_time,
        "tracking_time_s": track_time,
        "lr_time_s": t_lr,
        "backend": backend,
        "method": gd_method,
        "kept_neurons": gd_kept,
        "dtype": net.dtype.name,
        "lr": lr,
        "lr_rule": lr_rule,
        "N": N,
        "d": net.d,
        "widths": list(net.widths),
        "activation": str(net.activation),
        "init": net.init,
        "seed": net.seed,
        "versions": _versions(backend),
    }
    if backend == "cpu":
        from .backends import cpu

        summary["threads"] = cpu.get_num_threads()
    result = TrainResult(status, message, hist, certs, summary, net, lr)
    if out is not None:
        from .runio import write_run

        write_run(out, result, config)
    return result
