"""The experiments that compare the papers' guarantees with what gradient descent does (``pyrgd experiment``).

Each experiment is a TOML file (``experiments/E1.toml`` ... in the source tree)::

    [experiment]
    name = "E1"            # which experiment this file configures (E1 ... E5)
    title = "..."
    [params]               # every parameter of the experiment (all required; the numbers live in the file)
    ...
    [small]                # optional: values that replace [params] entries for --small

and produces, in its output folder, ``NAME.png`` (the figure), ``NAME.csv`` (its numbers; some experiments add
``NAME_*.csv``) and ``NAME.json`` (the parameters, the findings such as fitted slopes, and the runtime).

- E1 (:mod:`.e1_width`): width thresholds of two-layer ReLU nets: the smallest n_1 where GD converges against the
  smallest n_1 where Nguyen 2021, Theorem 2.2 certifies it.
- E2 (:mod:`.e2_ntk`): the smallest eigenvalue of the empirical NTK against N (Nguyen, Mondelli, Montufar 2021).
- E3 (:mod:`.e3_du`): Du et al. 2019's lambda_0 against depth, and finite-width Grams approaching K^(H).
- E4 (:mod:`.e4_contraction`): observed against PL-certified contraction along training.
- E5 (:mod:`.e5_rate`): Du et al. 2019's guaranteed rate against gradient descent on their deep networks.
"""
from __future__ import annotations

import os
import time

from ..errors import PyrgdError

__all__ = ["EXPERIMENTS", "find_experiment", "load_experiment", "run_experiment"]

#: experiment name -> module (imported lazily) and a one-line description
EXPERIMENTS = {
    "E1": ("e1_width", "width thresholds: GD convergence against Nguyen 2021 Thm 2.2 (two-layer ReLU, LeCun init)"),
    "E2": ("e2_ntk", "smallest eigenvalue of the empirical NTK against N (L = 3, ReLU, He init, n_1 = 8N)"),
    "E3": ("e3_du", "Du et al. 2019: lambda_0 against depth, and finite-width Grams approaching K^(H)"),
    "E4": ("e4_contraction", "observed against PL-certified contraction along training"),
    "E5": ("e5_rate", "Du et al. 2019's rate (1 - eta lambda_0/2)^k against GD on their deep nets, by width and step"),
}
_TABLES = ("experiment", "params", "small")


def _search_dirs():
    """Where ``NAME.toml`` is looked for: the source tree's experiments/ (beside the package), then the copy
    installed inside the package (pyrgd/_experiments)."""
    here = os.path.dirname(os.path.abspath(__file__))
    pkg = os.path.dirname(here)
    return [os.path.join(os.path.dirname(pkg), "experiments"), os.path.join(pkg, "_experiments")]


def find_experiment(name) -> str:
    """The path of the TOML file of experiment ``name`` (E1..E5), or ``name`` itself when it is a TOML file."""
    if not isinstance(name, (str, os.PathLike)) or not os.fspath(name):
        raise PyrgdError(f"name: expected an experiment name ({', '.join(EXPERIMENTS)}) or a TOML file, got {name!r}")
    name = os.fspath(name)
    if name.endswith(".toml"):
        if not os.path.isfile(name):
            raise PyrgdError(f"name: file not found: {name}")
        return name
    key = name.upper()
    if key not in EXPERIMENTS:
        raise PyrgdError(f"name: unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)} (or the path of a "
                         ".toml file)")
    tried = []
    for d in _search_dirs():
        p = os.path.join(d, f"{key}.toml")
        tried.append(p)
        if os.path.isfile(p):
            return p
    raise PyrgdError(f"name: the config {key}.toml of experiment {key} was not found (looked in "
                     f"{', '.join(tried)}); pass the path of the file, e.g. experiments/{key}.toml of the source tree")


def load_experiment(name, small=False) -> tuple[str, dict, dict, str]:
    """(experiment name, its [experiment] table, its parameters with [small] laid over them when ``small``, path)."""
    from .._toml import read_toml

    path = find_experiment(name)
    raw = read_toml(path, "name")
    for t in raw:
        if t not in _TABLES:
            raise PyrgdError(f"name: unknown table [{t}] in {path}; an experiment file has "
                             f"[{'], ['.join(_TABLES)}]")
    head = raw.get("experiment", {})
    exp = head.get("name") if isinstance(head, dict) else None
    if not isinstance(exp, str) or exp.upper() not in EXPERIMENTS:
        raise PyrgdError(f"experiment.name: {path} must name its experiment ({', '.join(EXPERIMENTS)}), got {exp!r}")
    exp = exp.upper()
    params = dict(raw.get("params", {}))
    if small:
        extra = raw.get("small")
        if not isinstance(extra, dict) or not extra:
            raise PyrgdError(f"small: {path} has no [small] table; run without --small")
        params.update(extra)
    return exp, head, params, path


def _module(exp):
    import importlib

    return importlib.import_module(f".{EXPERIMENTS[exp][0]}", __name__)


def run_experiment(name, out=None, small=False, progress=False) -> dict:
    """Run experiment ``name`` (E1..E5 or a TOML path) into the folder ``out`` (default ``runs/NAME`` or
    ``runs/NAME-small``); returns a dict with the paths written (figure, csv, json), the findings and the runtime.
    """
    if not isinstance(small, bool):
        raise PyrgdError(f"small: expected True or False, got {small!r}")
    exp, head, params, path = load_experiment(name, small)
    mod = _module(exp)
    p = mod.check(params)
    if out is None:
        out = os.path.join("runs", exp + ("-small" if small else ""))
    from ..runio import make_folder

    out = make_folder(out)
    t0 = time.perf_counter()
    res = mod.run(p, out, progress=progress)
    runtime = time.perf_counter() - t0
    from .. import __version__
    from ._common import write_json

    meta = {"experiment": exp, "title": head.get("title", EXPERIMENTS[exp][1]), "config": path, "small": small,
            "params": p, "findings": res.get("findings", {}), "runtime_s": runtime, "pyrgd": __version__,
            "files": {k: os.path.basename(v) for k, v in res.items() if k in ("figure", "csv") or k.startswith("csv_")}}
    json_path = os.path.join(out, f"{exp}.json")
    write_json(json_path, meta)
    return {**res, "json": json_path, "runtime_s": runtime, "experiment": exp, "out": out}
