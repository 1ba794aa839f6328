"""The run folder: what a training run leaves on disk, written atomically.

``write_run(out, result, config)`` writes into the folder ``out`` (created with its parents):

=================  ==========================================================================================
config.toml        the resolved config (when given), readable by :func:`pyrgd.config.load_config`
history.csv        one row per GD step; the columns are the keys of ``result.history`` (step, loss, factor, ...)
certificates.csv   one row per certificate evaluation (when there are any); the keys of ``result.certificates``
summary.json       ``result.summary``, JSON-safe (NaN and infinities become null, NumPy values plain numbers)
weights.npz        the trained network (:meth:`pyrgd.model.PyramidalNet.save`)
loss.png           the loss on a log scale against the step, the PL-certified envelope dashed, and the observed
                   and certified contraction factors in a second panel
=================  ==========================================================================================

Every file goes to a temporary file in the same folder first and then replaces its target with ``os.replace``: a
crash leaves either the earlier good file or the new complete one, never a half-written file.
"""
from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
import warnings

import numpy as np

from ._atomic import atomic_write  # noqa: F401  (part of this module's API)
from .errors import PyrgdError

__all__ = ["write_run", "write_config", "read_history", "read_certificates", "read_summary", "atomic_write", "json_safe",
           "RUN_FILES"]

#: the files of a complete run folder (certificates.csv and config.toml are optional)
RUN_FILES = ("config.toml", "history.csv", "certificates.csv", "summary.json", "weights.npz", "loss.png")


# --------------------------------------------------------------------------------------------- JSON and CSV values
def json_safe(obj):
    """A copy of ``obj`` that json.dumps(allow_nan=False) accepts: NaN/inf -> None, NumPy -> Python, tuples -> lists."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    return str(obj)


def _cell(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(int(v))
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        return repr(float(v))  # shortest text that reads back to the same double; nan, inf as such
    if v is None:
        return "nan"
    return str(v)


def _parse_cell(s: str):
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        return s


def _columns(table, name) -> tuple[list[str], int]:
    if not isinstance(table, dict):
        raise PyrgdError(f"result.{name}: expected a dict of equal-length lists, got {type(table).__name__}")
    keys = [str(k) for k in table]
    lengths = {k: len(v) for k, v in table.items()}
    if len(set(lengths.values())) > 1:
        raise PyrgdError(f"result.{name}: columns of unequal length {lengths}")
    return keys, (next(iter(lengths.values())) if lengths else 0)


def _write_csv(path, table, name):
    keys, n = _columns(table, name)
    cols = list(table.values())

    def write(f):
        w = csv.writer(f, lineterminator="\n")
        w.writerow(keys)
        for i in range(n):
            w.writerow([_cell(c[i]) for c in cols])

    atomic_write(path, write)


def read_csv_table(path) -> tuple[list, list]:
    """(header, rows) of a CSV file as strings, every row as long as the header; ([], []) for an empty file.
    PyrgdError (naming ``out``, the folder argument of the readers) for a missing, unreadable or ragged file."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise PyrgdError(f"out: no {os.path.basename(path)} in {os.path.dirname(path) or '.'}") from None
    except OSError as e:
        raise PyrgdError(f"out: cannot read {path}: {e}") from None
    if not rows:
        return [], []
    header, body = rows[0], rows[1:]
    for i, r in enumerate(body, start=2):
        if len(r) != len(header):
            raise PyrgdError(f"out: {path} line {i} has {len(r)} fields, the header has {len(header)}")
    return header, body


def _read_csv(path) -> dict:
    header, body = read_csv_table(path)
    if not header:
        raise PyrgdError(f"out: {os.fspath(path)} is empty (expected a header row)")
    return {k: [_parse_cell(r[j]) for r in body] for j, k in enumerate(header)}


def make_folder(out, what="") -> str:
    """The folder path ``out`` (str or os.PathLike), created with its parents if missing; PyrgdError naming ``out``
    when it is not a path, is a file, or cannot be created. ``what``: words before the path in the last error
    ("the run folder")."""
    if not isinstance(out, (str, os.PathLike)):
        raise PyrgdError(f"out: expected a folder path, got {out!r}")
    out = os.fspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise PyrgdError(f"out: {out} exists and is not a folder")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise PyrgdError(f"out: cannot create {what + ' ' if what else ''}{out}: {e.strerror or e}") from None
    return out


def read_history(out) -> dict:
    """history.csv of run folder ``out`` as {column: list}; integers as int, other numbers as float (nan kept)."""
    return _read_csv(os.path.join(os.fspath(out), "history.csv"))


def read_certificates(out) -> dict:
    """certificates.csv of run folder ``out`` as {column: list}."""
    return _read_csv(os.path.join(os.fspath(out), "certificates.csv"))


def read_summary(out) -> dict:
    """summary.json of run folder ``out``."""
    path = os.path.join(os.fspath(out), "summary.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise PyrgdError(f"out: no summary.json in {out}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise PyrgdError(f"out: cannot read {path}: {e}") from None


# --------------------------------------------------------------------------------------------- the run folder
def write_config(out, config) -> None:
    """Write the resolved config as ``out``/config.toml (atomically; the folder is created if needed)."""
    from .config import dump_config

    try:
        os.makedirs(os.fspath(out), exist_ok=True)
    except OSError as e:
        raise PyrgdError(f"out: cannot create the run folder {out}: {e.strerror or e}") from None
    text = dump_config(config)
    atomic_write(os.path.join(os.fspath(out), "config.toml"), lambda f: f.write(text))


def write_run(out, result, config=None) -> str:
    """Write the run folder ``out`` for a :class:`pyrgd.train.TrainResult` (see the module docstring).

    ``result`` needs the attributes status, history, certificates, summary and net. Returns the folder path.
    summary.json is written after the history, the certificates and the weights, so that a summary marks a
    complete folder (a write that fails before it leaves the previous summary, or none); a certificates.csv of an
    earlier run in the folder is removed when this run has none. The plot is drawn last; if drawing fails the other
    files stay and a warning says why.
    """
    out = make_folder(out, what="the run folder")
    summary_text = json.dumps(json_safe(dict(result.summary)), indent=2, allow_nan=False) + "\n"
    if config is not None:
        write_config(out, config)
    _write_csv(os.path.join(out, "history.csv"), result.history, "history")
    certs = result.certificates or {}
    if _columns(certs, "certificates")[1] > 0:
        _write_csv(os.path.join(out, "certificates.csv"), certs, "certificates")
    elif os.path.isfile(os.path.join(out, "certificates.csv")):  # another run's
        os.remove(os.path.join(out, "certificates.csv"))
    if getattr(result, "net", None) is not None:
        result.net.save(os.path.join(out, "weights.npz"))
    atomic_write(os.path.join(out, "summary.json"), lambda f: f.write(summary_text))
    try:
        plot_run(os.path.join(out, "loss.png"), result)
    except Exception as e:  # the numbers matter more than the picture
        warnings.warn(f"pyrgd: could not draw {os.path.join(out, 'loss.png')}: {type(e).__name__}: {e}",
                      RuntimeWarning, stacklevel=2)
    return out


_FACTOR_CAP = 2.0


def _finite_xy(x, y, positive=False):
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    if positive:
        keep &= y > 0
    return x[keep], y[keep]


def plot_run(path, result) -> None:
    """Draw loss.png for a result: loss and envelope (log scale) on top, contraction factors below."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h = result.history or {}
    c = result.certificates or {}
    steps = h.get("step", list(range(len(h.get("loss", [])))))
    fig = Figure(figsize=(7.5, 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    x, y = _finite_xy(steps, h.get("loss", []), positive=True)
    ax.plot(x, y, color="C0", lw=1.5, label="loss $\\Phi_k$")
    if "envelope" in h:
        xe, ye = _finite_xy(steps, h["envelope"], positive=True)
        if len(xe):
            ax.plot(xe, ye, "--", color="C3", lw=1.2, label="PL-certified envelope")
    if len(y):
        ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    status = getattr(result, "status", "?")
    n = len(steps) - 1 if len(steps) else 0
    ax.set_title(f"pyrgd run: {status} after {n} steps")
    xf, yf = _finite_xy(steps, h.get("factor", []))
    ax2.plot(xf, yf, color="C0", lw=0.8, label="observed $\\Phi_{k}/\\Phi_{k-1}$")
    xc, yc = _finite_xy(c.get("step", []), c.get("certified_factor", []))
    if len(xc):
        ax2.plot(xc, yc, "o", ms=3, color="C3", label="certified $1-\\eta\\mu_k$")
    if len(yf) or len(yc):
        both = np.concatenate([yf, yc])
        lo, hi = np.percentile(both, [1, 99])
        lo, hi = min(lo, 1.0), max(hi, 1.0)
        if hi > _FACTOR_CAP:  # a diverging run: keep the panel about the contraction, say what was cut
            ax2.text(0.01, 0.97, f"factors above {_FACTOR_CAP:g} not shown", transform=ax2.transAxes,
                     va="top", fontsize="small", color="0.4")
            hi = _FACTOR_CAP
        pad = max(1e-6, 0.05 * (hi - lo))
        ax2.set_ylim(lo - pad, hi + pad)
    ax2.axhline(1.0, color="0.6", lw=0.6)
    ax2.set_xlabel("step")
    ax2.set_ylabel("contraction factor")
    ax2.grid(True, alpha=0.3)
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(loc="best", fontsize="small")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write(path, lambda f: f.write(buf.getvalue()), mode="wb")
