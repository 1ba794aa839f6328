"""The certificate tracker of a GD run: every ``every`` steps, :func:`pyrgd.tracking.certificate` at the current
weights, and the PL-certified loss envelope that the certified factors imply (docs/theory.md section 4.1)."""
from __future__ import annotations

import math
import time

from .tracking import certificate


class Tracker:
    """Certificates along a run, as columns (``columns``: dict of lists; keys: step, the keys of
    :func:`pyrgd.tracking.certificate`, observed_factor, time).

    X, W (the engine's current weights, read at each certificate), W0 (the initial weights), act, mult, lr, backend:
    as :func:`pyrgd.tracking.certificate` takes them. every: steps between certificates (0: never).
    ``certified``: the latest certified factor in [0, 1) (nan when none); ``envelope``: the loss envelope
    Phi_0 prod_k certified_k; ``seconds``: time spent in certificates.
    """

    def __init__(self, X, W, W0, act, mult, lr, backend, every: int):
        self.X, self.W, self.W0, self.act, self.mult, self.lr, self.backend = X, W, W0, act, mult, lr, backend
        self.every = int(every)
        self.columns: dict[str, list] = {}
        self.certified = float("nan")
        self.envelope = float("nan")
        self.seconds = 0.0

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

    def due(self, k: int, loss: float) -> bool:
        return bool(self.every) and k % self.every == 0 and math.isfinite(loss)

    def record(self, k: int) -> dict:
        """Take the certificate of step k; returns its row. At k = 0 without a certified factor the envelope
        becomes unknown (nan)."""
        t0 = time.perf_counter()
        row = certificate(self.X, self.W, self.W0, self.act, self.mult, self.lr, self.backend)
        self.seconds += time.perf_counter() - t0
        # observed_factor: Phi_{k+1}/Phi_k, the step this certificate bounds; filled in by observe()
        row = {"step": k, **row, "observed_factor": float("nan"), "time": self.seconds}
        for key, val in row.items():
            self.columns.setdefault(key, []).append(val)
        cf = row["certified_factor"]
        self.certified = cf if (math.isfinite(cf) and 0.0 <= cf < 1.0) else float("nan")
        if k == 0 and not math.isfinite(self.certified):
            self.envelope = float("nan")
        return row
