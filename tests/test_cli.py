"""The command line: pyrgd.cli.main(argv) in-process, and `python -m pyrgd` as a subprocess."""
import json
import os
import subprocess
import sys
import tempfile
import types

import pytest

from pyrgd import cli
from pyrgd import config as C
from pyrgd import runio

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import pyrgd  # noqa: E402

# the folder that holds the pyrgd under test: the installed package, or the source tree with an in-place build
PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(pyrgd.__file__)))
TINY = ["--N", "8", "--d", "3", "--widths", "64,4,1", "--steps", "50", "--lr", "0.05", "--track-every", "10",
        "--no-progress"]


def run_cli(*args, cwd=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = PKG_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["MPLBACKEND"] = "Agg"
    return subprocess.run([sys.executable, "-m", "pyrgd", *args], capture_output=True, text=True, env=env,
                          cwd=cwd or tempfile.gettempdir(), timeout=120)


def assert_one_line_error(err: str, *fragments):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pyrgd: error: "), err
    assert "Traceback" not in err
    for frag in fragments:
        assert frag in lines[0], (frag, err)


# --------------------------------------------------------------------------------------------- bad input: exit 2
@pytest.mark.parametrize("argv, fragments", [
    (["train", "--bogus"], ["unrecognized arguments: --bogus"]),
    ([], ["COMMAND"]),
    (["fly"], ["invalid choice: 'fly'"]),
    (["train", "--steps", "abc"], ["train.steps", "'abc'"]),
    (["train", "--steps", "0"], ["train.steps", ">= 1"]),
    (["train", "--widths", "64,x,1"], ["model.widths"]),
    (["train", "--lr", "-1"], ["train.lr"]),
    (["train", "--lr", "fast"], ["train.lr"]),
    (["train", "--activation", "swish"], ["model.activation", "swish"]),
    (["train", "--dtype", "float16"], ["model.dtype"]),
    (["train", "--backend", "gpu"], ["train.backend"]),
    (["train", "--method", "columns"], ["train.method", "neurons"]),
    (["train", "--preset", "nope"], ["preset", "quickstart"]),
    (["train", "--set", "train.nope=1"], ["train.nope", "unknown key"]),
    (["train", "--set", "steps"], ["--set", "table.key=value"]),
    (["train", "--config", "/nonexistent/c.toml"], ["config: file not found", "/nonexistent/c.toml"]),
    (["train", "--N", "4", "--d", "2", "--widths", "16,4,2"], ["model.widths", "target columns"]),
    (["train", "--N", "4", "--d", "2", "--widths", "16,2,4,1"], ["model.widths", "pyramidal"]),
    (["train", "--set", "data.source=file"], ["data.path"]),
])
def test_bad_input_exits_2_with_one_line(capsys, argv, fragments):
    assert cli.main(argv) == 2
    cap = capsys.readouterr()
    assert_one_line_error(cap.err, *fragments)
    assert cap.out == ""


def test_bad_toml_names_the_line(tmp_path, capsys):
    p = tmp_path / "bad.toml"
    p.write_text("[train]\nsteps = 10\nlr = = 1\n")
    assert cli.main(["train", "--config", str(p)]) == 2
    assert_one_line_error(capsys.readouterr().err, str(p), "line 3")


def test_bad_key_in_a_config_file(tmp_path, capsys):
    p = tmp_path / "c.toml"
    p.write_text("[model]\nwidth = [64, 1]\n")
    assert cli.main(["train", "--config", str(p)]) == 2
    assert_one_line_error(capsys.readouterr().err, "model.width: unknown key", "widths")


def test_out_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "f"
    f.write_text("x")
    assert cli.main(["train", *TINY, "--out", str(f)]) == 2
    assert_one_line_error(capsys.readouterr().err, "--out", "not a folder")


def test_help_exits_0(capsys):
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--preset" in out and "--set" in out and "quickstart" in out


# --------------------------------------------------------------------------------------------- config resolution
def test_print_config_shows_the_precedence(tmp_path, capsys):
    p = tmp_path / "exp.toml"
    p.write_text("[train]\nsteps = 300\ntol = 0.25\n[model]\nactivation = \"tanh\"\n")
    rc = cli.main(["train", "--preset", "quickstart", "--config", str(p), "--steps", "40", "--seed", "5",
                   "--set", "model.init=he", "--set", "train.tol=0.5", "--print-config"])
    assert rc == 0
    cfg = tomllib.loads(capsys.readouterr().out)
    assert cfg["train"]["steps"] == 40  # flag over file
    assert cfg["train"]["tol"] == 0.5  # --set over file
    assert cfg["model"]["activation"] == "tanh"  # file over preset
    assert cfg["train"]["rel_tol"] == 1e-9  # preset over default
    assert cfg["model"]["init"] == "he"
    assert cfg["data"]["seed"] == 5 and cfg["model"]["seed"] == 5  # --seed sets both
    assert cfg == C.resolve_config(file_cfg=cfg)  # complete and valid


def test_set_wins_over_the_shortcut_flag(capsys):
    assert cli.main(["train", "--steps", "40", "--set", "train.steps=41", "--print-config"]) == 0
    assert tomllib.loads(capsys.readouterr().out)["train"]["steps"] == 41


def test_defaults_apply_without_preset_and_config(capsys):
    assert cli.main(["train", "--print-config"]) == 0
    assert tomllib.loads(capsys.readouterr().out) == C.resolve_config()


# --------------------------------------------------------------------------------------------- exit codes
@pytest.mark.parametrize("status, code", [("converged", 0), ("max_steps", 0), ("time_budget", 0), ("diverged", 1),
                                          ("interrupted", 130)])
def test_exit_code_follows_the_status(tmp_path, monkeypatch, capsys, status, code):
    seen = {}

    def fake_train(net, X, Y, **kw):
        seen.update(kw)
        return types.SimpleNamespace(status=status, summary={"status": status, "message": "m", "steps": 3})

    monkeypatch.setattr(sys.modules["pyrgd.train"], "train", fake_train)
    assert cli.main(["train", *TINY, "--out", str(tmp_path / "r"), "--json"]) == code
    assert json.loads(capsys.readouterr().out)["status"] == status
    assert seen["out"] == str(tmp_path / "r") and seen["progress"] is False
    assert seen["config"]["train"]["steps"] == 50 and seen["lr"] == 0.05 and seen["track_every"] == 10


def test_ctrl_c_outside_training_exits_130(monkeypatch, capsys):
    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(C, "build", interrupted)
    assert cli.main(["train", *TINY]) == 130
    assert "interrupted" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- real runs
def test_tiny_train_writes_the_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(["train", *TINY, "--out", str(out)])
    text = capsys.readouterr().out
    s = runio.read_summary(out)
    assert rc == cli.EXIT_CODES[s["status"]]
    for name in ("config.toml", "history.csv", "summary.json", "weights.npz", "loss.png"):
        assert (out / name).exists(), name
    h = runio.read_history(out)
    assert h["step"][0] == 0 and len(h["step"]) == s["steps"] + 1
    assert C.load_config(out / "config.toml")["train"]["steps"] == 50
    assert f"status        {s['status']}" in text and str(out) in text


def test_default_out_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cli.main(["train", *TINY])
    runs = os.listdir(tmp_path / "runs")
    assert len(runs) == 1 and runs[0].endswith("Z-default")
    cli.main(["train", *TINY, "--preset", "quickstart", "--steps", "5"])
    assert sum(r.endswith("Z-quickstart") for r in os.listdir(tmp_path / "runs")) == 1


def test_subprocess_train_json(tmp_path):
    out = tmp_path / "run"
    p = run_cli("train", *TINY, "--out", str(out), "--json")
    assert "Traceback" not in p.stderr
    s = json.loads(p.stdout)  # stdout holds the JSON and nothing else
    assert s["status"] in cli.EXIT_CODES and p.returncode == cli.EXIT_CODES[s["status"]]
    assert s["run_folder"] == str(out)
    assert runio.read_summary(out)["status"] == s["status"]


def test_subprocess_bad_flag_exits_2(tmp_path):
    p = run_cli("train", "--steps", "abc", cwd=str(tmp_path))
    assert p.returncode == 2 and p.stdout == ""
    assert_one_line_error(p.stderr, "train.steps")
    assert not (tmp_path / "runs").exists()


def test_subprocess_info_json():
    from pyrgd.backends import BACKENDS

    p = run_cli("info", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    for name in BACKENDS:
        assert isinstance(d["backends"][name]["ok"], bool)
    assert d["backends"]["reference"]["ok"] is True
    assert d["versions"]["numpy"]


def test_failure_inside_train_exits_2_and_leaves_no_empty_folder(tmp_path, monkeypatch, capsys):
    from pyrgd.errors import BackendUnavailable

    def unavailable(net, X, Y, **kw):
        raise BackendUnavailable("backend 'cuda' is not available on this machine; install CuPy")

    monkeypatch.setattr(sys.modules["pyrgd.train"], "train", unavailable)
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--out", str(out)]) == 2
    assert_one_line_error(capsys.readouterr().err, "install CuPy")
    assert not out.exists()
    existing = tmp_path / "kept"
    existing.mkdir()
    assert cli.main(["train", *TINY, "--out", str(existing)]) == 2
    assert existing.is_dir()  # a folder the user made is never removed


def test_warnings_are_one_line(tmp_path, monkeypatch, capsys):
    import warnings

    def warn_and_stop(net, X, Y, **kw):
        warnings.warn("n_1 = 64 < N = 80: the theory\nneeds a wide layer", UserWarning)
        return types.SimpleNamespace(status="max_steps", summary={"status": "max_steps"})

    monkeypatch.setattr(sys.modules["pyrgd.train"], "train", warn_and_stop)
    assert cli.main(["train", *TINY, "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert err == "pyrgd: warning: n_1 = 64 < N = 80: the theory needs a wide layer\n"


def test_method_flag_reaches_the_run(tmp_path, capsys):
    """--method neurons (train.method) runs the memory-lean GD step: the summary records it."""
    assert cli.main(["train", *TINY, "--method", "neurons", "--out", str(tmp_path / "r"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "neurons"
    assert cli.main(["train", *TINY, "--method", "neurons", "--out", str(tmp_path / "r2")]) == 0
    assert "GD step method neurons" in capsys.readouterr().out  # the text summary says which


def test_threads_flag_reaches_the_run(tmp_path, capsys):
    """--threads N (train.threads) runs the training on N CPU threads: the summary records it."""
    assert cli.main(["train", *TINY, "--threads", "1", "--out", str(tmp_path / "r"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["threads"] == 1
    assert cli.main(["train", *TINY, "--threads", "-1"]) == 2
    assert "threads" in capsys.readouterr().err
