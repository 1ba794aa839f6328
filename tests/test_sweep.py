"""pyrgd.sweep and `pyrgd sweep`: the grid parser, the rows of results.csv, resume after an interruption, the summary,
the certificates at init against pyrgd.theory, and the command line."""
import copy
import os
import re

import pytest

from pyrgd import cli, config as C, sweep, theory
from pyrgd.errors import PyrgdError

from test_cli import assert_one_line_error

try:
    import tomli_w
except ImportError:  # pragma: no cover
    tomli_w = None


def tiny_grid(**grid):
    g = {"N": [6, 10], "n1_over_N": [1, 4], "activation": ["relu"], "seed": [0, 1]}
    g.update(grid)
    return {"grid": g, "data": {"d": 3, "inputs": "gaussian"}, "model": {"widths": [8, 1]},
            "train": {"steps": 60, "rel_tol": 1e-3, "track_every": 1000, "lr": 0.02}}


# --------------------------------------------------------------------------------------------- the grid parser
@pytest.mark.parametrize("mutate, fragment", [
    (lambda g: g.pop("grid"), "grid: no [grid] table"),
    (lambda g: g.update(extra={"a": 1}), "grid: unknown table [extra]"),
    (lambda g: g["grid"].update(width=[1]), "grid.width: unknown grid key"),
    (lambda g: g["grid"].update(N=64), "grid.N: expected a non-empty list"),
    (lambda g: g["grid"].update(N=[]), "grid.N: expected a non-empty list"),
    (lambda g: g["grid"].update(N=[8, 8]), "grid.N: the value 8 is listed twice"),
    (lambda g: g["grid"].update(N=[8, 0]), "grid.N[1]: expected an integer >= 1"),
    (lambda g: g["grid"].update(n1=[16]), "grid.n1: give n_1 either absolutely"),
    (lambda g: g["grid"].update(n1_over_N=[1, -2]), "grid.n1_over_N[1]: expected a positive number"),
    (lambda g: g["grid"].update(n1_over_N=[1.0, 1.01]), "two ratios give the same n_1"),
    (lambda g: g["grid"].update(tail=[[1]], depth=[2]), "grid.tail: give the tail either"),
    (lambda g: g["grid"].update(tail=[[4, 0]]), "grid.tail[0]: expected a non-empty list of positive widths"),
    (lambda g: g["grid"].update(tail=[[4, 2]]), "grid.tail[0]: the last width 2 must equal data.n_out = 1"),
    (lambda g: g["grid"].update(depth=[2, 4]), "grid.depth[1]: depth 4 needs 3 tail widths"),
    (lambda g: g["grid"].update(activation=["swish"]), "grid.activation[0]"),
    (lambda g: g["grid"].update(init=["orthogonal"]), "grid.init[0]"),
    (lambda g: g["grid"].update(seed=[0], seeds=[1]), "given twice"),
    (lambda g: g["grid"].update({"model.beta": [1.0, -1.0]}), "grid.model.beta[1]"),
    (lambda g: g["grid"].update({"model.nope": [1]}), "grid.model.nope: unknown config key"),
    (lambda g: g["grid"].update({"model.widths": [[4, 1]]}), "grid.model.widths: set it through the grid key"),
    (lambda g: g["train"].update(steps=0), "train.steps"),
])
def test_grid_errors_name_the_key(mutate, fragment):
    g = tiny_grid()
    mutate(g)
    with pytest.raises(PyrgdError) as e:
        sweep.parse_grid(g)
    assert fragment in str(e.value)


def test_grid_file_errors(tmp_path):
    with pytest.raises(PyrgdError, match="grid: file not found"):
        sweep.parse_grid(str(tmp_path / "none.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid]\nN = [1,\n")
    with pytest.raises(PyrgdError, match="grid: TOML syntax error"):
        sweep.parse_grid(str(bad))


def test_the_readme_figure_grid_parses():
    """docs/figures/sweep.toml, the grid of the README's sweep figures, is a valid grid of 3 x 5 x 2 x 2 cells."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    g = sweep.parse_grid(os.path.join(root, "docs", "figures", "sweep.toml"))
    assert len(g) == 60 and g.axes["init"] == ["lecun", "zero_scaled"] and g.base["model"]["beta"] == 1e5
    assert {p["n1"] for _, p, _ in g.cells if p["N"] == 64} == {32, 64, 128, 256, 512}


def test_cells_are_the_product_of_the_lists():
    g = sweep.parse_grid(tiny_grid(tail=[[1], [3, 1]], **{"model.beta": [1.0, 2.0]}))
    assert len(g) == 2 * 2 * 2 * 2 * 2
    ids = [c[0] for c in g.cells]
    assert len(set(ids)) == len(ids)
    for _cid, p, cfg in g.cells:
        assert cfg["data"]["N"] == p["N"] and cfg["model"]["widths"][0] == p["n1"]
        assert p["n1"] == round(p["n1_over_N"] * p["N"])
        assert cfg["model"]["widths"][1:] == ([1] if p["tail"] == "[1]" else [3, 1])
        assert cfg["model"]["seed"] == p["seed"] and cfg["data"]["seed"] == 0  # seeds vary the init only
        assert cfg["model"]["beta"] == p["model.beta"]
        assert cfg["train"]["steps"] == 60
    depth = sweep.parse_grid({**tiny_grid(depth=[2, 3]), "model": {"widths": [8, 5, 1]}})
    assert sorted({c[2]["model"]["widths"][1:] == [1] for c in depth.cells}) == [False, True]


def test_cell_id_keys_a_cell_by_its_parameters():
    g = sweep.parse_grid(tiny_grid(N=[6], n1_over_N=[0.5], **{"model.beta": [2.0]}, seed=[3]))
    (cid, params, _cfg), = g.cells
    assert cid == sweep.cell_id(params) == "N=6|n1=3|tail=[1]|activation=relu|init=lecun|model.beta=2.0|seed=3"
    assert sweep.cell_id({**params, "n1_over_N": 9.0, "L": 7}) == cid  # the derived parameters are not keys


# --------------------------------------------------------------------------------------------- the package
def test_the_package_reexports_its_modules_names():
    """pyrgd.sweep is grid + runner + report: every public name (and _write_rows, used by pyrgd.experiments) is
    the object of the module that defines it, so patching that module's name reaches every caller."""
    from pyrgd.sweep import grid, report, runner

    home = {"GRID_KEYS": grid, "Grid": grid, "load_grid": grid, "parse_grid": grid, "cell_config": grid,
            "cell_id": grid, "run_cell": runner, "run_sweep": runner, "RESULT_COLUMNS": runner,
            "summarize": report, "format_summary": report, "read_results": report, "certified_outline": report,
            "plot_heatmap": report, "plot_final_loss": report, "_write_rows": report}
    assert set(sweep.__all__) <= set(home)
    for name, mod in home.items():
        assert getattr(sweep, name) is getattr(mod, name), name
        assert getattr(sweep, name) is not None


def test_results_csv_round_trip_keeps_types_order_and_text_columns(tmp_path):
    """report._write_rows / read_results: the header is every key in first-seen order; None is an empty field and
    comes back None; bools (numpy's too) come back bools, integers ints, floats exactly (repr); the cell and tail
    columns stay text even where they look like numbers."""
    import numpy as np

    rows = [{"cell": "N=6|seed=0", "N": 6, "tail": "[1]", "lr": 0.1 + 0.2, "converged": np.bool_(True),
             "steps": np.int64(60), "steps_to_tol": None},
            {"cell": "7", "N": 10, "tail": "12", "lr": 1e-300, "converged": False, "steps": 3, "steps_to_tol": 3,
             "status": "max_steps", "model.beta": np.float32(0.5)}]
    path = tmp_path / "results.csv"
    sweep._write_rows(str(path), rows)
    text = path.read_text(encoding="utf-8").splitlines()
    assert text[0] == "cell,N,tail,lr,converged,steps,steps_to_tol,status,model.beta"
    assert text[1] == "N=6|seed=0,6,[1],0.30000000000000004,True,60,,,"
    back = sweep.read_results(path)
    assert back[0] == {"cell": "N=6|seed=0", "N": 6, "tail": "[1]", "lr": 0.1 + 0.2, "converged": True,
                       "steps": 60, "steps_to_tol": None, "status": None, "model.beta": None}
    assert back[1] == {"cell": "7", "N": 10, "tail": "12", "lr": 1e-300, "converged": False, "steps": 3,
                       "steps_to_tol": 3, "status": "max_steps", "model.beta": 0.5}
    assert type(back[0]["converged"]) is bool and type(back[0]["steps"]) is int and type(back[1]["cell"]) is str
    (tmp_path / "bad.csv").write_text("a,b\n1\n", encoding="utf-8")
    with pytest.raises(PyrgdError, match=r"line 2 has 1 fields, the header has 2"):
        sweep.read_results(tmp_path / "bad.csv")
    with pytest.raises(PyrgdError, match=r"out: no results.csv in"):
        sweep.read_results(tmp_path / "none" / "results.csv")


# --------------------------------------------------------------------------------------------- running
def test_rows_summary_and_files(tmp_path):
    out = tmp_path / "sw"
    rows = sweep.run_sweep(tiny_grid(), out)
    assert len(rows) == 8
    on_disk = sweep.read_results(out / "results.csv")
    assert [r["cell"] for r in on_disk] == [r["cell"] for r in rows]
    for r in on_disk:
        assert set(sweep.RESULT_COLUMNS) <= set(r)
        assert r["status"] in ("converged", "max_steps", "diverged")
        assert r["converged"] == (r["status"] == "converged")
        assert r["steps_to_tol"] == (r["steps"] if r["converged"] else None)
        assert r["steps"] <= 60 and r["lr"] == 0.02
        if r["converged"]:
            assert r["relative_loss"] <= 1e-3
    summ = sweep.summarize(on_disk)
    assert len(summ) == 4 and all(s["seeds"] == 2 for s in summ)
    for s in summ:
        mine = [r for r in on_disk if r["N"] == s["N"] and r["n1"] == s["n1"]]
        assert s["converged_fraction"] == sum(r["converged"] for r in mine) / 2
    for f in ("summary.csv", "heatmap.png", "final_loss.png", "grid.toml", "sweep.json"):
        assert (out / f).stat().st_size > 0, f
    assert "converged" in sweep.format_summary(summ)


def test_certificates_at_init_match_theory(tmp_path):
    # zero_scaled init with a large beta: the "width N suffices" construction that Theorem 2.2 certifies
    g = {"grid": {"N": [6], "n1": [24], "model.beta": [1.0, 3e4], "seed": [0]},
         "data": {"d": 3, "inputs": "sphere"},
         "model": {"widths": [8, 1], "activation": "relu", "init": "zero_scaled"},
         "train": {"steps": 5, "lr": 1e-12, "track_every": 1000}}
    rows = sweep.run_sweep(g, tmp_path / "c", plots=False)
    for r, (_cid, p, cfg) in zip(rows, sweep.parse_grid(g).cells):
        net, X, Y, _ = C.build(cfg)
        ng = theory.nguyen2021_certificate(net, X, Y, eta=1e-12)
        assert r["nguyen_margin_initW"] == pytest.approx(ng.conditions["initW"].margin, rel=1e-12)
        assert r["nguyen_conditions_hold"] == all(c.holds for c in ng.conditions.values())
        assert r["sigma_min_F1"] == pytest.approx(theory.nm2020_quantities(net, X).lambda_F, rel=1e-12)
        assert r["mu_0"] == pytest.approx(r["sigma_min_F1"] ** 2, rel=1e-12)
    assert [r["nguyen_conditions_hold"] for r in rows] == [False, True]
    assert [s["certified_fraction"] for s in sweep.summarize(rows)] == [0.0, 1.0]


def test_certified_outline_is_the_boundary_of_the_certified_cells():
    mask = [[True, True, False],
            [False, True, False],
            [False, False, False]]
    segs = sweep.certified_outline(mask)
    edges = {(tuple(x), tuple(y)) for x, y in segs}
    assert len(segs) == len(edges) == 8  # 3 cells, 12 edges, 2 shared edges counted by neither side
    assert ((-0.5, -0.5), (-0.5, 0.5)) in edges  # the left border of cell (0, 0)
    assert ((0.5, 0.5), (-0.5, 0.5)) not in edges  # shared by the certified cells (0, 0) and (0, 1)
    assert ((0.5, 1.5), (0.5, 0.5)) not in edges  # shared by (0, 1) and (1, 1)
    assert ((0.5, 1.5), (1.5, 1.5)) in edges  # the top of (1, 1)
    assert sweep.certified_outline([[False, False]]) == []
    assert len(sweep.certified_outline([[True]])) == 4


def test_heatmap_outlines_the_cells_certified_for_every_seed(tmp_path, monkeypatch):
    # beta = 3e4 with zero_scaled init satisfies Theorem 2.2's conditions (see above), beta = 1 does not; lr = 1e-12
    # is far above the theorem's eta_max there, lr = 1e-30 below it: only then is the run itself certified
    g = {"grid": {"N": [6], "n1": [12, 24], "model.beta": [1.0, 3e4], "train.lr": [1e-12, 1e-30], "seed": [0, 1]},
         "data": {"d": 3, "inputs": "sphere"},
         "model": {"widths": [8, 1], "activation": "relu", "init": "zero_scaled"},
         "train": {"steps": 5, "track_every": 1000}}
    masks = []
    real = sweep.certified_outline
    monkeypatch.setattr(sweep.report, "certified_outline", lambda cert: (masks.append(cert.copy()), real(cert))[1])
    rows = sweep.run_sweep(g, tmp_path / "h")
    assert (tmp_path / "h" / "heatmap.png").stat().st_size > 0
    panels = [(beta, lr) for beta in (1.0, 3e4) for lr in (1e-12, 1e-30)]
    assert len(masks) == 2 * len(panels)  # per panel: the conditions' region, then the runs certified at their lr
    for k, (beta, lr) in enumerate(panels):
        mine = [r for r in rows if r["model.beta"] == beta and r["train.lr"] == lr]
        cond = [[all(r["nguyen_conditions_hold"] for r in mine if r["n1"] == n1) for n1 in (12, 24)]]
        at_lr = [[all(r["nguyen_conditions_hold"] and r["lr"] < r["nguyen_eta_max"] for r in mine if r["n1"] == n1)
                  for n1 in (12, 24)]]
        assert masks[2 * k].tolist() == cond and masks[2 * k + 1].tolist() == at_lr
    assert not masks[0].any() and masks[4].any() and not masks[5].any() and masks[7].any()
    summ = {(s["model.beta"], s["train.lr"], s["n1"]): s for s in sweep.summarize(rows)}
    assert summ[(3e4, 1e-30, 24)]["certified_at_lr_fraction"] == 1.0
    assert summ[(3e4, 1e-12, 24)]["certified_at_lr_fraction"] == 0.0
    assert summ[(3e4, 1e-12, 24)]["median_eta_max"] < 1e-12 == summ[(3e4, 1e-12, 24)]["median_lr"]


def test_interrupted_sweep_resumes_only_missing_cells(tmp_path, monkeypatch):
    out = tmp_path / "r"
    real = sweep.run_cell
    calls = []

    def failing(cfg, **kw):
        if len(calls) == 3:
            raise RuntimeError("killed")
        calls.append((cfg["data"]["N"], cfg["model"]["widths"][0], cfg["model"]["seed"]))
        return real(cfg, **kw)

    monkeypatch.setattr(sweep.runner, "run_cell", failing)
    with pytest.raises(RuntimeError, match="killed"):
        sweep.run_sweep(tiny_grid(), out)
    first = sweep.read_results(out / "results.csv")
    assert len(first) == 3
    done = set(calls)

    calls.clear()
    monkeypatch.setattr(sweep.runner, "run_cell", lambda cfg, **kw: (calls.append(
        (cfg["data"]["N"], cfg["model"]["widths"][0], cfg["model"]["seed"])), real(cfg, **kw))[1])
    rows = sweep.run_sweep(tiny_grid(), out, resume=True)
    assert len(calls) == 5 and not (set(calls) & done)
    final = sweep.read_results(out / "results.csv")
    assert len(final) == 8 and len({r["cell"] for r in final}) == 8
    assert final[:3] == first  # the finished rows are kept as they were
    assert [r["cell"] for r in rows] == [c[0] for c in sweep.parse_grid(tiny_grid()).cells]

    calls.clear()
    sweep.run_sweep(tiny_grid(), out, resume=True)  # nothing left to run
    assert calls == []
    bigger = tiny_grid(seed=[0, 1, 2])  # a grid that grows runs only its new cells
    sweep.run_sweep(bigger, out, resume=True)
    assert len(calls) == 4 and {c[2] for c in calls} == {2}


@pytest.mark.parametrize("status, error", [("terminated", "Terminated"), ("interrupted", "KeyboardInterrupt")])
def test_a_signal_in_a_cell_ends_the_sweep_keeping_the_finished_cells(tmp_path, monkeypatch, status, error):
    """A cell stopped by SIGTERM (or Ctrl-C) ends the sweep: the cells before it stay on disk, no further cell runs,
    and the sweep raises Terminated (KeyboardInterrupt); the CLI maps them to 143 and 130."""
    from pyrgd.errors import Terminated

    real = sweep.run_cell
    calls = []

    def stopping(cfg, **kw):
        row = real(cfg, **kw)
        calls.append(cfg["model"]["seed"])
        if len(calls) == 3:
            row = {**row, "status": status, "_stopped": status}
        return row

    monkeypatch.setattr(sweep.runner, "run_cell", stopping)
    with pytest.raises({"Terminated": Terminated, "KeyboardInterrupt": KeyboardInterrupt}[error]):
        sweep.run_sweep(tiny_grid(), tmp_path / "s")
    assert len(calls) == 3  # nothing ran after the stopped cell
    assert len(sweep.read_results(tmp_path / "s" / "results.csv")) == 2  # the stopped cell is not a finished one


def test_progress_bar_counts_cells_with_time_left_and_starts_at_the_finished_ones(tmp_path, capsys):
    out = tmp_path / "p"
    sweep.run_sweep(tiny_grid(N=[6], seed=[0]), out, progress=True)  # 2 cells
    err = capsys.readouterr().err
    assert "sweep" in err and "2/2" in err and "cell" in err
    assert re.search(r"\d+:\d+<\d+:\d+", err)  # elapsed<remaining
    sweep.run_sweep(tiny_grid(N=[6], seed=[0, 1]), out, resume=True, progress=True)  # 2 more cells
    err = capsys.readouterr().err
    assert "2/4" in err and "4/4" in err and "0/4" not in err


def test_resume_refuses_another_base_config_and_restart_starts_over(tmp_path):
    out = tmp_path / "b"
    g = tiny_grid(N=[6], n1_over_N=[2], seed=[0])
    sweep.run_sweep(g, out)
    other = copy.deepcopy(g)
    other["train"]["steps"] = 61
    with pytest.raises(PyrgdError, match=r"out: .*another base config \(train.steps: 60 then, 61 now\)"):
        sweep.run_sweep(other, out, resume=True)
    rows = sweep.run_sweep(other, out, resume=False)
    assert len(rows) == 1 and len(sweep.read_results(out / "results.csv")) == 1


def test_run_sweep_bad_arguments(tmp_path):
    with pytest.raises(PyrgdError, match="^grid_cfg"):
        sweep.run_sweep(42, tmp_path)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(PyrgdError, match="^out: .* is not a folder"):
        sweep.run_sweep(tiny_grid(), f)


# --------------------------------------------------------------------------------------------- the command line
@pytest.mark.skipif(tomli_w is None, reason="needs tomli-w")
def test_cli_sweep_and_resume(tmp_path, capsys):
    grid = tmp_path / "g.toml"
    grid.write_text(tomli_w.dumps(tiny_grid(N=[6], seed=[0])))
    out = tmp_path / "o"
    assert cli.main(["sweep", "--grid", str(grid), "--out", str(out), "--no-progress"]) == 0
    assert "converged" in capsys.readouterr().out
    assert len(sweep.read_results(out / "results.csv")) == 2
    assert cli.main(["sweep", "--grid", str(grid), "--out", str(out), "--no-progress"]) == 2
    assert_one_line_error(capsys.readouterr().err, "--resume", str(out))
    assert cli.main(["sweep", "--grid", str(grid), "--out", str(out), "--no-progress", "--resume", "--json"]) == 0
    assert '"cells": 2' in capsys.readouterr().out


@pytest.mark.parametrize("argv, fragments", [
    (["sweep"], ["--grid"]),
    (["sweep", "--grid", "/nonexistent/g.toml"], ["grid: file not found"]),
])
def test_cli_sweep_bad_input(capsys, argv, fragments):
    assert cli.main(argv) == 2
    assert_one_line_error(capsys.readouterr().err, *fragments)


def test_cli_sweep_bad_grid_key(tmp_path, capsys):
    grid = tmp_path / "g.toml"
    grid.write_text("[grid]\nN = [4]\nwidth = [8]\n")
    assert cli.main(["sweep", "--grid", str(grid), "--out", str(tmp_path / "o")]) == 2
    assert_one_line_error(capsys.readouterr().err, "grid.width")
    assert not os.path.exists(tmp_path / "o" / "results.csv")


@pytest.mark.skipif(tomli_w is None, reason="needs tomli-w")
def test_cli_sweep_terminated_exits_143(tmp_path, capsys, monkeypatch):
    grid = tmp_path / "g.toml"
    grid.write_text(tomli_w.dumps(tiny_grid(N=[6], seed=[0])))
    real = sweep.run_cell
    monkeypatch.setattr(sweep.runner, "run_cell",
                        lambda cfg, **kw: {**real(cfg, **kw), "status": "terminated", "_stopped": "terminated"})
    assert cli.main(["sweep", "--grid", str(grid), "--out", str(tmp_path / "o"), "--no-progress"]) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "terminated" in err[0] and "--resume" in err[0]


def test_a_second_sweep_into_a_folder_in_use_is_refused(tmp_path):
    """Two sweeps writing one results.csv would lose one's cells: the folder's lock (host and process id) refuses
    the second while the first lives; a lock left by a sweep that died on this host is taken over; none stays."""
    import socket
    import subprocess
    import sys

    out = tmp_path / "s"
    out.mkdir()
    lock = out / ".sweep.lock"
    lock.write_text(f"{socket.gethostname()} {os.getpid()}\n")  # a live sweep: this process
    with pytest.raises(PyrgdError, match=rf"out: another sweep \(process {os.getpid()} on .*\) is writing"):
        sweep.run_sweep(tiny_grid(N=[6], n1_over_N=[1], seed=[0]), out)
    assert not (out / "results.csv").exists() and lock.exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a process id that has ended
    lock.write_text(f"{socket.gethostname()} {dead}\n")
    rows = sweep.run_sweep(tiny_grid(N=[6], n1_over_N=[1], seed=[0]), out)
    assert len(rows) == 1 and not lock.exists()
