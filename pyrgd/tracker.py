"""The certificate tracker of a GD run: certificates at the current weights (:func:`pyrgd.tracking.certificate`)
and the PL-certified loss envelope the certified factors imply (docs/theory.md section 4.1), within a budget.

Frequency: every ``every`` steps, or ``every="auto"``: a certificate is taken only when the time spent on
certificates, this one included (predicted from the last one's measured cost, or before any from its flops and
the rate the steps achieved), stays within ``fraction`` of the time of the steps so far. Route (how lambda_min of
the wide layer's Gram F_1 F_1^T is obtained, :mod:`pyrgd.spectrum`): 'exact' (the N x N Gram and eigvalsh; a
certificate), 'certified' (a Cholesky test of the float64 Gram: a certified lower bound, cheaper than eigvalsh) or
'estimate' (matrix-free LOBPCG, warm-started from the previous certificate: an upper estimate of
lambda_min, so the PL constant it gives is an estimate and no factor is certified from it).
"""
from __future__ import annotations

import math
import time

import numpy as np

from . import spectrum
from .tracking import certificate

#: the fewest LOBPCG iterations worth a certificate on the estimate route
MIN_ESTIMATE_ITERS = 3


class Tracker:
    """Certificates along a run, as columns (``columns``: dict of lists; keys: step, the keys of
    :func:`pyrgd.tracking.certificate`, route, lambda_min_residual, observed_factor, time).

    X, W (the engine's current weights, read at each certificate), W0 (the initial weights), act, mult, lr,
    backend: as :func:`pyrgd.tracking.certificate` takes them. every: steps between certificates (0: never) or
    'auto'; route: 'exact' or 'estimate'; step_flops: flops of one GD step (for the 'auto' prediction); block: the
    estimate route's LOBPCG vectors; block_bytes: the bytes of its blocks of neurons.
    ``certified``: the latest certified factor in [0, 1) (nan when none); ``envelope``: the loss envelope
    Phi_j prod certified, from the first certified step j on; ``seconds``: time spent in certificates.
    """

    def __init__(self, X, W, W0, act, mult, lr, backend, every=100, route="exact", step_flops=None,
                 fraction=0.1, block=16, block_bytes=spectrum.BLOCK_BYTES):
        self.X, self.W, self.W0, self.act, self.mult, self.lr, self.backend = X, W, W0, act, mult, lr, backend
        self.every = every if every == "auto" else int(every)
        self.route = route
        self.step_flops = step_flops
        self.fraction = float(fraction)
        self.block = int(block)  # LOBPCG vectors of the estimate route
        self.block_bytes = int(block_bytes)  # and the bytes of its blocks of neurons
        self.columns: dict[str, list] = {}
        self.certified = float("nan")
        self.envelope = float("nan")
        self.seconds = 0.0
        self._last_cost = None  # seconds of the last certificate (exact) or of one K V product (estimate)
        self._start = None  # (k, snapshot, estimator block) as step k began: what a checkpoint of step k holds
        self._estimator = None
        self._iters = None  # LOBPCG iterations the next estimate may run

    def start(self, phi0: float) -> None:
        """The envelope starts at the loss of step 0."""
        self.envelope = phi0

    def advance(self) -> float:
        """The envelope of the next step: times the latest certified factor. Returns it."""
        self.envelope = self.envelope * self.certified
        return self.envelope

    def observe(self, k: int, factor: float) -> None:
        """Phi_k / Phi_{k-1} is known: it is the observed factor of a certificate taken at step k - 1."""
        c = self.columns
        if c and c["step"][-1] == k - 1:
            c["observed_factor"][-1] = factor

    # -------------------------------------------------------------------------------------------- the budget
    def _predicted_cost(self, rate) -> float | None:
        """Seconds one certificate (exact) or one K V product (estimate) is predicted to take."""
        if self._last_cost is not None:
            return self._last_cost
        if rate is None or not rate > 0:
            return None
        N, d = self.X.shape
        n1 = self.W[0].shape[1]
        if self.route == "exact":  # the Gram (N^2 n1 flops) and eigvalsh in float64, counted at a tenth the rate
            return (N * N * n1 + 10 * 10 * N ** 3) / rate
        if self.route == "certified":  # the float64 Gram, Cholesky (N^3 / 3) and 10 products, at a tenth the rate
            return 10 * (N * N * n1 + N ** 3 / 3 + 10 * 2 * N * n1 * (d + 2 * self.block)) / rate
        k = self.block
        # BLAS products at a quarter the rate, and the activation in NumPy at about 100 flops' worth per element
        return (4 * 2 * N * n1 * (d + 2 * k) + 100 * N * n1) / rate

    def due(self, k: int, loss: float, step_seconds: float = 0.0, steps_done: int = 0) -> bool:
        """Whether a certificate is taken at step k (after the steps_done steps of step_seconds in all)."""
        if not math.isfinite(loss) or self.every == 0:
            return False
        if self.every != "auto":
            return k % self.every == 0
        rate = self.step_flops * steps_done / step_seconds if (self.step_flops and step_seconds > 0) else None
        cost = self._predicted_cost(rate)
        if cost is None:
            return False
        if self._last_cost is None:
            cost *= 2  # a prediction from flops alone: leave room for its error until one cost is measured
        room = self.fraction * step_seconds - self.seconds
        if self.route in ("exact", "certified"):
            return cost <= room
        iters = int(room / cost) - 2  # two more products: the start block and the residual
        if iters < MIN_ESTIMATE_ITERS:
            return False
        # until one cost is measured, the fewest iterations: a prediction from flops was seen 2x off on B1 (the
        # certificate's fixed part, the tail's norms and sigma_min, is not in it), and the overrun is the budget's
        self._iters = MIN_ESTIMATE_ITERS if self._last_cost is None else min(iters, 50)
        return True

    # --------------------------------------------------------------------------------------- a certificate
    def begin(self, k: int) -> None:
        """Step k begins (before its loss is evaluated): keep the running values, which a checkpoint taken at step k
        (before its update, where a run stops) must hold rather than those step k then changes."""
        self._start = (k, self.snapshot(), self.estimator_block())

    def state_for(self, s: int) -> tuple:
        """(snapshot, estimator block) of a checkpoint at step s: as step s began when it has begun, else now."""
        if self._start is not None and self._start[0] == s:
            return self._start[1], self._start[2]
        return self.snapshot(), self.estimator_block()

    def record(self, k: int, loss: float = float("nan")) -> dict:
        """Take the certificate of step k (Phi_k = ``loss``); returns its row. The envelope starts at Phi_k at the
        first certified factor; at k = 0 without one it is unknown (nan)."""
        if self._start is not None and self._start[0] == k and self._start[2] is not None:
            self._start = (k, self._start[1], self._start[2].copy())  # the estimate below may work on it in place
        t0 = time.perf_counter()
        if self.route == "exact":
            row = certificate(self.X, self.W, self.W0, self.act, self.mult, self.lr, self.backend)
            extra = {"route": "exact", "lambda_min_residual": 0.0}
        elif self.route == "certified":
            row, extra, products = self._certified_row(), {"route": "certified", "lambda_min_residual": 0.0}, 1
        else:
            if self._estimator is None:
                self._estimator = spectrum.LambdaMinEstimator(self.X.shape[0], k=self.block,
                                                             block_bytes=self.block_bytes)
            before = self._estimator.products
            est = self._estimator.estimate(self.X, self.W[0], self.act, self.mult[0],
                                           iters=self._iters if self._iters is not None else 20)
            products = max(1, self._estimator.products - before)
            row = certificate(self.X, self.W, self.W0, self.act, self.mult, self.lr, self.backend,
                              lambda_min=est["lambda_min"])
            row["certified_factor"] = float("nan")  # an upper estimate of lambda_min certifies nothing
            extra = {"route": "estimate", "lambda_min_residual": est["residual"]}
        cost = time.perf_counter() - t0
        self.seconds += cost
        self._last_cost = cost / products if self.route == "estimate" else cost
        # observed_factor: Phi_{k+1}/Phi_k, the step this certificate bounds; filled in by observe()
        row = {"step": k, **row, **extra, "observed_factor": float("nan"), "time": self.seconds}
        for key, val in row.items():
            self.columns.setdefault(key, []).append(val)
        cf = row["certified_factor"]
        self.certified = cf if (math.isfinite(cf) and 0.0 <= cf < 1.0) else float("nan")
        if k == 0 and not math.isfinite(self.certified):
            self.envelope = float("nan")
        elif k > 0 and math.isfinite(self.certified) and not math.isfinite(self.envelope) and math.isfinite(loss):
            self.envelope = loss  # the envelope starts at the first certified step
        return row

    def repair(self) -> None:
        """After an interruption at any point, even inside :meth:`record`: keep the complete rows (the columns cut
        to the shortest)."""
        if self.columns:
            n = min(len(v) for v in self.columns.values())
            for v in self.columns.values():
                del v[n:]

    def _certified_row(self) -> dict:
        """A certificate from a certified lower bound of lambda_min (:func:`pyrgd.spectrum.certified_lower_bound`):
        the Cholesky test of K - t I at t = half the matrix-free estimate (the previous bound's estimate after the
        first), halved up to 4 times until it succeeds; 0 (nothing certified) when none does."""
        if self._estimator is None:
            self._estimator = spectrum.LambdaMinEstimator(self.X.shape[0], k=self.block, block_bytes=self.block_bytes)
        upper = self._estimator.estimate(self.X, self.W[0], self.act, self.mult[0], iters=10)["lambda_min"]
        t, bound = 0.5 * upper, None
        for _ in range(5):
            if not t > 0:
                break
            bound = spectrum.certified_lower_bound(self.X, self.W[0], self.act, self.mult[0], t, self.block_bytes)
            if bound is not None:
                break
            t *= 0.5
        return certificate(self.X, self.W, self.W0, self.act, self.mult, self.lr, self.backend,
                           lambda_min=bound if bound is not None else 0.0)

    def snapshot(self) -> dict:
        """The running values a checkpoint keeps (JSON-friendly)."""
        return {"certified": self.certified, "envelope": self.envelope, "seconds": self.seconds,
                "last_cost": self._last_cost}

    def estimator_block(self):
        """The matrix-free estimate's current block of vectors (N x k float64), or None: a resumed run warm-starts
        from it, as the uninterrupted run would."""
        return None if self._estimator is None else self._estimator._V

    def restore(self, snap: dict, columns: dict, block=None) -> None:
        """Put back a :meth:`snapshot`, the certificate columns of a checkpoint (JSON nulls read as nan) and the
        estimate's block of vectors (:meth:`estimator_block`)."""
        if block is not None:
            self._estimator = spectrum.LambdaMinEstimator(self.X.shape[0], k=block.shape[1],
                                                          block_bytes=self.block_bytes)
            self._estimator._V = np.array(block, dtype=np.float64)
        nan = float("nan")
        self.certified = nan if snap.get("certified") is None else float(snap["certified"])
        self.envelope = nan if snap.get("envelope") is None else float(snap["envelope"])
        self.seconds = float(snap.get("seconds") or 0.0)
        self._last_cost = snap.get("last_cost")
        self.columns = {k: [nan if v is None else v for v in col] for k, col in columns.items()}
        if "step" in self.columns:
            self.columns["step"] = [int(v) for v in self.columns["step"]]

    def describe(self) -> dict:
        """How the tracked quantities were obtained (for the run's summary)."""
        how = {"exact": "sigma_min(F_1) from the N x N Gram F_1 F_1^T (streamed kernel) and eigvalsh: the PL "
                        "constant and the certified factor 1 - lr mu are certificates",
               "certified": "sigma_min(F_1) from a certified lower bound of lambda_min(F_1 F_1^T) (a Cholesky test "
                            "of F_1 F_1^T - t I in float64 with a rounding margin): mu and 1 - lr mu are certificates",
               "estimate": "sigma_min(F_1) from a matrix-free LOBPCG estimate of lambda_min(F_1 F_1^T) (an upper "
                           "estimate, warm-started; residual in lambda_min_residual): mu is an estimate and no "
                           "factor is certified"}
        return {"every": self.every, "route": self.route, "budget_fraction": self.fraction,
                "certificates": len(self.columns.get("step", [])), "seconds": self.seconds,
                "how": how.get(self.route, "")}
