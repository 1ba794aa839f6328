"""The callback of :func:`pyrgd.train`: ``callback=fn`` is called after every GD step with that step's record.

The record of step k (the step from W_k to W_{k+1}) is a read-only mapping (:class:`types.MappingProxyType`) of
Python numbers: ``step`` (k), ``loss`` (Phi_k), ``factor`` (Phi_k / Phi_{k-1}), ``grad_norm_1`` ..
``grad_norm_L`` (||dPhi/dW_l||_F at W_k), ``time`` (seconds of GD steps so far), ``envelope``, as in the run's
history, and ``lr``. ``fn`` returning True, or raising :class:`StopTraining`, stops the run: the loss of W_{k+1}
is evaluated and recorded, and the run ends with status ``"stopped_by_callback"`` (run folder and checkpoint
written as for the other stops). Any other exception propagates out of :func:`pyrgd.train` unchanged.
"""
from __future__ import annotations

import types

__all__ = ["StopTraining", "step_record"]


class StopTraining(Exception):
    """Raise it in a :func:`pyrgd.train` callback to stop the run after the current step; its message (if any) is
    added to the run's message."""


def step_record(columns: dict, row: int, lr: float) -> types.MappingProxyType:
    """The read-only record of history row ``row`` (every column of ``columns``, a dict of lists) plus ``lr``."""
    rec = {key: col[row] for key, col in columns.items()}
    rec["lr"] = float(lr)
    return types.MappingProxyType(rec)
