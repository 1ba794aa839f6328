"""The per-step record of a GD run: :class:`History`, whose columns become the run folder's history.csv."""
from __future__ import annotations

import math


class History:
    """Columns of equal length, one row per evaluated step k = 0..K (``columns``, a dict of lists):

    step, loss (Phi_k), factor (Phi_k / Phi_{k-1}, nan at k = 0 or where Phi_{k-1} <= 0), grad_norm_1..grad_norm_L
    (||dPhi/dW_l||_F at step k, from the update that followed it; nan at the last row when none followed), time
    (cumulative seconds of GD steps), envelope (the PL-certified loss envelope, nan where unknown).
    """

    def __init__(self, L: int):
        self.L = int(L)
        self.columns = {"step": [], "loss": [], "factor": []}
        for l in range(1, self.L + 1):
            self.columns[f"grad_norm_{l}"] = []
        self.columns["time"] = []
        self.columns["envelope"] = []

    def __len__(self) -> int:
        return len(self.columns["loss"])

    @property
    def last_loss(self) -> float:
        return self.columns["loss"][-1] if self.columns["loss"] else float("nan")

    def add(self, k: int, loss: float, step_time: float, envelope: float) -> float:
        """Append the row of step k (its grad norms come with :meth:`add_grad_sq`); returns its factor."""
        prev = self.last_loss
        factor = loss / prev if len(self) and prev > 0 else float("nan")
        c = self.columns
        c["step"].append(k)
        c["loss"].append(loss)
        c["factor"].append(factor)
        c["time"].append(step_time)
        c["envelope"].append(envelope)
        return factor

    def set_envelope(self, value: float) -> None:
        """Replace the envelope of the last row."""
        self.columns["envelope"][-1] = value

    def add_grad_sq(self, grad_sq) -> None:
        """The squared gradient norms of the update that followed the last row (one per layer)."""
        for l, sq in enumerate(grad_sq, start=1):
            self.columns[f"grad_norm_{l}"].append(math.sqrt(sq))

    def close(self) -> None:
        """No update follows the last row: pad its gradient norms with nan."""
        for l in range(1, self.L + 1):
            self.columns[f"grad_norm_{l}"].append(float("nan"))

    def repair(self) -> None:
        """After an interruption at any point, even inside :meth:`add`: keep the complete rows (every column of the
        same length, the rows all of whose columns were appended; the missing gradient norms nan)."""
        n = min(len(v) for k, v in self.columns.items() if not k.startswith("grad_norm_"))
        for key in list(self.columns):
            del self.columns[key][n:]
        for l in range(1, self.L + 1):
            col = self.columns[f"grad_norm_{l}"]
            col += [float("nan")] * (n - len(col))
