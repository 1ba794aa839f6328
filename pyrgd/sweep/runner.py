"""Running a sweep: one cell (certificates at initialization, then GD), and the grid's cells into an output folder
with resume (the cells already in results.csv are skipped; a changed base config is refused) and a progress bar."""
from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings

from ..errors import PyrgdError
from .grid import parse_grid
from .report import _write_rows, plot_final_loss, plot_heatmap, read_results, summarize

#: the columns of results.csv after the cell's parameters
RESULT_COLUMNS = ("lr", "lr_rule", "status", "converged", "steps", "steps_to_tol", "initial_loss", "final_loss",
                  "relative_loss", "median_factor", "wall_time_s", "sigma_min_F1", "mu_0", "certified_factor_0",
                  "nguyen_applies", "nguyen_conditions_hold", "nguyen_holds", "nguyen_margin_initW",
                  "nguyen_margin_initF", "nguyen_margin_initS", "nguyen_eta_max", "nguyen_eta_ok",
                  "nguyen_rate_factor")

_RESULTS, _SUMMARY, _META, _GRID_FILE = "results.csv", "summary.csv", "sweep.json", "grid.toml"


# --------------------------------------------------------------------------------------------- one cell
def run_cell(cfg: dict, *, C=1.0) -> dict:
    """Build, certify at initialization and train one config; returns the result columns (:data:`RESULT_COLUMNS`).

    The step size: a number from the config, or "auto" resolved once here (train's rule) and passed to train.
    """
    from ..certify import _resolve_lr
    from ..config import build
    from ..theory import nguyen2021_certificate, nm2020_quantities
    from ..train import train

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
        "_stopped": res.status if res.status in ("interrupted", "terminated") else None,
    }


# --------------------------------------------------------------------------------------------- the sweep
def _base_fingerprint(base: dict) -> str:
    return json.dumps(base, sort_keys=True)


def run_sweep(grid_cfg, out, resume=True, *, progress=False, C=1.0, plots=True, comm=None) -> list:
    """Run every cell of a grid (a dict or a TOML path) into the folder ``out``; returns the rows of all the grid's
    cells (those run now and those found finished), in grid order.

    resume: skip the cells already in ``out/results.csv`` (their base config must be the same); False starts over
    (an existing results.csv is replaced). progress: a tqdm bar over the cells (stderr) with the time left.
    C: Nguyen 2021's constants. plots: draw heatmap.png and final_loss.png.
    If a cell is interrupted (Ctrl-C) or terminated (SIGTERM), the finished cells stay on disk, no further cell runs
    and KeyboardInterrupt (Ctrl-C) or :class:`pyrgd.errors.Terminated` (SIGTERM) is raised.

    comm: None, or an mpi4py communicator (call run_sweep on every rank with the same arguments): the cells are
    farmed out over its ranks, one process per cell, in rounds (round k: rank r runs the (k P + r)-th cell still to
    run); after each round rank 0 writes every finished cell to results.csv, in the order one process would, and
    alone writes files and shows the bar. A cell's result does not depend on the rank that ran it. A cell whose
    config leaves ``train.threads`` at 0 runs on the CPUs of its host divided among the ranks on that host. An
    error on one rank ends every rank with that rank's message (:class:`pyrgd.distributed.RankError`); a signal
    that stops a cell on one rank stops the sweep after that round.
    """
    grid = parse_grid(grid_cfg)
    if comm is None:
        done_rows, lock = _prepare(grid, out, resume, C)
        try:
            return _run_cells(grid, os.fspath(out), done_rows, progress, C, plots, None)
        finally:
            _unlock(lock)
    from ..distributed import agree, check_comm, ranks_on_this_host, threads_per_rank

    check_comm(comm)
    per_host = ranks_on_this_host(comm)  # collective
    done_rows, lock, err = None, None, None
    if comm.Get_rank() == 0:
        try:
            done_rows, lock = _prepare(grid, out, resume, C)
        except Exception as e:  # whatever rank 0 meets here ends every rank (none is left waiting)
            err = e
    done_rows = agree(comm, done_rows, err)
    threads = threads_per_rank(per_host)
    for _, _, cfg in grid.cells:
        if not cfg["train"].get("threads"):
            cfg["train"]["threads"] = threads
    try:
        return _run_cells(grid, os.fspath(out), done_rows, progress and comm.Get_rank() == 0, C, plots, comm)
    finally:
        _unlock(lock)


#: the file a running sweep holds in its folder (host and process id): a second sweep there is refused
_LOCK = ".sweep.lock"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _lock(out: str) -> str:
    """Take the folder's lock (:data:`_LOCK`, created exclusively); returns its path. A lock left by a sweep that
    died on this host is taken over; PyrgdError naming ``out`` while another sweep holds it (two sweeps writing one
    results.csv would lose one's cells)."""
    import socket

    path, host = os.path.join(out, _LOCK), socket.gethostname()
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(path, encoding="utf-8") as f:
                    owner_host, owner_pid = f.read().split()
            except (OSError, ValueError):
                owner_host, owner_pid = "?", "?"
            if owner_host == host and owner_pid.isdigit() and not _process_alive(int(owner_pid)):
                os.unlink(path)  # its sweep was killed: the lock is stale
                continue
            raise PyrgdError(f"out: another sweep (process {owner_pid} on {owner_host}) is writing {out}; wait for it "
                             f"to end, or remove {path} if it is gone") from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"{host} {os.getpid()}\n")
        return path
    raise PyrgdError(f"out: cannot take the sweep lock {path}")


def _unlock(path) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _prepare(grid, out, resume, C) -> tuple[list, str]:
    """Make the folder ``out``, take its lock (:func:`_lock`), check a resumed sweep's base config, write sweep.json
    and grid.toml; returns (the rows already finished (resume) or [], the lock's path)."""
    from ..runio import make_folder

    out = make_folder(out)
    lock = _lock(out)
    try:
        return _prepare_locked(grid, out, resume, C), lock
    except BaseException:
        _unlock(lock)
        raise


def _prepare_locked(grid, out, resume, C) -> list:
    from ..runio import atomic_write, json_safe

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
    return done_rows


def _run_cells(grid, out, done_rows, progress, C, plots, comm) -> list:
    """The cells of ``grid`` not in ``done_rows``, in rounds of one cell per rank (one round: one cell without
    ``comm``); results.csv rewritten after each round (rank 0), then summary.csv and the plots."""
    rank, size = (0, 1) if comm is None else (int(comm.Get_rank()), int(comm.Get_size()))
    res_path = os.path.join(out, _RESULTS)
    by_id = {r["cell"]: r for r in done_rows}
    todo = [c for c in grid.cells if c[0] not in by_id]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(grid), initial=len(grid) - len(todo), unit="cell", desc="sweep", file=sys.stderr,
                   dynamic_ncols=True, leave=True)
    stopped = None  # "interrupted" or "terminated": the cell that was running when a signal came
    try:
        for k in range(0, len(todo), size):
            batch = todo[k:k + size]
            if bar is not None:
                _, params, _ = batch[0]
                bar.set_postfix_str(f"N={params['N']} n1={params['n1']} seed={params['seed']}" +
                                    (f" (+{len(batch) - 1} on other ranks)" if len(batch) > 1 else ""), refresh=True)
            row, stop, err = None, None, None
            if rank < len(batch):
                cid, params, cfg = batch[rank]
                t0 = time.perf_counter()
                try:
                    result = run_cell(cfg, C=C)
                    stop = result.pop("_stopped")
                    if not stop:
                        row = {"cell": cid, **params, **result, "cell_time_s": time.perf_counter() - t0}
                except BaseException as e:  # on one rank of several: every rank learns of it at the allgather
                    if comm is None:
                        raise
                    from ..errors import Terminated

                    if isinstance(e, KeyboardInterrupt):  # a signal outside train (building, certificates)
                        stop = "interrupted"
                    elif isinstance(e, Terminated):
                        stop = "terminated"
                    else:
                        err = e
            if comm is None:
                finished, stop_any = [row] if row else [], stop
            else:
                from ..distributed import RankError

                every = comm.allgather((row, stop, None if err is None else f"{type(err).__name__}: {err}"))
                for r, (_, _, msg) in enumerate(every):
                    if msg is not None:
                        raise RankError(f"rank {r}: {msg}")
                finished = [r for r, _, _ in every if r is not None]
                stop_any = next((s for _, s, _ in every if s), None)
            for r in finished:  # in the order one process would have run them
                done_rows.append(r)
                by_id[r["cell"]] = r
            if finished and rank == 0:
                if comm is None:
                    _write_rows(res_path, done_rows)
                else:  # a failure to write (a full disk) ends every rank, not rank 0 alone
                    try:
                        _write_rows(res_path, done_rows)
                        werr = None
                    except Exception as e:
                        werr = e
            if comm is not None and finished:
                from ..distributed import agree

                agree(comm, None, werr if rank == 0 else None)
            if bar is not None:
                bar.update(len(finished))
            if stop_any:
                stopped = stop_any
                break
    finally:
        if bar is not None:
            bar.close()
    rows = [by_id[c[0]] for c in grid.cells if c[0] in by_id]
    summary = summarize(rows)
    if rank == 0:
        _write_rows(os.path.join(out, _SUMMARY), summary)
    if plots and rows and rank == 0:
        try:
            plot_heatmap(os.path.join(out, "heatmap.png"), summary, rel_tol=grid.base["train"]["rel_tol"])
            plot_final_loss(os.path.join(out, "final_loss.png"), summary, rel_tol=grid.base["train"]["rel_tol"])
        except Exception as e:  # the numbers matter more than the pictures
            warnings.warn(f"pyrgd sweep: could not draw the plots in {out}: {type(e).__name__}: {e}", RuntimeWarning,
                          stacklevel=2)
    if stopped == "interrupted":
        raise KeyboardInterrupt
    if stopped == "terminated":
        from ..errors import Terminated

        raise Terminated(f"sweep: terminated (SIGTERM); the finished cells are in {out}, --resume continues")
    return rows


def _first_difference(a: dict, b: dict) -> str:
    for t in sorted(set(a) | set(b)):
        ta, tb = a.get(t, {}), b.get(t, {})
        for k in sorted(set(ta) | set(tb)):
            if ta.get(k) != tb.get(k):
                return f"{t}.{k}: {ta.get(k)!r} then, {tb.get(k)!r} now"
    return "unknown difference"


def _write_grid_file(path, source):
    from ..config import _toml_text
    from ..runio import atomic_write

    text = "# the grid of this sweep (pyrgd sweep --grid grid.toml --out <this folder> --resume)\n" + \
        _toml_text(source)
    atomic_write(path, lambda f: f.write(text))
