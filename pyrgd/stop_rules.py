"""When a GD run stops, and why: :class:`StopRules` checks the loss of the current weights after each evaluation."""
from __future__ import annotations

import math
from dataclasses import dataclass

#: every status a run can end with
STATUSES = ("converged", "max_steps", "diverged", "time_budget", "interrupted", "terminated", "stopped_by_callback")


@dataclass(frozen=True)
class StopRules:
    """The stop rules of :func:`pyrgd.train`, in the order they are checked.

    diverged: Phi_k not finite or Phi_k > divergence_factor * Phi_0; converged: Phi_k <= tol or Phi_k <= rel_tol *
    Phi_0; max_steps: k >= steps; interrupted / terminated: a stop was asked for (Ctrl-C / SIGTERM, the run's
    checkpoint then lets it resume); stopped_by_callback: the run's callback asked to stop (it returned True or
    raised :class:`pyrgd.StopTraining` after the step before); time_budget: more than
    ``time_budget`` seconds (None: no budget) have passed since the run started.
    """

    steps: int
    tol: float = 0.0
    rel_tol: float = 0.0
    divergence_factor: float = 1e6
    time_budget: float | None = None

    def check(self, k: int, loss: float, phi0: float, interrupted=False,
              elapsed: float = 0.0, callback=None) -> tuple[str, str] | None:
        """(status, a one-sentence message) when the run stops at step k with loss Phi_k = ``loss``, else None.

        phi0: the loss at step 0; elapsed: seconds since the run started; interrupted: False, True or the signal's
        name ('SIGINT', 'SIGTERM'); callback: None, or the reason the callback asked to stop (a string, possibly
        empty)."""
        if not math.isfinite(loss) or loss > self.divergence_factor * phi0:
            return "diverged", (f"the loss became {loss:.3e} at step {k} (start {phi0:.3e}); try a smaller lr"
                                if math.isfinite(loss) else f"the loss became {loss} at step {k}; try a smaller lr")
        if loss <= self.tol or loss <= self.rel_tol * phi0:
            return "converged", (f"the loss fell to {loss:.3e} at step {k}, "
                                 f"{loss / phi0 if phi0 > 0 else 0.0:.2e} of its start")
        if k >= self.steps:
            return "max_steps", f"reached the step budget of {self.steps} steps"
        if interrupted == "SIGTERM":
            return "terminated", f"terminated (SIGTERM) after {k} steps"
        if interrupted:
            return "interrupted", f"interrupted (Ctrl-C) after {k} steps"
        if callback is not None:
            return "stopped_by_callback", f"stopped by the callback after {k} steps" + (f": {callback}" if callback
                                                                                          else "")
        if self.time_budget is not None and elapsed > self.time_budget:
            return "time_budget", f"reached the time budget of {self.time_budget:g} s after {k} steps"
        return None
