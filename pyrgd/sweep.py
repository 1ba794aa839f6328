"""Parameter sweeps: train a grid of networks, record the certificates at initialization and what GD did.

A grid file is a run config (the [data], [model] and [train] tables of :mod:`pyrgd.config`, all optional) plus a
[grid] table of lists; every combination of the lists is one *cell*::

    [grid]
    N = [64, 128, 256]               # data.N
    n1_over_N = [0.5, 1, 2, 4]       # n_1 = round(ratio * N); or n1 = [...] (absolute), not both
    activation = ["relu"]            # model.activation
    init = ["lecun"]                 # model.init
    tail = [[1], [16, 1]]            # [n_2, ..., n_L]; or depth = [2, 3]: the last L-1 widths of model.widths
    seed = [0, 1, 2]                 # model.seed (the initialization; the data keep data.seed); alias: seeds
    "model.beta" = [1.0, 4.0]        # any other config key, as "table.key"

    [data]
    inputs = "gaussian"
    [train]
    steps = 2000
    rel_tol = 1e-3

Each cell builds its data and network (seeded), computes at initialization sigma_min(F_1), the PL constant mu_0
(THEORY 4.1) and Nguyen 2021 Theorem 2.2's verdict and margins (THEORY 4.2) at the step size it trains with, then
trains with :func:`pyrgd.train` (``progress=False``) under the [train] table's step budget and tolerances.
``lr = "auto"`` is resolved once per cell, by train's own rule, before training.

The output folder holds ``results.csv`` (one row per finished cell, rewritten atomically after every cell),
``summary.csv`` (grouped over seeds: fraction converged, median steps to tolerance, ...), ``heatmap.png`` (median
steps to tolerance over (N, n_1/N); outlined dashed: the cells where Theorem 2.2's three initial conditions hold
for every seed, i.e. GD is certified for any step size below the theorem's eta_max; solid: where the cells' own lr
is below eta_max as well),
``final_loss.png`` (relative final loss against n_1/N), ``grid.toml`` (the grid as run) and ``sweep.json``.
A sweep that is run again into the same folder with ``resume=True`` skips the cells already in results.csv (a
cell is keyed by its parameters); its base configuration must be unchanged (lists of the grid may grow).
"""
from __future__ import annotations

import copy
import csv
import io
import itertools
import json
import math
import numbers
import os
import sys
import time
import warnings

import numpy as np

from .errors import PyrgdError

__all__ = ["GRID_KEYS", "Grid", "load_grid", "parse_grid", "cell_config", "run_cell", "run_sweep", "summarize",
           "format_summary", "read_results", "certified_outline", "plot_heatmap", "plot_final_loss", "RESULT_COLUMNS"]

#: the special keys of a [grid] table (besides "table.key" names of any config key)
GRID_KEYS = ("N", "n1", "n1_over_N", "init", "activation", "tail", "depth", "seed")
_ALIASES = {"seeds": "seed"}
#: config keys that a grid sets through its special keys (a dotted grid key may not name them)
_OWNED = {"data.N": "N", "model.widths": "n1 / n1_over_N / tail / depth", "model.init": "init",
          "model.activation": "activation", "model.seed": "seed"}

#: the columns of results.csv after the cell's parameters
RESULT_COLUMNS = ("lr", "lr_rule", "status", "converged", "steps", "steps_to_tol", "initial_loss", "final_loss",
                  "relative_loss", "median_factor", "wall_time_s", "sigma_min_F1", "mu_0", "certified_factor_0",
                  "nguyen_applies", "nguyen_conditions_hold", "nguyen_holds", "nguyen_margin_initW", "nguyen_margin_initF",
                  "nguyen_margin_initS", "nguyen_eta_max", "nguyen_eta_ok", "nguyen_rate_factor")

_RESULTS, _SUMMARY, _META, _GRID_FILE = "results.csv", "summary.csv", "sweep.json", "grid.toml"


# --------------------------------------------------------------------------------------------- the grid
class Grid:
    """A parsed grid: ``base`` (the resolved run config), ``axes`` (name -> list of values, in cell order) and
    ``cells`` (a list of (cell_id, params, config) with params an ordered dict of the cell's parameters)."""

    def __init__(self, base: dict, axes: dict, cells: list, source: dict):
        self.base = base
        self.axes = axes
        self.cells = cells
        self.source = source

    def __len__(self):
        return len(self.cells)


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _list(name, v):
    if not isinstance(v, list) or not v:
        raise PyrgdError(f"{name}: expected a non-empty list of values, got {v!r}")
    seen = []
    for x in v:
        if x in seen:
            raise PyrgdError(f"{name}: the value {x!r} is listed twice (every cell must be distinct)")
        seen.append(x)
    return v


def _ints(name, v, lo):
    for i, x in enumerate(_list(name, v)):
        if not _is_int(x) or x < lo:
            raise PyrgdError(f"{name}[{i}]: expected an integer >= {lo}, got {x!r}")
    return [int(x) for x in v]


def load_grid(path) -> dict:
    """Read a grid TOML file into a dict (checked by :func:`parse_grid`); PyrgdError naming the file otherwise."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    if not isinstance(path, (str, os.PathLike)):
        raise PyrgdError(f"grid: expected the path of a TOML file, got {path!r}")
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise PyrgdError(f"grid: file not found: {path}") from None
    except IsADirectoryError:
        raise PyrgdError(f"grid: {path} is a folder, expected a TOML file") from None
    except OSError as e:
        raise PyrgdError(f"grid: cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise PyrgdError(f"grid: {path} is not UTF-8 text ({e.reason})") from None
    except tomllib.TOMLDecodeError as e:
        raise PyrgdError(f"grid: TOML syntax error in {path}: {e}") from None


def parse_grid(grid_cfg) -> Grid:
    """Check a grid config (a dict as read from TOML, or a path) and expand it into its cells.

    Every problem raises PyrgdError naming the key (``grid.N``, ``grid.tail[1]``, ``train.steps``, ...).
    """
    from .config import SCHEMA, TABLES, resolve_config

    if isinstance(grid_cfg, (str, os.PathLike)):
        grid_cfg = load_grid(grid_cfg)
    if not isinstance(grid_cfg, dict):
        raise PyrgdError(f"grid_cfg: expected a dict or the path of a grid TOML file, got {type(grid_cfg).__name__}")
    for t in grid_cfg:
        if t != "grid" and t not in TABLES:
            raise PyrgdError(f"grid: unknown table [{t}]; a grid file has [grid] and the run tables "
                             f"[{'], ['.join(TABLES)}]")
    if "grid" not in grid_cfg:
        raise PyrgdError("grid: no [grid] table (a table of lists, e.g. N = [64, 128] and n1_over_N = [1, 2, 4])")
    g = grid_cfg["grid"]
    if not isinstance(g, dict) or not g:
        raise PyrgdError(f"grid: [grid] must be a non-empty table of lists, got {g!r}")
    base = resolve_config(file_cfg={t: grid_cfg[t] for t in TABLES if t in grid_cfg})

    axes: dict = {}
    extras: dict = {}
    for key, v in g.items():
        k = _ALIASES.get(key, key)
        name = f"grid.{key}"
        if k in axes:
            raise PyrgdError(f"{name}: given twice (seed and seeds are the same key)")
        if k in GRID_KEYS:
            axes[k] = v
            continue
        if "." in k:
            table, sub = k.split(".", 1)
            if table not in SCHEMA or sub not in SCHEMA[table]:
                raise PyrgdError(f"{name}: unknown config key; a dotted grid key names a key of "
                                 f"[{'], ['.join(TABLES)}] (see pyrgd train --print-config)")
            if k in _OWNED:
                raise PyrgdError(f"{name}: set it through the grid key {_OWNED[k]}")
            vals = _list(name, v)
            for i, x in enumerate(vals):  # validated (and normalized) by the config schema
                try:
                    resolve_config(overrides={table: {sub: x}})
                except PyrgdError as e:
                    raise PyrgdError(f"{name}[{i}]: {str(e).split(': ', 1)[-1]}") from None
            extras[k] = vals
            continue
        raise PyrgdError(f"{name}: unknown grid key; valid keys are {', '.join(GRID_KEYS)} (seeds for seed) or "
                         "'table.key' for any config key")

    if "n1" in axes and "n1_over_N" in axes:
        raise PyrgdError("grid.n1: give n_1 either absolutely (n1) or relative to N (n1_over_N), not both")
    if "tail" in axes and "depth" in axes:
        raise PyrgdError("grid.tail: give the tail either as widths (tail) or as a depth (depth), not both")
    Ns = _ints("grid.N", axes["N"], 1) if "N" in axes else [base["data"]["N"]]
    if "n1" in axes:
        n1_spec = ("abs", _ints("grid.n1", axes["n1"], 1))
    elif "n1_over_N" in axes:
        ratios = _list("grid.n1_over_N", axes["n1_over_N"])
        for i, r in enumerate(ratios):
            if not _is_num(r) or r <= 0:
                raise PyrgdError(f"grid.n1_over_N[{i}]: expected a positive number, got {r!r}")
        n1_spec = ("ratio", [float(r) for r in ratios])
    else:
        n1_spec = ("abs", [base["model"]["widths"][0]])
    base_tail = list(base["model"]["widths"][1:])
    if "tail" in axes:
        tails = []
        for i, t in enumerate(_list("grid.tail", axes["tail"])):
            if not isinstance(t, list) or not t or not all(_is_int(x) and x >= 1 for x in t):
                raise PyrgdError(f"grid.tail[{i}]: expected a non-empty list of positive widths [n_2, ..., n_L], "
                                 f"got {t!r}")
            tails.append([int(x) for x in t])
    elif "depth" in axes:
        tails = []
        for i, L in enumerate(_ints("grid.depth", axes["depth"], 2)):
            if L - 1 > len(base_tail):
                raise PyrgdError(f"grid.depth[{i}]: depth {L} needs {L - 1} tail widths, but model.widths = "
                                 f"{base['model']['widths']} has {len(base_tail)} after n_1; list a longer "
                                 "model.widths or use grid.tail")
            tails.append(base_tail[len(base_tail) - (L - 1):])
    else:
        tails = [base_tail]
    acts = [_check_one("model", "activation", "grid.activation", i, a)
            for i, a in enumerate(_list("grid.activation", axes["activation"]))] \
        if "activation" in axes else [base["model"]["activation"]]
    inits = [_check_one("model", "init", "grid.init", i, a) for i, a in enumerate(_list("grid.init", axes["init"]))] \
        if "init" in axes else [base["model"]["init"]]
    seeds = _ints("grid.seed", axes["seed"], 0) if "seed" in axes else [base["model"]["seed"]]
    n_out = base["data"]["n_out"]
    for i, t in enumerate(tails):
        if base["data"]["source"] == "synthetic" and "data.n_out" not in extras and t[-1] != n_out:
            raise PyrgdError(f"grid.tail[{i}]: the last width {t[-1]} must equal data.n_out = {n_out}")

    cells = []
    seen_ids = set()
    for N, n1v, tail, act, init, *rest in itertools.product(Ns, n1_spec[1], tails, acts, inits,
                                                            *extras.values(), seeds):
        ex, seed = dict(zip(extras, rest[:-1])), rest[-1]
        n1 = int(n1v) if n1_spec[0] == "abs" else max(1, int(round(n1v * N)))
        params = {"N": N, "n1": n1, "n1_over_N": n1 / N, "tail": json.dumps(tail), "L": 1 + len(tail),
                  "activation": act, "init": init}
        params.update(ex)
        params["seed"] = seed
        cid = cell_id(params)
        if cid in seen_ids:
            raise PyrgdError(f"grid.n1_over_N: two ratios give the same n_1 = {n1} at N = {N}; "
                             "list ratios that differ by at least 1/N")
        seen_ids.add(cid)
        cells.append((cid, params, cell_config(base, params)))
    out_axes = {"N": Ns, ("n1" if n1_spec[0] == "abs" else "n1_over_N"): n1_spec[1], "tail": tails,
                "activation": acts, "init": inits, **extras, "seed": seeds}
    return Grid(base, out_axes, cells, grid_cfg)


def _check_one(table, key, name, i, v):
    from .config import resolve_config

    try:
        return resolve_config(overrides={table: {key: v}})[table][key]
    except PyrgdError as e:
        raise PyrgdError(f"{name}[{i}]: {str(e).split(': ', 1)[-1]}") from None


def cell_id(params: dict) -> str:
    """The key of a cell: its parameters (without the derived n1_over_N and L) as ``k=v|k=v|...``."""
    return "|".join(f"{k}={_fmt_param(v)}" for k, v in params.items() if k not in ("n1_over_N", "L"))


def _fmt_param(v):
    if isinstance(v, float):
        return repr(v)
    return str(v)


def cell_config(base: dict, params: dict) -> dict:
    """The full run config of a cell: ``base`` with the cell's parameters laid over it."""
    from .config import resolve_config

    cfg = copy.deepcopy(base)
    cfg["data"]["N"] = params["N"]
    cfg["model"]["widths"] = [params["n1"]] + json.loads(params["tail"])
    cfg["model"]["activation"] = params["activation"]
    cfg["model"]["init"] = params["init"]
    cfg["model"]["seed"] = params["seed"]
    for k, v in params.items():
        if "." in k:
            t, s = k.split(".", 1)
            cfg[t][s] = v
    return resolve_config(file_cfg=cfg)


# --------------------------------------------------------------------------------------------- one cell
def run_cell(cfg: dict, *, C=1.0) -> dict:
    """Build, certify at initialization and train one config; returns the result columns (:data:`RESULT_COLUMNS`).

    The step size: a number from the config, or "auto" resolved once here (train's rule) and passed to train.
    """
    from .certify import _resolve_lr
    from .config import build
    from .theory import nguyen2021_certificate, nm2020_quantities
    from .train import train

    net, X, Y, kw = build(cfg)
    backend = kw.get("backend", "auto")
    cert_backend = backend if backend in ("cpu", "reference") else "auto"
    lr, rule = _resolve_lr(net, X, kw.pop("lr"), cert_backend)
    q = nm2020_quantities(net, X, backend=cert_backend)
    ng = nguyen2021_certificate(net, X, Y, C=C, eta=lr, backend=cert_backend)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"n_1 = \d+ < N = \d+")  # cells below N are the point
        res = train(net, X, Y, lr=lr, progress=False, **kw)
    s = res.summary
    conv = res.status == "converged"
    mu = q.mu if math.isfinite(q.mu) else None
    return {
        "lr": lr, "lr_rule": "auto" if rule and rule.startswith("auto") else "given",
        "status": res.status, "converged": conv, "steps": s["steps"], "steps_to_tol": s["steps"] if conv else None,
        "initial_loss": s["initial_loss"], "final_loss": s["final_loss"], "relative_loss": s["relative_loss"],
        "median_factor": s["median_factor"], "wall_time_s": s["wall_time_s"],
        "sigma_min_F1": q.lambda_F, "mu_0": mu, "certified_factor_0": (1.0 - lr * mu) if mu is not None else None,
        "nguyen_applies": ng.applies,
        "nguyen_conditions_hold": ng.applies and all(c.holds for c in ng.conditions.values()),
        "nguyen_holds": ng.holds,
        "nguyen_margin_initW": ng.conditions["initW"].margin, "nguyen_margin_initF": ng.conditions["initF"].margin,
        "nguyen_margin_initS": ng.conditions["initS"].margin, "nguyen_eta_max": ng.eta_max,
        "nguyen_eta_ok": ng.eta_ok, "nguyen_rate_factor": ng.rate_factor,
        "_interrupted": res.status == "interrupted",
    }


# --------------------------------------------------------------------------------------------- CSV
def _cell_text(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "True" if v else "False"
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        return repr(float(v))
    return str(v)


def _parse_text(s: str):
    if s == "":
        return None
    if s in ("True", "False"):
        return s == "True"
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        return s


def _write_rows(path, rows):
    from .runio import atomic_write

    header = []
    for r in rows:
        for k in r:
            if k not in header:
                header.append(k)

    def write(f):
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for r in rows:
            w.writerow([_cell_text(r.get(k)) for k in header])

    atomic_write(path, write)


def read_results(path) -> list:
    """The rows of a results.csv (or summary.csv) as dicts of typed values (None for empty cells)."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise PyrgdError(f"out: no {os.path.basename(path)} in {os.path.dirname(path) or '.'}") from None
    except OSError as e:
        raise PyrgdError(f"out: cannot read {path}: {e}") from None
    if not rows:
        return []
    header = rows[0]
    out = []
    for i, r in enumerate(rows[1:], start=2):
        if len(r) != len(header):
            raise PyrgdError(f"out: {path} line {i} has {len(r)} fields, the header has {len(header)}")
        out.append({k: (_parse_text(v) if k not in ("cell", "tail") else v) for k, v in zip(header, r)})
    return out


# --------------------------------------------------------------------------------------------- the sweep
def _base_fingerprint(base: dict) -> str:
    return json.dumps(base, sort_keys=True)


def run_sweep(grid_cfg, out, resume=True, *, progress=False, C=1.0, plots=True) -> list:
    """Run every cell of a grid (a dict or a TOML path) into the folder ``out``; returns the rows of all the grid's
    cells (those run now and those found finished), in grid order.

    resume: skip the cells already in ``out/results.csv`` (their base config must be the same); False starts over
    (an existing results.csv is replaced). progress: a tqdm bar over the cells (stderr) with the time left.
    C: Nguyen 2021's constants. plots: draw heatmap.png and final_loss.png.
    If a cell is interrupted (Ctrl-C), the finished cells stay on disk and KeyboardInterrupt is raised.
    """
    from .runio import atomic_write, json_safe

    grid = parse_grid(grid_cfg)
    if not isinstance(out, (str, os.PathLike)):
        raise PyrgdError(f"out: expected a folder path, got {out!r}")
    out = os.fspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise PyrgdError(f"out: {out} exists and is not a folder")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise PyrgdError(f"out: cannot create {out}: {e.strerror or e}") from None
    res_path, meta_path = os.path.join(out, _RESULTS), os.path.join(out, _META)
    fp = _base_fingerprint(grid.base)
    done_rows: list = []
    if resume and os.path.exists(res_path):
        if os.path.exists(meta_path):
            try:
                with open(meta_path, encoding="utf-8") as f:
                    old = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise PyrgdError(f"out: cannot read {meta_path}: {e}") from None
            if old.get("base_fingerprint") != fp:
                diff = _first_difference(json.loads(old.get("base_fingerprint", "{}")), grid.base)
                raise PyrgdError(f"out: the sweep in {out} was run with another base config ({diff}); choose "
                                 "another folder, or start over without resume")
        done_rows = read_results(res_path)
    elif not resume and os.path.exists(res_path):
        os.unlink(res_path)
    meta = {"base_fingerprint": fp, "base": grid.base, "axes": grid.axes, "cells": len(grid), "C": C}
    atomic_write(meta_path, lambda f: f.write(json.dumps(json_safe(meta), indent=2) + "\n"))
    _write_grid_file(os.path.join(out, _GRID_FILE), grid.source)

    by_id = {r["cell"]: r for r in done_rows}
    todo = [c for c in grid.cells if c[0] not in by_id]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(grid), initial=len(grid) - len(todo), unit="cell", desc="sweep", file=sys.stderr,
                   dynamic_ncols=True, leave=True)
    interrupted = False
    try:
        for cid, params, cfg in todo:
            if bar is not None:
                bar.set_postfix_str(f"N={params['N']} n1={params['n1']} seed={params['seed']}", refresh=True)
            t0 = time.perf_counter()
            result = run_cell(cfg, C=C)
            if result.pop("_interrupted"):
                interrupted = True
                break
            row = {"cell": cid, **params, **result, "cell_time_s": time.perf_counter() - t0}
            done_rows.append(row)
            by_id[cid] = row
            _write_rows(res_path, done_rows)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    rows = [by_id[c[0]] for c in grid.cells if c[0] in by_id]
    summary = summarize(rows)
    _write_rows(os.path.join(out, _SUMMARY), summary)
    if plots and rows:
        try:
            plot_heatmap(os.path.join(out, "heatmap.png"), summary, rel_tol=grid.base["train"]["rel_tol"])
            plot_final_loss(os.path.join(out, "final_loss.png"), summary, rel_tol=grid.base["train"]["rel_tol"])
        except Exception as e:  # the numbers matter more than the pictures
            warnings.warn(f"pyrgd sweep: could not draw the plots in {out}: {type(e).__name__}: {e}", RuntimeWarning,
                          stacklevel=2)
    if interrupted:
        raise KeyboardInterrupt
    return rows


def _first_difference(a: dict, b: dict) -> str:
    for t in sorted(set(a) | set(b)):
        ta, tb = a.get(t, {}), b.get(t, {})
        for k in sorted(set(ta) | set(tb)):
            if ta.get(k) != tb.get(k):
                return f"{t}.{k}: {ta.get(k)!r} then, {tb.get(k)!r} now"
    return "unknown difference"


def _write_grid_file(path, source):
    from .config import _toml_text
    from .runio import atomic_write

    text = "# the grid of this sweep (pyrgd sweep --grid grid.toml --out <this folder> --resume)\n" + \
        _toml_text(source)
    atomic_write(path, lambda f: f.write(text))


# --------------------------------------------------------------------------------------------- summary
_GROUP_DROP = ("cell", "seed")


def _median(vals):
    v = [float(x) for x in vals if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.median(v)) if v else None


def summarize(rows: list) -> list:
    """Group result rows over seeds: one row per combination of the other parameters, with seeds (count),
    converged_fraction, median_steps_to_tol (over the converged seeds), median_relative_loss, median_final_loss,
    median_factor, certified_fraction (Theorem 2.2's initial conditions hold: GD is certified for every step size
    below its eta_max), certified_at_lr_fraction (they hold and the cell's own lr is below eta_max: the run that
    was made is certified), median_lr, median_eta_max (Theorem 2.2's step-size bound), median_sigma_min_F1,
    median_mu_0."""
    param_keys = ["N", "n1", "n1_over_N", "tail", "L", "activation", "init"]
    for r in rows:
        for k in r:
            if "." in k and k not in param_keys:
                param_keys.append(k)
    groups: dict = {}
    for r in rows:
        key = tuple(_fmt_param(r.get(k)) for k in param_keys)
        groups.setdefault(key, []).append(r)
    out = []
    for _key, rs in groups.items():
        g = {k: rs[0].get(k) for k in param_keys}
        n = len(rs)
        conv = [r for r in rs if r.get("converged")]
        g.update({
            "seeds": n,
            "converged_fraction": len(conv) / n,
            "median_steps_to_tol": _median([r.get("steps_to_tol") for r in conv]),
            "median_relative_loss": _median([r.get("relative_loss") for r in rs]),
            "median_final_loss": _median([r.get("final_loss") for r in rs]),
            "median_factor": _median([r.get("median_factor") for r in rs]),
            "certified_fraction": sum(1 for r in rs if r.get("nguyen_conditions_hold")) / n,
            "certified_at_lr_fraction": sum(1 for r in rs if r.get("nguyen_holds")) / n,
            "median_lr": _median([r.get("lr") for r in rs]),
            "median_eta_max": _median([r.get("nguyen_eta_max") for r in rs]),
            "median_sigma_min_F1": _median([r.get("sigma_min_F1") for r in rs]),
            "median_mu_0": _median([r.get("mu_0") for r in rs]),
        })
        out.append(g)
    return out


def format_summary(summary: list) -> str:
    """The summary rows as a text table."""
    if not summary:
        return "(no finished cells)"
    extra = [k for k in summary[0] if "." in k]
    cols = ["N", "n1", "n1_over_N", "tail", "activation", "init"] + extra + \
        ["seeds", "converged_fraction", "median_steps_to_tol", "median_relative_loss", "certified_fraction",
         "certified_at_lr_fraction"]
    heads = {"n1_over_N": "n1/N", "converged_fraction": "converged", "median_steps_to_tol": "steps (median)",
             "median_relative_loss": "rel. loss (median)", "certified_fraction": "certified",
             "certified_at_lr_fraction": "at lr"}

    def fmt(k, v):
        if v is None:
            return "-"
        if k in ("converged_fraction", "certified_fraction", "certified_at_lr_fraction"):
            return f"{v:.2f}"
        if k == "median_relative_loss":
            return f"{v:.2e}"
        if k == "median_steps_to_tol":
            return f"{v:g}"
        if k == "n1_over_N":
            return f"{v:.4g}"
        return str(v)

    table = [[heads.get(k, k) for k in cols]] + [[fmt(k, r.get(k)) for k in cols] for r in summary]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in table)


# --------------------------------------------------------------------------------------------- plots
def _panels(summary):
    """Group summary rows by everything except N and n1: {label: rows}."""
    keys = ["tail", "activation", "init"] + [k for k in (summary[0] if summary else {}) if "." in k]
    panels: dict = {}
    for r in summary:
        label = ", ".join(f"{k}={r.get(k)}" for k in keys)
        panels.setdefault(label, []).append(r)
    return panels


def _save(fig, path):
    from .runio import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write(path, lambda f: f.write(buf.getvalue()), mode="wb")


def _ratio_label(r):
    return f"{r:.3g}"


def certified_outline(cert) -> list:
    """The boundary of the certified region of a heat map: ``cert`` is a boolean (rows, cols) mask (row i = the
    i-th N, column j = the j-th n_1/N, cell (i, j) drawn as the unit square centred at x = j, y = i); returns the
    unit edges ([x0, x1], [y0, y1]) that separate a certified cell from an uncertified one or from the map's
    border."""
    cert = np.asarray(cert, dtype=bool)
    n_i, n_j = cert.shape
    segs = []
    for i in range(n_i):
        for j in range(n_j):
            if not cert[i, j]:
                continue
            for di, dj, seg in ((-1, 0, ([j - .5, j + .5], [i - .5, i - .5])),
                                (1, 0, ([j - .5, j + .5], [i + .5, i + .5])),
                                (0, -1, ([j - .5, j - .5], [i - .5, i + .5])),
                                (0, 1, ([j + .5, j + .5], [i - .5, i + .5]))):
                ii, jj = i + di, j + dj
                if not (0 <= ii < n_i and 0 <= jj < n_j) or not cert[ii, jj]:
                    segs.append(seg)
    return segs


def _span(v):
    lo, hi = min(v), max(v)
    return f"{lo:.1e}" if lo == hi else f"{lo:.1e}..{hi:.1e}"


def plot_heatmap(path, summary: list, rel_tol=None) -> None:
    """heatmap.png: median steps to tolerance over (N, n_1/N), one panel per other combination, with the certified
    region outlined: dashed around the cells where Theorem 2.2's three initial conditions hold for every seed (GD
    is certified for any step size eta < eta_max), solid around those where, in addition, the lr the cells trained
    with is below eta_max for every seed (the runs shown are themselves certified). The panel's title gives the
    range of eta_max and of lr over the dashed cells: eta_max is often many orders of magnitude below a step size
    at which GD gets anywhere."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    panels = _panels(summary)
    n = len(panels)
    ncol = min(n, 2)
    nrow = math.ceil(n / ncol)
    fig = Figure(figsize=(6.2 * ncol, 4.4 * nrow), layout="constrained")
    FigureCanvasAgg(fig)
    axs = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
    all_steps = [r["median_steps_to_tol"] for r in summary if r.get("median_steps_to_tol")]
    norm = LogNorm(vmin=max(1.0, min(all_steps)), vmax=max(max(all_steps), 2.0)) if all_steps else None
    im = None
    for ax, (label, rows) in zip(axs, panels.items()):
        Ns = sorted({r["N"] for r in rows})
        ratios = sorted({round(r["n1_over_N"], 12) for r in rows})
        A = np.full((len(Ns), len(ratios)), np.nan)
        cert = np.zeros_like(A, dtype=bool)
        cert_lr = np.zeros_like(A, dtype=bool)
        eta_max, lrs = [], []
        for r in rows:
            i, j = Ns.index(r["N"]), ratios.index(round(r["n1_over_N"], 12))
            if r["converged_fraction"] >= 0.5 and r.get("median_steps_to_tol") is not None:
                A[i, j] = max(r["median_steps_to_tol"], 1.0)
            cert[i, j] = r["certified_fraction"] >= 1.0
            cert_lr[i, j] = r.get("certified_at_lr_fraction", 0.0) >= 1.0
            if cert[i, j]:
                eta_max += [r["median_eta_max"]] if r.get("median_eta_max") is not None else []
                lrs += [r["median_lr"]] if r.get("median_lr") is not None else []
            txt = "no" if np.isnan(A[i, j]) else f"{A[i, j]:.0f}"
            if 0 < r["converged_fraction"] < 1:
                txt += f"\n({r['converged_fraction']:.2f})"
            dark = norm is not None and not np.isnan(A[i, j]) and norm(A[i, j]) < 0.45
            ax.text(j, i, txt, ha="center", va="center", fontsize=7, color="w" if dark else "0.1")
        ax.imshow(np.ones_like(A), cmap="Greys", vmin=0, vmax=5, aspect="auto", origin="lower")  # 'no' cells grey
        im = ax.imshow(np.ma.masked_invalid(A), cmap="viridis", norm=norm, aspect="auto", origin="lower")
        for seg in certified_outline(cert):  # the conditions hold: certified for eta < eta_max
            ax.plot(*seg, color="k", lw=2.0, ls=(0, (3, 2)))
        for seg in certified_outline(cert_lr):  # and the lr used is below eta_max: the runs are certified
            ax.plot(*seg, color="k", lw=3.0)
        ax.set_xticks(range(len(ratios)), [_ratio_label(r) for r in ratios])
        ax.set_yticks(range(len(Ns)), [str(N) for N in Ns])
        ax.set_xlabel("$n_1 / N$")
        ax.set_ylabel("N")
        if not cert.any():
            note = "no cell certified by Thm 2.2"
        else:
            note = "dashed: Thm 2.2's conditions hold for every seed (certified for eta < eta_max)"
            if eta_max and lrs:
                note += f"\neta_max {_span(eta_max)}, lr used {_span(lrs)}"
            note += ("\nsolid: the lr used is below eta_max as well" if cert_lr.any() else
                     "; no run certified at its own lr")
        ax.set_title(f"{label}\n{note}", fontsize=9)
    for ax in axs[n:]:
        ax.set_visible(False)
    if im is not None and all_steps:
        fig.colorbar(im, ax=list(axs[:n]), label="median steps to tolerance"
                     + (f" (rel. loss {rel_tol:g})" if rel_tol else ""))
    fig.suptitle("GD: median steps to tolerance over the seeds\n('no': under half of the seeds converged; "
                 "(f): the fraction that did)", fontsize=9)
    _save(fig, path)


def plot_final_loss(path, summary: list, rel_tol=None) -> None:
    """final_loss.png: median relative final loss against n_1/N, one line per N, one panel per other combination."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    panels = _panels(summary)
    n = len(panels)
    ncol = min(n, 2)
    nrow = math.ceil(n / ncol)
    fig = Figure(figsize=(6.2 * ncol, 4.2 * nrow), layout="constrained")
    FigureCanvasAgg(fig)
    axs = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
    for ax, (label, rows) in zip(axs, panels.items()):
        for k, N in enumerate(sorted({r["N"] for r in rows})):
            pts = sorted((r["n1_over_N"], r["median_relative_loss"]) for r in rows
                         if r["N"] == N and r.get("median_relative_loss"))
            pts = [(x, y) for x, y in pts if y > 0]
            if pts:
                ax.plot(*zip(*pts), "o-", color=f"C{k % 10}", label=f"N = {N}")
        if rel_tol:
            ax.axhline(rel_tol, color="0.4", ls="--", lw=1, label=f"tolerance {rel_tol:g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ratios = sorted({r["n1_over_N"] for r in rows})
        if len(ratios) <= 12:
            ax.set_xticks(ratios, [_ratio_label(x) for x in ratios])
            ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("$n_1 / N$")
        ax.set_ylabel("final loss / initial loss (median over seeds)")
        ax.grid(True, which="major", alpha=0.3)
        ax.set_title(label, fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    for ax in axs[n:]:
        ax.set_visible(False)
    _save(fig, path)
