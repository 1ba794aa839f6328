"""Run configurations: the schema with its defaults, presets, TOML files, and building a run from a config.

A config is a dict of three tables, the same as the TOML file::

    [data]   source = "synthetic" | "digits" | "file"; N, d, n_out, inputs, targets, seed, teacher_width,
             teacher_activation, path, y_path, x_key, y_key
    [model]  widths, activation, init, init_std, beta, zero_layer, seed, dtype, multipliers, allow_non_pyramidal
    [train]  lr ("auto" or a float), steps, tol, rel_tol, track_every, time_budget, divergence_factor, backend,
             method, threads

Every key always has a value (TOML has no null): ``time_budget = 0`` means no budget, ``path = ""`` / ``y_path = ""``
no file, ``zero_layer = 0`` the last layer, ``multipliers = []`` all ones. :data:`SCHEMA` lists every key with its
default and meaning. Values are resolved as defaults < preset < file < overrides (:func:`resolve_config`); every
bad table, key or value raises :class:`pyrgd.errors.PyrgdError` naming ``table.key`` and what was expected.
"""
from __future__ import annotations

import copy
import math
import numbers
import os
import sys
from dataclasses import dataclass

from .activations import parse_activation
from .data import INPUT_KINDS, SOURCES, TARGET_KINDS
from .errors import PyrgdError
from .model import INIT_SCHEMES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["SCHEMA", "PRESETS", "TABLES", "defaults", "load_config", "resolve_config", "dump_config", "build",
           "coerce_value", "parse_assignment", "train_kwargs"]

TABLES = ("data", "model", "train")
BACKEND_NAMES = ("auto", "cpu", "reference", "cuda")


@dataclass(frozen=True)
class Key:
    """One config key: its kind, default and constraints.

    kind: 'int', 'float', 'str', 'bool', 'lr' ("auto" or a positive float), 'activation' (a name such as
    "smooth_leaky_relu(0.2)", stored normalized), 'int_list', 'float_list', 'float_or_list'.
    lo: smallest allowed value (numbers and list items); lo_open: the bound itself is excluded.
    choices: the allowed strings.
    """

    kind: str
    default: object
    doc: str
    lo: float | None = None
    lo_open: bool = False
    choices: tuple = ()


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
        "track_every": Key("int", 100, "steps between two certificate evaluations", lo=1),
        "time_budget": Key("float", 0.0, "most seconds of training (0: no budget)", lo=0.0),
        "divergence_factor": Key("float", 1e6, "stop as diverged when loss > factor * initial loss", lo=1.0,
                                 lo_open=True),
        "backend": Key("str", "auto", "wide-layer backend", choices=BACKEND_NAMES),
        "method": Key("str", "auto", "GD step method: auto (the faster for the shapes), rows (cpu only) or neurons "
                      "(memory-lean: no gradient arrays of the wide layer)", choices=("auto", "rows", "neurons")),
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


# --------------------------------------------------------------------------------------------- TOML files
def load_config(path) -> dict:
    """Read a TOML config file and validate it; returns the (partial) config it holds, without defaults.

    A missing or unreadable file, a TOML syntax error (the message names the line), an unknown table or key, or a
    value of the wrong type raises PyrgdError naming the path.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise PyrgdError(f"config: expected the path of a TOML file, got {path!r}")
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise PyrgdError(f"config: file not found: {path}") from None
    except IsADirectoryError:
        raise PyrgdError(f"config: {path} is a folder, expected a TOML file") from None
    except OSError as e:
        raise PyrgdError(f"config: cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise PyrgdError(f"config: {path} is not UTF-8 text ({e.reason})") from None
    except tomllib.TOMLDecodeError as e:
        raise PyrgdError(f"config: TOML syntax error in {path}: {e}") from None
    try:
        return _check_partial(raw, "config")
    except PyrgdError as e:
        raise PyrgdError(f"{e} (in {path})") from None


def _toml_text(cfg: dict) -> str:
    try:
        import tomli_w
    except ImportError:  # pragma: no cover - a declared dependency
        from .errors import BackendUnavailable

        raise BackendUnavailable("writing a TOML config needs tomli-w: pip install tomli-w") from None
    return tomli_w.dumps(cfg)


def dump_config(cfg: dict) -> str:
    """TOML text of a (full or partial) config; :func:`load_config` of that text gives back the same dict."""
    clean = _check_partial(cfg, "config")
    ordered = {t: {k: clean[t][k] for k in SCHEMA[t] if k in clean[t]} for t in TABLES if t in clean}
    return "# pyrgd run configuration (see pyrgd.config.SCHEMA for every key)\n" + _toml_text(ordered)


# --------------------------------------------------------------------------------------------- command-line values
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def coerce_value(table: str, key: str, text: str):
    """Turn the text of a command-line value into the typed value of ``table.key`` (then validated).

    Lists may be written ``1024,16,1`` or ``[1024, 16, 1]``; booleans true/false/yes/no/1/0; strings need no quotes.
    """
    if table not in SCHEMA:
        raise PyrgdError(f"--set: unknown table [{table}]; valid tables are: {', '.join(TABLES)}")
    if key not in SCHEMA[table]:
        raise _unknown_key(table, key)
    kind = SCHEMA[table][key].kind
    name = f"{table}.{key}"
    s = text.strip()

    def num(x, integer):
        x = x.strip()
        try:
            return int(x) if integer else float(x)
        except ValueError:
            if integer:  # 2e4 for steps
                try:
                    f = float(x)
                except ValueError:
                    f = None
                if f is not None and math.isfinite(f) and f.is_integer():
                    return int(f)
            raise PyrgdError(f"{name}: expected {'an integer' if integer else 'a number'}, got {text!r}") from None

    if kind in ("str", "activation"):
        if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
            s = s[1:-1]
        value = s
    elif kind == "int":
        value = num(s, True)
    elif kind == "float":
        value = num(s, False)
    elif kind == "lr":
        value = "auto" if s.lower() == "auto" else num(s, False)
    elif kind == "bool":
        if s.lower() in _TRUE:
            value = True
        elif s.lower() in _FALSE:
            value = False
        else:
            raise PyrgdError(f"{name}: expected true or false, got {text!r}")
    else:  # lists
        inner = s[1:-1] if s.startswith("[") and s.endswith("]") else s
        if kind == "float_or_list" and not s.startswith("[") and "," not in s:
            value = num(s, False)
        else:
            items = [x for x in inner.split(",") if x.strip()] if inner.strip() else []
            value = [num(x, kind == "int_list") for x in items]
    return _check_value(table, key, value)


def parse_assignment(item: str):
    """``"train.steps=500"`` -> ("train", "steps", 500), typed by :func:`coerce_value`."""
    if not isinstance(item, str) or "=" not in item:
        raise PyrgdError(f"--set: expected table.key=value (e.g. train.steps=500), got {item!r}")
    lhs, text = item.split("=", 1)
    parts = lhs.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise PyrgdError(f"--set: expected table.key=value with a table of {', '.join(TABLES)}, got {item!r}")
    table, key = parts
    return table, key, coerce_value(table, key, text)


# --------------------------------------------------------------------------------------------- building a run
def train_kwargs(cfg: dict) -> dict:
    """The keyword arguments of :func:`pyrgd.train` for the [train] table of a full config."""
    t = cfg["train"]
    return {
        "lr": t["lr"], "steps": t["steps"], "tol": t["tol"], "rel_tol": t["rel_tol"],
        "track_every": t["track_every"], "time_budget": t["time_budget"] or None,
        "divergence_factor": t["divergence_factor"], "backend": t["backend"], "threads": t["threads"] or None,
        "method": t["method"],
    }


def build(cfg: dict):
    """(net, X, Y, train_kwargs) for a config (partial configs are resolved over the defaults first).

    The data come from :func:`pyrgd.data.make_dataset` in the model's dtype; the PyramidalNet takes d from the data.
    The number of target columns must equal the last width.
    """
    from .data import make_dataset
    from .model import PyramidalNet

    cfg = resolve_config(file_cfg=cfg)
    m = cfg["model"]
    X, Y = make_dataset(cfg["data"], dtype=m["dtype"])
    if Y.shape[1] != m["widths"][-1]:
        raise PyrgdError(
            f"model.widths: the last width n_L = {m['widths'][-1]} must equal the number of target columns of the "
            f"data ({Y.shape[1]}); set model.widths = [..., {Y.shape[1]}]"
            + (" or data.n_out" if cfg["data"]["source"] != "file" else ""))
    try:
        net = PyramidalNet(
            d=X.shape[1], widths=m["widths"], activation=m["activation"], init=m["init"], seed=m["seed"],
            dtype=m["dtype"], multipliers=m["multipliers"] or None,
            init_std=m["init_std"] if m["init"] == "normal" else None, beta=m["beta"],
            zero_layer=m["zero_layer"] or None, allow_non_pyramidal=m["allow_non_pyramidal"])
    except PyrgdError as e:  # "widths: ..." -> "model.widths: ..."
        msg = str(e)
        head = msg.split(":", 1)[0].split("[", 1)[0]
        raise PyrgdError(f"model.{msg}" if head in SCHEMA["model"] else msg) from None
    return net, X, Y, train_kwargs(cfg)
