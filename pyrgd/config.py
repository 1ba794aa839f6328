"""Run configurations: TOML files, command-line values, and building a run from a config.

The schema with its defaults, the presets and :func:`resolve_config` live in :mod:`pyrgd.schema` and are
re-exported here.

A config is a dict of three tables, the same as the TOML file::

    [data]   source = "synthetic" | "digits" | "file"; N, d, n_out, inputs, targets, seed, teacher_width,
             teacher_activation, path, y_path, x_key, y_key
    [model]  widths, activation, init, init_std, beta, zero_layer, seed, dtype, multipliers, allow_non_pyramidal
    [train]  lr ("auto" or a float), steps, tol, rel_tol, track_every, time_budget, divergence_factor, backend,
             method, threads, update, momentum

Every key always has a value (TOML has no null): ``time_budget = 0`` means no budget, ``path = ""`` / ``y_path = ""``
no file, ``zero_layer = 0`` the last layer, ``multipliers = []`` all ones. :data:`SCHEMA` lists every key with its
default and meaning. Values are resolved as defaults < preset < file < overrides (:func:`resolve_config`); every
bad table, key or value raises :class:`pyrgd.errors.PyrgdError` naming ``table.key`` and what was expected.
"""
from __future__ import annotations

import math

from .errors import PyrgdError
from .schema import (BACKEND_NAMES, PRESETS, SCHEMA, TABLES, Key, _check_partial, _check_value,  # noqa: F401
                     _unknown_key, defaults, resolve_config)


__all__ = ["SCHEMA", "PRESETS", "TABLES", "defaults", "load_config", "resolve_config", "dump_config", "build",
           "coerce_value", "parse_assignment", "train_kwargs"]


# --------------------------------------------------------------------------------------------- TOML files
def load_config(path) -> dict:
    """Read a TOML config file and validate it; returns the (partial) config it holds, without defaults.

    A missing or unreadable file, a TOML syntax error (the message names the line), an unknown table or key, or a
    value of the wrong type raises PyrgdError naming the path.
    """
    from ._toml import read_toml

    raw = read_toml(path, "config")
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
    elif kind == "int_or_auto":
        value = "auto" if s.lower() == "auto" else num(s, True)
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
        "track_every": t["track_every"], "track_route": t["track_route"],
        "checkpoint_every": t["checkpoint_every"], "time_budget": t["time_budget"] or None,
        "divergence_factor": t["divergence_factor"], "backend": t["backend"], "threads": t["threads"] or None,
        "method": t["method"], "update": _update_spec(t["update"], t["momentum"]),
    }


def _update_spec(name: str, beta: float) -> str:
    """The ``update`` argument of :func:`pyrgd.train` for train.update and train.momentum: 'gd' or 'momentum(0.9)'."""
    from .update_rules import parse_update

    return "gd" if name == "gd" else parse_update(f"{name}({beta!r})").spec()


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


def plan(cfg: dict, timing: bool = True):
    """The :class:`pyrgd.plan.Plan` of a config's run, without training and, for synthetic data, without making
    the data (other sources are read to learn their shape). timing: estimate the times too."""
    from . import ops
    from .activations import parse_activation
    from .plan import plan_run

    cfg = resolve_config(file_cfg=cfg)
    d_cfg, m, t = cfg["data"], cfg["model"], cfg["train"]
    if d_cfg["source"] == "synthetic":
        N, d = d_cfg["N"], d_cfg["d"]
    else:
        from .data import make_dataset

        X, _ = make_dataset(d_cfg, dtype=m["dtype"])
        N, d = X.shape
        del X
    backend = t["backend"]
    if backend == "auto":
        backend = ops.resolve_backend("auto", __import__("numpy"))
    return plan_run(N, d, m["widths"], m["dtype"], parse_activation(m["activation"]), backend, t["method"], t["lr"],
                    t["track_every"], t["steps"], t["track_route"], timing=timing)
