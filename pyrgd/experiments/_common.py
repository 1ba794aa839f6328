"""Helpers shared by the experiments: parameter checks, CSV/JSON/PNG output, log-log slope fits."""
from __future__ import annotations

import io
import json
import math
import numbers
import os

import numpy as np

from ..errors import PyrgdError

__all__ = ["Param", "check_params", "write_csv", "write_json", "save_figure", "fit_loglog", "progress_bar"]


class Param:
    """One experiment parameter: kind in int, float, str, bool, raw (checked by the experiment), int_list,
    float_list, str_list, table_list;
    lo: the smallest allowed number (ints, floats and list items)."""

    def __init__(self, kind, doc, lo=None):
        self.kind, self.doc, self.lo = kind, doc, lo


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _one(name, v, kind, lo):
    if kind == "int":
        if _is_num(v) and not _is_int(v) and float(v).is_integer():
            v = int(v)
        if not _is_int(v) or (lo is not None and v < lo):
            raise PyrgdError(f"{name}: expected an integer{'' if lo is None else f' >= {lo:g}'}, got {v!r}")
        return int(v)
    if kind == "float":
        if not _is_num(v) or (lo is not None and v < lo):
            raise PyrgdError(f"{name}: expected a finite number{'' if lo is None else f' >= {lo:g}'}, got {v!r}")
        return float(v)
    if kind == "str":
        if not isinstance(v, str):
            raise PyrgdError(f"{name}: expected a string, got {v!r}")
        return v
    if kind == "bool":
        if not isinstance(v, bool):
            raise PyrgdError(f"{name}: expected true or false, got {v!r}")
        return v
    if kind == "raw":
        return v
    if kind == "table":
        if not isinstance(v, dict):
            raise PyrgdError(f"{name}: expected a table, got {v!r}")
        return v
    raise AssertionError(kind)  # pragma: no cover


def check_params(exp: str, spec: dict, params) -> dict:
    """Validate an experiment's [params] (after [small] was laid over them) against ``spec`` (name -> Param).

    Every key of ``spec`` is required (the numbers live in the experiment's TOML file, not in the code); unknown keys
    and wrong types raise PyrgdError naming ``EXP.params.key``.
    """
    if not isinstance(params, dict):
        raise PyrgdError(f"{exp}.params: expected a table, got {params!r}")
    for k in params:
        if k not in spec:
            raise PyrgdError(f"{exp}.params.{k}: unknown parameter; {exp} takes: {', '.join(spec)}")
    out = {}
    for k, p in spec.items():
        name = f"{exp}.params.{k}"
        if k not in params:
            raise PyrgdError(f"{name}: missing ({p.doc})")
        v = params[k]
        if p.kind.endswith("_list"):
            if not isinstance(v, list) or not v:
                raise PyrgdError(f"{name}: expected a non-empty list, got {v!r}")
            base = {"table_list": "table"}.get(p.kind, p.kind[:-5])
            out[k] = [_one(f"{name}[{i}]", x, base, p.lo) for i, x in enumerate(v)]
        else:
            out[k] = _one(name, v, p.kind, p.lo)
    return out


def write_csv(path, rows) -> None:
    """rows (a list of dicts) as a CSV file, the header the union of their keys, written atomically."""
    from ..sweep import _write_rows

    _write_rows(path, rows)


def write_json(path, obj) -> None:
    from ..runio import atomic_write, json_safe

    text = json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text))


def save_figure(fig, path, dpi=100) -> None:
    from ..runio import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: f.write(buf.getvalue()), mode="wb")


def fit_loglog(x, y):
    """(slope, prefactor) of the least-squares line log y = slope log x + log prefactor over the positive finite
    points; (nan, nan) with fewer than two."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if keep.sum() < 2 or np.unique(x[keep]).size < 2:
        return float("nan"), float("nan")
    s, b = np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)
    return float(s), float(math.exp(b))


def progress_bar(enabled, total, desc, unit="it"):
    """A tqdm bar on stderr, or a stand-in with the same total/update/refresh/close/set_postfix_str members."""
    if enabled:
        import sys

        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=True)

    class _Null:
        def update(self, n=1):
            pass

        def refresh(self):
            pass

        def set_postfix_str(self, *a, **k):
            pass

        def close(self):
            pass

    bar = _Null()
    bar.total = total
    return bar
