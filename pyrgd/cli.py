"""The command line: ``pyrgd train``, ``info``, ``certify``, ``sweep`` and ``experiment`` (also ``python -m pyrgd``).

Exit codes (EXIT_CODES and EXIT_* below): 0 success (train: converged, max_steps or time budget reached); 1 diverged
(train); 2 bad input; 3 would not fit in memory, or out of memory; 4 a file could not be read or written; 70 an
internal error; 130 interrupted (Ctrl-C); 143 terminated (SIGTERM). Every failure is one line ``pyrgd: error: ...``
on stderr, no traceback (PYRGD_TRACEBACK=1 shows one for internal errors).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import warnings

from .errors import BackendUnavailable, PyrgdError, ResourceError, Terminated

__all__ = ["main", "build_parser", "EXIT_CODES"]

#: exit code per training status
EXIT_CODES = {"converged": 0, "max_steps": 0, "time_budget": 0, "diverged": 1, "interrupted": 130, "terminated": 143,
              "stopped_by_callback": 0}
EXIT_BAD_INPUT = 2
EXIT_RESOURCES = 3  # the run would not fit in memory (pyrgd.errors.ResourceError, or MemoryError)
EXIT_IO = 4  # a file could not be read or written (a full disk, a folder where a file was expected, permissions)
EXIT_INTERNAL = 70  # an unexpected error inside pyrgd (a bug: PYRGD_TRACEBACK=1 shows where)

#: convenience flags of ``pyrgd train``: (flag, destination, config keys it sets, help)
_FLAG_KEYS = (
    ("--N", "N", ("data.N",), "number of samples"),
    ("--d", "d", ("data.d",), "input dimension (synthetic data)"),
    ("--widths", "widths", ("model.widths",), "layer widths n_1,...,n_L, e.g. 1024,16,1"),
    ("--activation", "activation", ("model.activation",), "e.g. relu, tanh, smooth_leaky_relu(0.2)"),
    ("--init", "init", ("model.init",), "initialization scheme (lecun, he, xavier, normal, ...)"),
    ("--lr", "lr", ("train.lr",), "step size: a number or auto"),
    ("--steps", "steps", ("train.steps",), "most GD steps"),
    ("--rel-tol", "rel_tol", ("train.rel_tol",), "stop when loss/initial loss <= REL_TOL"),
    ("--tol", "tol", ("train.tol",), "stop when loss <= TOL"),
    ("--track-every", "track_every", ("train.track_every",),
     "steps between certificate evaluations: auto (within 10%% of the run's time), a number, or 0 (off)"),
    ("--checkpoint-every", "checkpoint_every", ("train.checkpoint_every",),
     "steps between checkpoints in the run folder: auto (every 10 minutes), a number, or 0 (off)"),
    ("--time-budget", "time_budget", ("train.time_budget",), "most seconds of training (0: none)"),
    ("--backend", "backend", ("train.backend",), "auto, cpu, reference or cuda"),
    ("--method", "method", ("train.method",), "GD step method: auto, rows (cpu) or neurons (memory-lean)"),
    ("--threads", "threads", ("train.threads",), "CPU threads of the kernels and the BLAS (0: default)"),
    ("--update", "update", ("train.update",), "update rule: gd, momentum (heavy ball) or nesterov"),
    ("--momentum", "momentum", ("train.momentum",), "beta of --update momentum or nesterov, in [0, 1)"),
    ("--dtype", "dtype", ("model.dtype",), "float32 or float64"),
    ("--seed", "seed", ("data.seed", "model.seed"), "seed of the data and of the initial weights"),
)


class _UsageError(Exception):
    """A bad command line (argparse's complaint), reported in one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print the usage and exit; we want one line
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def _ranks_arg(text: str) -> int:
    """``--ranks``: a positive integer (argparse names the argument in its message)."""
    t = str(text).strip()
    if not (t.isascii() and t.isdigit()) or int(t) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer (the number of MPI ranks), got {text!r}")
    return int(t)


def build_parser() -> argparse.ArgumentParser:
    from .config import PRESETS

    p = _Parser(prog="pyrgd", description="Full-batch gradient descent for deep networks with one wide first layer "
                                          "and a pyramidal tail.")
    from ._version import __version__

    p.add_argument("--version", action="version", version=f"pyrgd {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    t = sub.add_parser("train", help="train a network and write a run folder",
                       description="Train a network. Config values: defaults < --preset < --config < flags and --set. "
                                   "Exit code 0 converged or stopped at a limit, 1 diverged, 130 interrupted, "
                                   "143 terminated by SIGTERM (a checkpoint was written: --resume), 2 bad input, "
                                   "3 would not fit in memory.")
    _add_config_args(t, PRESETS)
    t.add_argument("--out", metavar="DIR", help="run folder (default: runs/<UTC time>-<preset or config name>)")
    t.add_argument("--json", action="store_true", help="print only the summary as JSON on stdout")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--print-config", action="store_true", help="print the resolved config as TOML and exit")
    t.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run of RUN_DIR from its checkpoint, bit for bit (its config.toml is the base "
                        "config; flags may change the stop rules, not the data or the model)")
    t.add_argument("--force", action="store_true", help="write into a non-empty --out folder (files are replaced)")
    t.add_argument("--dry-run", action="store_true",
                   help="print the plan (memory and time per part) without running; exit 3 if it would not fit")
    t.add_argument("--ranks", metavar="P", type=_ranks_arg,
                   help="with --dry-run: plan a run on P MPI ranks (mpiexec -n P): the memory and time of one rank, "
                        "the rank that needs the most (under mpiexec the plan is per rank without it)")
    _add_flag_shortcuts(t)

    i = sub.add_parser("info", help="versions and which backends work on this machine")
    i.add_argument("--json", action="store_true", help="print the report as JSON")

    c = sub.add_parser("certify", help="the convergence certificates of a config at initialization",
                       description="Build the network and data of a config (the same options as train) and print "
                                   "the certificates at initialization: sigma_min(F_1), the tail, the PL constant "
                                   "mu_0, Nguyen 2021 Thm 2.2 (each condition with its margin), the quantities of "
                                   "Nguyen & Mondelli 2020 (no verdict), the empirical NTK's lambda_min (n_L = 1) "
                                   "and Du et al. 2019's lambda_0 (unit-norm inputs). The step size is the config's "
                                   "train.lr ('auto': the one train would choose).")
    _add_config_args(c, PRESETS)
    c.add_argument("--json", action="store_true", help="print the certificates as JSON")
    c.add_argument("--C", dest="C", metavar="C", help="Nguyen 2021's constants C_l (default 1)")
    c.add_argument("--no-ntk", action="store_true", help="skip the empirical NTK")
    c.add_argument("--no-du", action="store_true", help="skip Du et al.'s lambda_0")
    _add_flag_shortcuts(c)

    s = sub.add_parser("sweep", help="train a grid of configs and record certificates and convergence",
                       description="Run every cell of a grid file ([grid] table of lists over N, n1 or n1_over_N, "
                                   "init, activation, tail or depth, seed, 'table.key'; plus base [data], [model], "
                                   "[train] tables) and write results.csv, summary.csv and plots into --out. "
                                   "An interrupted sweep continues with --resume.")
    s.add_argument("--grid", metavar="FILE.toml", required=True, help="the grid file")
    s.add_argument("--out", metavar="DIR", help="output folder (default: runs/sweeps/<grid file name>)")
    s.add_argument("--resume", action="store_true",
                   help="continue the sweep in --out, skipping its finished cells")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--json", action="store_true", help="print the summary rows as JSON")

    from .experiments import EXPERIMENTS

    e = sub.add_parser("experiment", help="run one of the experiments E1..E5 and draw its figure",
                       description="Run an experiment from its TOML file (" + "; ".join(
                           f"{k}: {v[1]}" for k, v in EXPERIMENTS.items()) + "). Writes NAME.png, NAME.csv and "
                       "NAME.json into --out.")
    e.add_argument("name", metavar="NAME", help=f"{', '.join(EXPERIMENTS)}, or the path of an experiment .toml")
    e.add_argument("--out", metavar="DIR", help="output folder (default: runs/NAME, runs/NAME-small)")
    e.add_argument("--small", action="store_true", help="the small variant of the experiment ([small] table)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.add_argument("--json", action="store_true", help="print the result (files, findings, runtime) as JSON")

    from .bench import add_bench_parser

    add_bench_parser(sub)  # `pyrgd bench` (pyrgd/bench)
    return p


def _add_config_args(p, presets):
    p.add_argument("--preset", metavar="NAME", help=f"start from a preset ({', '.join(presets)})")
    p.add_argument("--config", metavar="FILE.toml", help="a TOML config with [data], [model] and [train] tables")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="TABLE.KEY=VALUE",
                   help="set any config key, e.g. --set model.init=he --set data.inputs=gaussian (repeatable)")


def _add_flag_shortcuts(p):
    g = p.add_argument_group("shortcuts for config keys")
    for flag, dest, keys, help_text in _FLAG_KEYS:
        g.add_argument(flag, dest=dest, metavar=dest.upper(), help=f"{help_text} ({', '.join(keys)})")


# --------------------------------------------------------------------------------------------- train
def _overrides(args) -> dict:
    from .config import coerce_value, parse_assignment

    over: dict = {}
    for _flag, dest, keys, _help in _FLAG_KEYS:
        text = getattr(args, dest)
        if text is None:
            continue
        for dotted in keys:
            table, key = dotted.split(".")
            over.setdefault(table, {})[key] = coerce_value(table, key, text)
    for item in args.sets:  # --set comes last and wins over the shortcut flags
        table, key, value = parse_assignment(item)
        over.setdefault(table, {})[key] = value
    return over


def _default_out(args) -> str:
    if args.config:
        name = os.path.splitext(os.path.basename(args.config))[0]
    else:
        name = args.preset or "default"
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = os.path.join("runs", f"{stamp}-{name}")
    out, n = base, 2
    while os.path.exists(out):
        out, n = f"{base}-{n}", n + 1
    return out


def _make_out(out: str) -> bool:
    """Create the run folder now, so that a bad --out fails before training; True when this call created it."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise PyrgdError(f"--out: {out} exists and is not a folder")
    created = not os.path.exists(out)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise PyrgdError(f"--out: cannot create the run folder {out}: {e.strerror or e}") from None
    return created


def _remove_if_empty(out: str) -> None:
    try:
        if not os.listdir(out):
            os.rmdir(out)
    except OSError:
        pass


def _fmt(v, spec=".4g", missing="n/a"):
    if v is None:
        return missing
    try:
        return format(float(v), spec)
    except (TypeError, ValueError):
        return str(v)


def _human_summary(s: dict, out: str) -> str:
    lines = [
        f"status        {s.get('status', '?')}: {s.get('message', '')}".rstrip(),
        f"steps         {s.get('steps', 'n/a')}",
        f"loss          {_fmt(s.get('initial_loss'), '.6g')} -> {_fmt(s.get('final_loss'), '.6g')} "
        f"(relative {_fmt(s.get('relative_loss'), '.3g')})",
        f"median factor {_fmt(s.get('median_factor'), '.6g')}",
        f"wall time     {_fmt(s.get('wall_time_s'), '.3g')} s "
        f"(GD steps {_fmt(s.get('step_time_s'), '.3g')} s, tracking {_fmt(s.get('tracking_time_s'), '.3g')} s)",
        f"setup         backend {s.get('backend', '?')}"
        + (f" (GD step method {s['method']}"
           + (f", {s['kept_neurons']} of {s['widths'][0]} neurons kept" if s.get("kept_neurons") is not None
              and s.get("widths") and s["kept_neurons"] < s["widths"][0] else "") + ")" if s.get("method") else "")
        + f", {s.get('dtype', '?')}, lr {_fmt(s.get('lr'), '.4g')}"
        + (f" ({s['lr_rule']})" if s.get("lr_rule") else "")
        + (f", update {s['update']}" if s.get("update", "gd") != "gd" else ""),
        f"run folder    {out}",
    ]
    dist = s.get("distributed")
    if dist:  # mpiexec -n P pyrgd train
        per = dist.get("neurons_per_rank")
        lines.insert(-1, f"ranks         {dist.get('ranks')}" + (f" (neurons per rank {', '.join(map(str, per))})"
                                                                 if per else "")
                     + "; certificates on rank 0")
    return "\n".join(lines)


def _cmd_train(args) -> int:
    from .distributed import launched_by_mpi

    if launched_by_mpi():  # mpiexec -n P pyrgd train ...: the wide layer sharded over the ranks
        return _cmd_train_mpi(args)
    return _cmd_train_one(args)


def _cmd_train_mpi(args) -> int:
    """``pyrgd train`` on every rank of MPI's COMM_WORLD: rank 0 chooses and makes the run folder, prints; the others
    print nothing (an error anywhere is one line from rank 0, :func:`pyrgd.distributed.agree`)."""
    global _QUIET
    from .distributed import agree, world

    env_rank = next((os.environ[k] for k in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK") if k in os.environ), "0")
    _QUIET = env_rank.strip() not in ("", "0")  # before world(): without mpi4py, one message from rank 0 too
    comm = world()
    _QUIET = comm.Get_rank() != 0
    try:
        out, err = (_mpi_out(args) if comm.Get_rank() == 0 else None), None
    except Exception as e:  # a bad --out, a folder not empty, ...: every rank ends with rank 0's message
        out, err = None, e
    out = agree(comm, out, err)
    return _cmd_train_one(args, comm=comm, out=out)


def _mpi_out(args) -> str:
    if args.print_config or args.dry_run:
        return ""
    if args.resume:
        return args.resume
    return args.out if args.out else _default_out(args)


def _cmd_train_one(args, comm=None, out=None) -> int:
    from . import config as C
    from .runio import json_safe

    rank = 0 if comm is None else comm.Get_rank()

    if args.resume:
        if args.out and os.path.abspath(args.out) != os.path.abspath(args.resume):
            raise PyrgdError("--out: a resumed run continues in its own folder (--resume RUN_DIR); leave --out out")
        if args.config or args.preset:
            raise PyrgdError("--resume: the run's own config.toml is the config; leave --config and --preset out")
        args.config = os.path.join(args.resume, "config.toml")
        if not os.path.isfile(args.config):
            raise PyrgdError(f"--resume: {args.resume} has no config.toml (is it a pyrgd run folder?)")
    if args.ranks is not None and not args.dry_run:
        raise PyrgdError(f"--ranks: plans a run on {args.ranks} ranks with --dry-run; to run on {args.ranks} ranks, "
                         f"launch it: mpiexec -n {args.ranks} pyrgd train ...")
    cfg = _resolved_config(args)
    if args.print_config:
        if rank == 0:
            sys.stdout.write(C.dump_config(cfg))
        return 0
    if args.dry_run:
        ranks, sharing = args.ranks, 1
        if ranks is None and comm is not None:  # under mpiexec: this run's ranks, and those sharing rank 0's host
            from .distributed import ranks_on_this_host

            ranks, sharing = comm.Get_size(), ranks_on_this_host(comm)  # collective: before the others return
        if rank != 0:
            return 0
        plan = C.plan(cfg)
        if ranks is not None:
            try:
                plan = plan.for_ranks(ranks, sharing=sharing)
            except PyrgdError as e:
                if args.ranks is None or not str(e).startswith("ranks: "):
                    raise
                raise PyrgdError(f"--{e}") from None
        if args.json:
            sys.stdout.write(json.dumps(json_safe(plan.as_dict()), indent=2) + "\n")
        else:
            print(plan.format())
        plan.check()
        return 0
    if comm is None:
        C.plan(cfg, timing=False).check()  # refuse a run that would not fit before making its data
    else:  # each rank its own plan, against its share of its host's memory (or GPU); every rank refuses together
        from .distributed import ranks_on_this_host, use_rank_device

        # GPU ranks: each takes GPU (local rank mod GPUs) first, so that its plan reads that GPU's free memory and
        # no rank makes a context on another's
        sharing = use_rank_device(comm)[1] if cfg["train"].get("backend") == "cuda" else ranks_on_this_host(comm)
        rank_plan = C.plan(cfg, timing=False).for_ranks(comm.Get_size(), rank=rank, sharing=sharing)
        if cfg["train"].get("method") == "auto":  # the method the ranks shard: config.toml then resumes in one
            cfg["train"]["method"] = rank_plan.method  # process with the same bits
        rank_plan.check(comm)
    net, X, Y, kwargs = C.build(cfg)
    if comm is not None and kwargs.get("threads") is None and cfg["train"].get("backend") != "cuda":
        from .distributed import threads_per_rank

        kwargs["threads"] = threads_per_rank(sharing)  # the host's CPUs shared by its ranks, not each taking all
    if out is None:
        out = args.resume or (args.out if args.out else _default_out(args))
    created = False
    if comm is None:
        created = _check_and_make_out(args, out)
    else:  # rank 0 makes the folder; an error there ends every rank
        from .distributed import agree

        try:
            created, err = (_check_and_make_out(args, out) if rank == 0 else False), None
        except Exception as e:
            err = e
        agree(comm, None, err)
    try:
        from .train import train

        if comm is not None:
            kwargs["comm"] = comm
        result = train(net, X, Y, progress=not args.no_progress, out=out, config=cfg, resume=args.resume,
                       **kwargs)
    except BaseException:  # nothing was trained (bad backend, ...): leave no empty run folder behind
        if created:
            _remove_if_empty(out)
        raise
    summary = dict(result.summary)
    if rank != 0:
        return EXIT_CODES.get(result.status, 1)
    if args.json:
        summary.setdefault("run_folder", out)
        sys.stdout.write(json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n")
    else:
        print(_human_summary(summary, out))
    sys.stdout.flush()
    return EXIT_CODES.get(result.status, 1)


def _check_and_make_out(args, out) -> bool:
    if not args.resume and not args.force and os.path.isdir(out) and os.listdir(out):
        raise PyrgdError(f"--out: {out} is not empty; choose a new folder, continue its run with --resume {out}, or "
                         "replace its files with --force")
    return _make_out(out)


def _resolved_config(args) -> dict:
    from . import config as C

    file_cfg = C.load_config(args.config) if args.config else None
    return C.resolve_config(preset=args.preset, file_cfg=file_cfg, overrides=_overrides(args))


# --------------------------------------------------------------------------------------------- certify
def _cmd_certify(args) -> int:
    from . import config as C
    from ._validate import check_scalar
    from .certify import certify, format_certificate
    from .runio import json_safe

    cfg = _resolved_config(args)
    Cval = 1.0
    if args.C is not None:
        try:
            Cval = float(args.C)
        except ValueError:
            raise PyrgdError(f"--C: expected a positive number, got {args.C!r}") from None
        Cval = check_scalar("--C", Cval, positive=True)
    net, X, Y, kwargs = C.build(cfg)
    backend = kwargs["backend"] if kwargs["backend"] in ("cpu", "reference") else "auto"  # certify runs on the host
    d = certify(net, X, Y, lr=kwargs["lr"], C=Cval, ntk=not args.no_ntk, du=not args.no_du, backend=backend)
    if args.json:
        sys.stdout.write(json.dumps(json_safe(d), indent=2, allow_nan=False) + "\n")
    else:
        print(format_certificate(d))
    return 0


# --------------------------------------------------------------------------------------------- sweep
def _cmd_sweep(args) -> int:
    global _QUIET
    from .distributed import launched_by_mpi
    from .runio import json_safe
    from .sweep import format_summary, load_grid, run_sweep, summarize

    comm = None
    if launched_by_mpi():  # mpiexec -n P pyrgd sweep: the cells farmed out over the ranks, rank 0 prints
        from .distributed import world

        comm = world()
        _QUIET = comm.Get_rank() != 0
    grid_cfg = load_grid(args.grid)
    out = args.out or os.path.join("runs", "sweeps", os.path.splitext(os.path.basename(args.grid))[0])
    err = None
    if not args.resume and os.path.exists(os.path.join(out, "results.csv")):
        err = PyrgdError(f"--out: {out} already holds a sweep (results.csv); pass --resume to continue it, or "
                         "choose another --out")
    if comm is not None:
        from .distributed import agree

        agree(comm, None, err if comm.Get_rank() == 0 else None)  # rank 0's view of the folder decides
    elif err is not None:
        raise err
    rows = run_sweep(grid_cfg, out, resume=args.resume, progress=not args.no_progress, comm=comm)
    if comm is not None and comm.Get_rank() != 0:
        return 0
    summary = summarize(rows)
    if args.json:
        sys.stdout.write(json.dumps(json_safe({"out": out, "cells": len(rows), "summary": summary}), indent=2,
                                    allow_nan=False) + "\n")
    else:
        print(format_summary(summary))
        print(f"\n{len(rows)} cells; results.csv, summary.csv, heatmap.png, final_loss.png in {out}")
    return 0


# --------------------------------------------------------------------------------------------- experiment
def _cmd_experiment(args) -> int:
    from .experiments import run_experiment
    from .runio import json_safe

    res = run_experiment(args.name, out=args.out, small=args.small, progress=not args.no_progress)
    if args.json:
        sys.stdout.write(json.dumps(json_safe(res), indent=2, allow_nan=False) + "\n")
    else:
        print(f"{res['experiment']} done in {res['runtime_s']:.1f} s: figure {res['figure']}, numbers {res['csv']}, "
              f"findings {res['json']}")
    return 0


# --------------------------------------------------------------------------------------------- info
def _cmd_bench(args) -> int:
    from .bench import run_bench

    return run_bench(args)


def _cmd_info(args) -> int:
    from .info import collect_info, format_info

    d = collect_info()
    if args.json:
        sys.stdout.write(json.dumps(d, indent=2, default=str) + "\n")
    else:
        print(format_info(d))
    return 0


#: True on the ranks > 0 of `mpiexec -n P pyrgd train`: rank 0 alone prints errors (the ranks agree on them)
_QUIET = False


#: the last error message of this command (for :func:`pyrgd.distributed.end_together`)
_LAST_ERROR = None


def _error(msg: str) -> int:
    global _LAST_ERROR
    msg = " ".join(str(msg).split())  # one line, whatever the message held
    _LAST_ERROR = msg
    if not _QUIET:
        print(f"pyrgd: error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"pyrgd: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv=None) -> int:
    """Run the command line with ``argv`` (default sys.argv[1:]); returns the exit code."""
    global _LAST_ERROR
    _LAST_ERROR = None
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # one line per warning, no source line
        code = _main(argv)
    if code in (EXIT_BAD_INPUT, EXIT_RESOURCES, EXIT_IO, EXIT_INTERNAL) and _LAST_ERROR is not None:
        from .distributed import end_together  # under mpiexec: an error on one rank alone ends every rank

        end_together(_LAST_ERROR, code, printed=not _QUIET)
    return code


def _main(argv) -> int:
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help and --version exit through argparse
            return int(e.code or 0) if not isinstance(e.code, str) else _error(e.code)
        commands = {"train": _cmd_train, "info": _cmd_info, "certify": _cmd_certify, "sweep": _cmd_sweep,
                    "experiment": _cmd_experiment, "bench": _cmd_bench}
        return commands[args.command](args)
    except _UsageError as e:
        return _error(str(e))
    except ResourceError as e:
        _error(str(e))
        return EXIT_RESOURCES
    except MemoryError:
        _error("out of memory; `pyrgd train --dry-run` shows what a run needs (smaller data.N or model.widths)")
        return EXIT_RESOURCES
    except (EOFError, RecursionError, UnicodeDecodeError) as e:  # truncated or malformed input files
        return _error(f"cannot read the input: {type(e).__name__}: {e}")
    except (PyrgdError, BackendUnavailable) as e:
        return _error(str(e))
    except KeyboardInterrupt:
        if not _QUIET:
            print("pyrgd: interrupted", file=sys.stderr)
        return EXIT_CODES["interrupted"]
    except Terminated as e:
        if not _QUIET:  # every rank of a sweep under mpiexec stops: one line, rank 0's
            print(f"pyrgd: {e}", file=sys.stderr)
        return EXIT_CODES["terminated"]
    except BrokenPipeError:  # e.g. `pyrgd info | head -1`
        try:  # silence the flush at exit, as the Python docs advise
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except OSError as e:
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        _error(f"{where}{e.strerror or e}")
        return EXIT_IO
    except Exception as e:  # a bug: one line, the traceback on request
        if os.environ.get("PYRGD_TRACEBACK"):
            raise
        _error(f"internal error: {type(e).__name__}: {e} (set PYRGD_TRACEBACK=1 to see where; please report it)")
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
