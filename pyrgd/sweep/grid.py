"""The grid of a sweep: reading a grid TOML file, checking it and expanding it into its cells.

A cell is ``(cell_id, params, config)``: ``params`` an ordered dict of the cell's parameters (N, n1, n1_over_N, tail
as JSON text, L, activation, init, any "table.key" of the grid, seed), ``config`` the full run config of
:mod:`pyrgd.config` with those parameters laid over the grid's base config.
"""
from __future__ import annotations

import copy
import itertools
import json
import math
import numbers
import os

from ..errors import PyrgdError

#: the special keys of a [grid] table (besides "table.key" names of any config key)
GRID_KEYS = ("N", "n1", "n1_over_N", "init", "activation", "tail", "depth", "seed")
_ALIASES = {"seeds": "seed"}
#: config keys that a grid sets through its special keys (a dotted grid key may not name them)
_OWNED = {"data.N": "N", "model.widths": "n1 / n1_over_N / tail / depth", "model.init": "init",
          "model.activation": "activation", "model.seed": "seed"}


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
    from .._toml import read_toml

    return read_toml(path, "grid")


def parse_grid(grid_cfg) -> Grid:
    """Check a grid config (a dict as read from TOML, or a path) and expand it into its cells.

    Every problem raises PyrgdError naming the key (``grid.N``, ``grid.tail[1]``, ``train.steps``, ...).
    """
    from ..config import SCHEMA, TABLES, resolve_config

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
    from ..config import resolve_config

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
    from ..config import resolve_config

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
