"""The schema of a run config: every key of the [data], [model] and [train] tables with its kind, default and
bounds (:data:`SCHEMA`), the presets, and resolving a (partial) config over the defaults with every value checked.

This module reads no file and builds nothing: :mod:`pyrgd.config` adds TOML files, command-line values and
building a run; :mod:`pyrgd.data` resolves a [data] table here. The vocabularies of the [data] table
(:data:`INPUT_KINDS`, :data:`TARGET_KINDS`, :data:`SOURCES`) live here and are re-exported by :mod:`pyrgd.data`.
A resolved config is a dict ``{table: {key: value}}`` of plain Python values (ints, floats, strings, bools, lists).
"""
from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass

from .activations import parse_activation
from .errors import PyrgdError
from .model import INIT_SCHEMES
from .update_rules import DEFAULT_BETA, UPDATE_NAMES

__all__ = ["SCHEMA", "PRESETS", "TABLES", "BACKEND_NAMES", "INPUT_KINDS", "TARGET_KINDS", "SOURCES", "Key",
           "defaults", "resolve_config"]

#: input distributions of :func:`pyrgd.data.synthetic`
INPUT_KINDS = ("sphere", "gaussian")
#: target kinds of :func:`pyrgd.data.synthetic`
TARGET_KINDS = ("gaussian", "teacher")
#: the ``source`` values of a config's [data] table
SOURCES = ("synthetic", "digits", "file")

TABLES = ("data", "model", "train")
BACKEND_NAMES = ("auto", "cpu", "reference", "cuda")


@dataclass(frozen=True)
class Key:
    """One config key: its kind, default and constraints.

    kind: 'int', 'float', 'str', 'bool', 'lr' ("auto" or a positive float), 'int_or_auto' ("auto" or an integer), 'activation' (a name such as
    "smooth_leaky_relu(0.2)", stored normalized), 'int_list', 'float_list', 'float_or_list'.
    lo: smallest allowed value (numbers and list items); lo_open: the bound itself is excluded.
    choices: the allowed strings. hi: largest allowed value (numbers); hi_open: the bound itself is excluded.
    """

    kind: str
    default: object
    doc: str
    lo: float | None = None
    lo_open: bool = False
    choices: tuple = ()
    hi: float | None = None
    hi_open: bool = False


SCHEMA: dict[str, dict[str, Key]] = {
    "data": {
        "source": Key("str", "synthetic", "where the data comes from", choices=SOURCES),
        "N": Key("int", 64, "number of samples (synthetic; digits: size of the random subset, at most 1797)", lo=1),
        "d": Key("int", 16, "input dimension (synthetic only; digits have d = 64, files their own)", lo=1),
        "n_out": Key("int", 1, "target columns (synthetic; digits: 10 one-hot or 1 centered label)", lo=1),
        "inputs": Key("str", "sphere", "synthetic inputs: unit-norm rows or i.i.d. N(0,1)", choices=INPUT_KINDS),
        "targets": Key("str", "gaussian", "synthetic targets: i.i.d. N(0,1) or a random teacher network",
                       choices=TARGET_KINDS),
        "seed": Key("int", 0, "seed of the data", lo=0),
        "teacher_width": Key("int", 64, "hidden width of the teacher (targets = 'teacher')", lo=1),
        "teacher_activation": Key("activation", "tanh", "activation of the teacher"),
        "path": Key("str", "", "source = 'file': an .npz with two arrays, or the .npy of the inputs (relative to the "
                     "current folder)"),
        "y_path": Key("str", "", "source = 'file': the .npy of the targets ('' when path is an .npz)"),
        "x_key": Key("str", "X", "name of the inputs in the .npz"),
        "y_key": Key("str", "Y", "name of the targets in the .npz"),
    },
    "model": {
        "widths": Key("int_list", [1024, 16, 1], "[n_1, ..., n_L]; n_1 the wide layer, n_L = data columns", lo=1),
        "activation": Key("activation", "smooth_leaky_relu(0.2)", "sigma of the hidden layers"),
        "init": Key("str", "lecun", "initialization scheme", choices=INIT_SCHEMES),
        "init_std": Key("float_or_list", 1.0, "init = 'normal': std of every layer, or one per layer", lo=0.0),
        "beta": Key("float", 1.0, "init = 'zero_scaled': scale of the non-zero layers", lo=0.0, lo_open=True),
        "zero_layer": Key("int", 0, "init = 'zero_scaled': the layer set to zero (0: the last layer)", lo=0),
        "seed": Key("int", 0, "seed of the initial weights", lo=0),
        "dtype": Key("str", "float64", "floating point type of data and weights", choices=("float32", "float64")),
        "multipliers": Key("float_list", [], "a_1..a_(L-1), fixed layer multipliers ([]: all 1)", lo=0.0,
                           lo_open=True),
        "allow_non_pyramidal": Key("bool", False, "accept a tail that is not non-increasing"),
    },
    "train": {
        "lr": Key("lr", "auto", "step size: a positive float, or 'auto' (chosen once at the start)"),
        "steps": Key("int", 1000, "most GD steps", lo=1),
        "tol": Key("float", 0.0, "stop when the loss is <= tol", lo=0.0),
        "rel_tol": Key("float", 0.0, "stop when loss / initial loss <= rel_tol", lo=0.0),
        "track_every": Key("int_or_auto", "auto", "steps between two certificate evaluations: \"auto\" (as many as "
                           "fit in 8% of the steps' time), a number, or 0 (no tracking)", lo=0),
        "checkpoint_every": Key("int_or_auto", "auto", "steps between checkpoints written to the run folder: "
                                "\"auto\" (every 10 minutes of wall time), a number, or 0 (none)", lo=0),
        "track_route": Key("str", "auto", "how sigma_min(F_1) is tracked: exact (N x N Gram), certified (a certified "
                           "lower bound by a Cholesky test), estimate (matrix-free, certifies nothing) or auto (exact "
                           "where it fits the step's memory, else estimate)",
                           choices=("auto", "exact", "certified", "estimate")),
        "time_budget": Key("float", 0.0, "most seconds of training (0: no budget)", lo=0.0),
        "divergence_factor": Key("float", 1e6, "stop as diverged when loss > factor * initial loss", lo=1.0,
                                 lo_open=True),
        "backend": Key("str", "auto", "wide-layer backend", choices=BACKEND_NAMES),
        "method": Key("str", "auto", "GD step method: auto (the faster for the shapes), rows (cpu only) or neurons "
                      "(memory-lean: no gradient arrays of the wide layer)", choices=("auto", "rows", "neurons")),
        "update": Key("str", "gd", "update rule: gd (gradient descent), momentum (heavy ball) or nesterov",
                      choices=UPDATE_NAMES),
        "momentum": Key("float", DEFAULT_BETA, "beta of update = momentum or nesterov", lo=0.0, hi=1.0,
                        hi_open=True),
        "threads": Key("int", 0, "CPU threads of the C++ kernels and the BLAS (0: the machine's default)", lo=0),
    },
}

#: named starting points; each is a partial config laid over the defaults. The numbers live here only.
PRESETS: dict[str, dict] = {
    "quickstart": {
        "data": {"source": "synthetic", "N": 128, "d": 64, "inputs": "gaussian", "targets": "gaussian", "n_out": 1,
                 "seed": 0},
        "model": {"widths": [2048, 32, 1], "activation": "smooth_leaky_relu(0.2)", "init": "lecun",
                  "dtype": "float64", "seed": 0},
        "train": {"lr": "auto", "steps": 20000, "rel_tol": 1e-9, "track_every": 50},
    },
}


def defaults() -> dict:
    """A fresh copy of the default config (every key of :data:`SCHEMA`)."""
    return {t: {k: copy.deepcopy(spec.default) for k, spec in keys.items()} for t, keys in SCHEMA.items()}


# --------------------------------------------------------------------------------------------- value checks
def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _bound_text(spec: Key) -> str:
    if spec.lo is None:
        return ""
    if spec.hi is not None:
        return f" in {'(' if spec.lo_open else '['}{spec.lo:g}, {spec.hi:g}{')' if spec.hi_open else ']'}"
    if spec.lo == 0 and spec.lo_open:
        return " > 0"
    if spec.lo == 0:
        return " >= 0"
    return f" {'>' if spec.lo_open else '>='} {spec.lo:g}"


def _number(name, v, spec: Key, integer: bool, what: str):
    given = v
    if integer:
        if _is_real(v) and not _is_int(v) and math.isfinite(float(v)) and float(v).is_integer():
            v = int(v)  # steps = 2e4 in TOML is a float
        if not _is_int(v):
            raise PyrgdError(f"{name}: expected {what}{_bound_text(spec)}, got {v!r}")
        v = int(v)
    else:
        if not _is_real(v) or not math.isfinite(float(v)):
            raise PyrgdError(f"{name}: expected {what}{_bound_text(spec)}, got {v!r}")
        v = float(v)
    if spec.lo is not None and (v < spec.lo or (spec.lo_open and v == spec.lo)):
        raise PyrgdError(f"{name}: expected {what}{_bound_text(spec)}, got {given!r}")
    if spec.hi is not None and (v > spec.hi or (spec.hi_open and v == spec.hi)):
        raise PyrgdError(f"{name}: expected {what}{_bound_text(spec)}, got {given!r}")
    return v


def _check_value(table: str, key: str, v):
    """The validated, normalized value of ``table.key``; PyrgdError naming the key otherwise."""
    spec = SCHEMA[table][key]
    name = f"{table}.{key}"
    kind = spec.kind
    if kind == "int":
        return _number(name, v, spec, True, "an integer")
    if kind == "float":
        return _number(name, v, spec, False, "a finite number")
    if kind == "bool":
        if not isinstance(v, bool):
            raise PyrgdError(f"{name}: expected true or false, got {v!r}")
        return v
    if kind == "str":
        if not isinstance(v, str):
            raise PyrgdError(f"{name}: expected a string, got {v!r}")
        if spec.choices and v not in spec.choices:
            raise PyrgdError(f"{name}: expected one of {', '.join(spec.choices)}, got {v!r}")
        return v
    if kind == "int_or_auto":
        if isinstance(v, str):
            if v.strip().lower() == "auto":
                return "auto"
            raise PyrgdError(f"{name}: expected \"auto\" or an integer >= {spec.lo:g}, got {v!r}")
        return _number(name, v, spec, True, '"auto" or an integer')
    if kind == "lr":
        if isinstance(v, str):
            if v.strip().lower() == "auto":
                return "auto"
            raise PyrgdError(f"{name}: expected \"auto\" or a positive number, got {v!r}")
        return _number(name, v, Key("float", None, "", lo=0.0, lo_open=True), False, '"auto" or a number')
    if kind == "activation":
        if not isinstance(v, str):
            raise PyrgdError(f"{name}: expected an activation name such as \"relu\" or \"leaky_relu(0.1)\", got {v!r}")
        try:
            return str(parse_activation(v))
        except PyrgdError as e:
            raise PyrgdError(f"{name}: {str(e).split(': ', 1)[-1]}") from None
    if kind in ("int_list", "float_list", "float_or_list"):
        if kind == "float_or_list" and not isinstance(v, (list, tuple)):
            return _number(name, v, spec, False, "a number or a list of numbers")
        if not isinstance(v, (list, tuple)):
            raise PyrgdError(f"{name}: expected a list of {'integers' if kind == 'int_list' else 'numbers'}, "
                             f"got {v!r}")
        integer = kind == "int_list"
        what = "an integer" if integer else "a number"
        return [_number(f"{name}[{i}]", x, spec, integer, what) for i, x in enumerate(v)]
    raise AssertionError(kind)  # pragma: no cover


def _unknown_key(table: str, key) -> PyrgdError:
    return PyrgdError(f"{table}.{key}: unknown key; valid keys of [{table}] are: {', '.join(SCHEMA[table])}")


def _check_partial(cfg, where: str) -> dict:
    """Validate a partial config (any subset of tables and keys); return a normalized deep copy."""
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise PyrgdError(f"{where}: expected a dict of tables ({', '.join(TABLES)}), got {type(cfg).__name__}")
    out: dict = {}
    for table, body in cfg.items():
        if isinstance(table, str) and "." in table and table.split(".", 1)[0] in SCHEMA:
            t, k = table.split(".", 1)  # a dotted override "train.steps": 5
            body = {k: body}
            table = t
        if table not in SCHEMA:
            owners = [t for t in TABLES if table in SCHEMA[t]]
            if owners and not isinstance(body, dict):
                raise PyrgdError(f"{where}: key {table!r} is outside any table; it belongs in [{owners[0]}] "
                                 f"(valid tables are: {', '.join(TABLES)})")
            raise PyrgdError(f"{where}: unknown table [{table}]; valid tables are: {', '.join(TABLES)}")
        if not isinstance(body, dict):
            raise PyrgdError(f"{where}: [{table}] must be a table of keys, got {body!r}")
        dest = out.setdefault(table, {})
        for key, v in body.items():
            if key not in SCHEMA[table]:
                raise _unknown_key(table, key)
            dest[key] = _check_value(table, key, v)
    return out


def _merge(base: dict, layer: dict) -> None:
    for table, body in layer.items():
        base[table].update(copy.deepcopy(body))


def resolve_config(preset=None, file_cfg=None, overrides=None) -> dict:
    """The full config: defaults < preset < file_cfg < overrides.

    preset: a name in :data:`PRESETS` or None. file_cfg: a (partial) config dict, e.g. from :func:`load_config`.
    overrides: a partial config, as nested tables ``{"train": {"steps": 5}}`` or dotted keys
    ``{"train.steps": 5}``. Values must have their schema type (see :func:`coerce_value` for strings from a
    command line). Returns a new dict with every table and key.
    """
    cfg = defaults()
    if preset is not None:
        if not isinstance(preset, str) or preset not in PRESETS:
            raise PyrgdError(f"preset: unknown preset {preset!r}; valid presets are: {', '.join(PRESETS)}")
        _merge(cfg, _check_partial(PRESETS[preset], f"preset {preset!r}"))
    _merge(cfg, _check_partial(file_cfg, "config"))
    _merge(cfg, _check_partial(overrides, "overrides"))
    return cfg

