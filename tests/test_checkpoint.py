"""Runs that survive: checkpoints, bit-identical resume (in process, and after SIGKILL from the command line),
SIGTERM, double Ctrl-C, refusals of a checkpoint of another run, unreadable checkpoints."""
import csv
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import pyrgd
from pyrgd.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from pyrgd.errors import PyrgdError

pytest.importorskip("pyrgd._cpu", reason="the C++ extension pyrgd._cpu is not built")


def _problem(dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    net = pyrgd.PyramidalNet(8, [256, 8, 1], seed=seed, dtype=dtype)
    X = rng.standard_normal((64, 8)).astype(dtype)
    Y = rng.standard_normal((64, 1)).astype(dtype)
    return net, X, Y


@pytest.mark.parametrize("update", ["gd", "momentum(0.9)", "nesterov(0.8)"])
@pytest.mark.parametrize("backend,method", [("cpu", "rows"), ("cpu", "neurons"), ("reference", "neurons")])
def test_resume_is_bit_identical(tmp_path, backend, method, update):
    """4 steps with a checkpoint every 2, then a resumed run to 10 steps: the weights, losses, gradient norms and
    certificates equal those of one uninterrupted 10-step run, bit for bit (with momentum: the velocity is in the
    checkpoint)."""
    net, X, Y = _problem()
    kw = dict(lr=1e-3, progress=False, track_every=3, backend=backend, method=method, update=update)
    full = pyrgd.train(net.copy(), X, Y, steps=10, **kw)
    first = pyrgd.train(net.copy(), X, Y, steps=4, out=tmp_path / "r", checkpoint_every=2, **kw)
    assert first.summary["checkpoint"] == os.path.join(str(tmp_path / "r"), CHECKPOINT_FILE)
    arrays, meta = load_checkpoint(tmp_path / "r")
    assert meta["step"] == 4 and len(meta["history"]["loss"]) == 4
    assert meta["identity"]["update"] == update
    assert ("velocity_1" in arrays) == (update != "gd")
    again = pyrgd.train(net.copy(), X, Y, steps=10, out=tmp_path / "r", resume=tmp_path / "r", **kw)
    assert again.status == "max_steps" and again.summary["steps"] == 10
    for key in ("loss", "grad_norm_1", "grad_norm_3", "factor", "envelope"):  # the envelope: as step 4 began
        np.testing.assert_array_equal(again.history[key], full.history[key])
    assert all(np.array_equal(a, b) for a, b in zip(again.net.weights, full.net.weights))
    assert again.certificates["step"] == full.certificates["step"] == [0, 3, 6, 9]
    np.testing.assert_array_equal(again.certificates["sigma_min_F1"], full.certificates["sigma_min_F1"])


def test_resume_from_a_mid_run_checkpoint(tmp_path):
    """The checkpoint of step 6 (every 3 steps) of a run that went on to 8: resuming from it redoes steps 6..10."""
    net, X, Y = _problem("float64")
    kw = dict(lr=1e-3, progress=False, track_every=0)
    full = pyrgd.train(net.copy(), X, Y, steps=10, **kw)
    out = tmp_path / "r"
    pyrgd.train(net.copy(), X, Y, steps=7, out=out, checkpoint_every=3, **kw)
    ck = out / "step6.npz"
    arrays, meta = load_checkpoint(out)
    assert meta["step"] == 7  # the final checkpoint of the stopped run
    pyrgd.train(net.copy(), X, Y, steps=6, out=tmp_path / "s", checkpoint_every=3, **kw)
    os.replace(tmp_path / "s" / CHECKPOINT_FILE, ck)
    again = pyrgd.train(net.copy(), X, Y, steps=10, resume=ck, **kw)
    np.testing.assert_array_equal(again.history["loss"], full.history["loss"])


def test_resume_refuses_another_run(tmp_path):
    net, X, Y = _problem()
    pyrgd.train(net.copy(), X, Y, lr=1e-3, steps=2, progress=False, out=tmp_path / "r", checkpoint_every=1)
    with pytest.raises(PyrgdError, match="resume: the data differ"):
        pyrgd.train(net.copy(), X, Y + 1, lr=1e-3, steps=4, progress=False, resume=tmp_path / "r")
    other = pyrgd.PyramidalNet(8, [128, 8, 1], seed=0, dtype="float32")
    with pytest.raises(PyrgdError, match=r"resume: the checkpoint .* is of another run \(widths: checkpoint"):
        pyrgd.train(other, X, Y, lr=1e-3, steps=4, progress=False, resume=tmp_path / "r")
    reseeded = pyrgd.PyramidalNet(net.d, list(net.widths), seed=net.seed + 1, dtype=net.dtype.name)
    with pytest.raises(PyrgdError, match=r"another run \(initial_weights: .*its init, seed, scale or weights\)\)"):
        pyrgd.train(reseeded, X, Y, lr=1e-3, steps=4, progress=False, resume=tmp_path / "r")
    with pytest.raises(PyrgdError, match="resume: lr 0.002 differs from the checkpoint's 0.001"):
        pyrgd.train(net.copy(), X, Y, lr=2e-3, steps=4, progress=False, resume=tmp_path / "r")
    with pytest.raises(PyrgdError, match="resume: no checkpoint at"):
        pyrgd.train(net.copy(), X, Y, lr=1e-3, steps=4, progress=False, resume=tmp_path / "nowhere")
    with pytest.raises(PyrgdError, match="checkpoint_every: checkpoints are written to the run folder"):
        pyrgd.train(net.copy(), X, Y, lr=1e-3, steps=4, progress=False, checkpoint_every=2)


def test_resume_refuses_another_update_rule_and_reads_old_checkpoints(tmp_path):
    """The update rule is part of the run's identity; a checkpoint without it (written before update rules
    existed) is a GD run's."""
    net, X, Y = _problem()
    kw = dict(lr=1e-3, progress=False, track_every=0)
    pyrgd.train(net.copy(), X, Y, steps=2, out=tmp_path / "m", checkpoint_every=1, update="momentum", **kw)
    with pytest.raises(PyrgdError, match=r"update: checkpoint 'momentum\(0.9\)', now 'gd'"):
        pyrgd.train(net.copy(), X, Y, steps=4, resume=tmp_path / "m", **kw)
    with pytest.raises(PyrgdError, match=r"update: checkpoint 'momentum\(0.9\)', now 'momentum\(0.5\)'"):
        pyrgd.train(net.copy(), X, Y, steps=4, resume=tmp_path / "m", update=pyrgd.Momentum(0.5), **kw)
    full = pyrgd.train(net.copy(), X, Y, steps=4, **kw)
    pyrgd.train(net.copy(), X, Y, steps=2, out=tmp_path / "g", checkpoint_every=1, **kw)
    arrays, meta = load_checkpoint(tmp_path / "g")
    del meta["identity"]["update"], meta["identity"]["loss"]  # as an older pyrgd wrote it
    save_checkpoint(tmp_path / "old.npz", arrays, {k: v for k, v in meta.items() if k != "format"})
    again = pyrgd.train(net.copy(), X, Y, steps=4, resume=tmp_path / "old.npz", **kw)
    assert again.history["loss"] == full.history["loss"]
    with pytest.raises(PyrgdError, match=r"update: checkpoint 'gd', now 'nesterov\(0.9\)'"):
        pyrgd.train(net.copy(), X, Y, steps=4, resume=tmp_path / "old.npz", update="nesterov", **kw)


def test_unreadable_checkpoints_raise_pyrgd_errors(tmp_path):
    good = tmp_path / "good.npz"
    save_checkpoint(good, {"W_1": np.ones((2, 2))}, {"step": 1})
    arrays, meta = load_checkpoint(good)
    assert meta["step"] == 1 and np.array_equal(arrays["W_1"], np.ones((2, 2)))
    data = good.read_bytes()
    for i, bad in enumerate([data[: len(data) // 2], b"not a zip", data[:100] + b"\x00" * 50 + data[150:]]):
        p = tmp_path / f"bad{i}.npz"
        p.write_bytes(bad)
        with pytest.raises(PyrgdError, match="resume: cannot read the checkpoint|not a pyrgd checkpoint"):
            load_checkpoint(p)
    np.savez(tmp_path / "plain.npz", W=np.ones(3))
    with pytest.raises(PyrgdError, match="not a pyrgd checkpoint"):
        load_checkpoint(tmp_path / "plain.npz")


def _run_cli(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "pyrgd", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, timeout=120):
    t0 = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout
        time.sleep(0.02)


ARGS = ["train", "--N", "64", "--widths", "512,8,1", "--steps", "6000", "--lr", "0.001", "--no-progress",
        "--track-every", "100", "--checkpoint-every", "25"]


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_run(tmp_path):
    """The command line with checkpoints every 25 steps, SIGKILLed at a random moment, resumed with --resume:
    the final weights and the loss history equal an uninterrupted run's, bit for bit."""
    full = subprocess.run([sys.executable, "-m", "pyrgd", *ARGS, "--out", "full"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    p = _run_cli([*ARGS, "--out", "r"], tmp_path)
    _wait_for(tmp_path / "r" / CHECKPOINT_FILE, p)
    # a random moment within the first part of the run (1200 steps took under a second here: kill early enough that
    # the run is still going, or the test would resume a finished run)
    time.sleep(random.uniform(0.0, 0.2))
    assert p.poll() is None, "the run ended before the kill: make it longer"
    p.send_signal(signal.SIGKILL)
    p.communicate()
    step = load_checkpoint(tmp_path / "r")[1]["step"]
    assert 0 < step < 6000
    res = subprocess.run([sys.executable, "-m", "pyrgd", "train", "--resume", "r", "--no-progress"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    a, b = np.load(tmp_path / "full" / "weights.npz"), np.load(tmp_path / "r" / "weights.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a.files if k.startswith("W"))
    read = lambda f: [row["loss"] for row in csv.DictReader(open(f))]  # noqa: E731
    assert read(tmp_path / "full" / "history.csv") == read(tmp_path / "r" / "history.csv")


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_exits_143(tmp_path):
    p = _run_cli([*ARGS, "--steps", "1000000", "--checkpoint-every", "0", "--out", "r"], tmp_path)
    _wait_for(tmp_path / "r" / "config.toml", p)
    time.sleep(1.5)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    s = json.load(open(tmp_path / "r" / "summary.json"))
    assert s["status"] == "terminated" and os.path.exists(tmp_path / "r" / CHECKPOINT_FILE)
    assert load_checkpoint(tmp_path / "r")[1]["step"] == s["steps"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_two_sigints_leave_weights_that_reproduce_the_reported_loss(tmp_path, seed):
    """Two SIGINTs at random moments (the second may fall inside an update): the saved weights give the loss
    the summary reports for the last step, and the history ends at that step."""
    rnd = random.Random(seed)
    p = _run_cli([*ARGS, "--steps", "1000000", "--checkpoint-every", "0", "--method", "neurons", "--widths",
                  "512,8,4,1", "--out", "r"], tmp_path)
    _wait_for(tmp_path / "r" / "config.toml", p)
    time.sleep(rnd.uniform(0.5, 1.5))
    p.send_signal(signal.SIGINT)
    time.sleep(rnd.uniform(0.0, 0.01))
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=120)
    assert p.returncode == 130
    s = json.load(open(tmp_path / "r" / "summary.json"))
    net = pyrgd.PyramidalNet.load(tmp_path / "r" / "weights.npz")
    from pyrgd.config import build, load_config

    _, X, Y, _ = build(load_config(tmp_path / "r" / "config.toml"))
    F = net.forward(X, backend="reference")
    loss = 0.5 * float(((F - Y) ** 2).sum())
    assert loss == pytest.approx(s["final_loss"], rel=1e-12)
    rows = list(csv.DictReader(open(tmp_path / "r" / "history.csv")))
    assert int(rows[-1]["step"]) == s["steps"]


def test_a_new_run_in_a_reused_folder_leaves_none_of_the_old_runs_files(tmp_path):
    """A run without checkpoints or certificates, written over a folder that holds another run's, removes that
    run's checkpoint.npz (it would resume the old run) and certificates.csv (they would describe it)."""
    net, X, Y = _problem()
    out = tmp_path / "r"
    pyrgd.train(net.copy(), X, Y, lr=1e-3, steps=6, progress=False, out=out, checkpoint_every=3, track_every=2)
    assert (out / CHECKPOINT_FILE).is_file() and (out / "certificates.csv").is_file()
    other = pyrgd.PyramidalNet(8, [256, 8, 1], seed=5, dtype="float32")
    pyrgd.train(other, X, Y, lr=1e-3, steps=4, progress=False, out=out, checkpoint_every=0, track_every=0)
    assert not (out / CHECKPOINT_FILE).exists() and not (out / "certificates.csv").exists()
    assert json.loads((out / "summary.json").read_text())["steps"] == 4


def test_out_that_cannot_be_a_folder_is_refused_before_any_step(tmp_path):
    net, X, Y = _problem()
    afile = tmp_path / "afile"
    afile.write_text("")
    steps = []
    for bad, match in ((afile, "out: .*afile exists and is not a folder"), (3, "out: expected a folder path")):
        with pytest.raises(PyrgdError, match=match):
            pyrgd.train(net.copy(), X, Y, lr=1e-3, steps=50, progress=False, out=bad,
                        callback=lambda rec: steps.append(rec))
    assert steps == []


def test_summary_is_written_last_and_errors_name_the_file(tmp_path, monkeypatch):
    """A write that fails on the weights leaves no summary.json claiming a complete folder, and the error names
    the file the run was writing, not its temporary file."""
    from pyrgd.model import PyramidalNet

    net, X, Y = _problem()
    out = tmp_path / "r"

    def full_disk(self, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(PyramidalNet, "save", full_disk)
    with pytest.raises(OSError):
        pyrgd.train(net.copy(), X, Y, lr=1e-3, steps=3, progress=False, out=out, track_every=0)
    assert (out / "history.csv").is_file() and not (out / "summary.json").exists()
    monkeypatch.undo()
    (out / "history.csv").unlink()
    (out / "history.csv").mkdir()  # a folder where the file goes: os.replace fails
    with pytest.raises(OSError, match=r"cannot write .*history\.csv: Is a directory"):
        pyrgd.train(net.copy(), X, Y, lr=1e-3, steps=3, progress=False, out=out, track_every=0)


def test_a_checkpoint_that_cannot_be_written_warns_and_the_run_goes_on(tmp_path, monkeypatch):
    import importlib

    tm = importlib.import_module("pyrgd.train")  # the module (pyrgd.train is also the function)
    calls = []
    real = tm._Checkpointer.save

    def flaky(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(self, *args)

    monkeypatch.setattr(tm._Checkpointer, "save", flaky)
    net, X, Y = _problem()
    with pytest.warns(RuntimeWarning, match="the checkpoint of step 4 could not be written .*; the run goes on"):
        r = pyrgd.train(net.copy(), X, Y, lr=1e-3, steps=8, progress=False, out=tmp_path / "r", checkpoint_every=2,
                        track_every=0)
    assert r.summary["steps"] == 8 and load_checkpoint(tmp_path / "r")[1]["step"] == 8


@pytest.mark.parametrize("change, match", [
    (lambda a, m: m.pop("step"), "step None is not a step number"),
    (lambda a, m: m.update(step=-5), "step -5 is not a step number"),
    (lambda a, m: m.update(lr=None), "lr None is not a positive step size"),
    (lambda a, m: m.pop("lr_rule"), "it has no lr_rule"),
    (lambda a, m: m["history"].update(loss=[1.0]), "its history does not hold the 4 rows"),
    (lambda a, m: m.update(tracker=[1]), "its tracker is not a table"),
    (lambda a, m: a.pop("W_2"), r"W_2 is missing, expected \(256, 8\)"),
    (lambda a, m: a.update(W0_1=np.zeros((2, 2), np.float32)), r"W0_1 is of shape \(2, 2\), expected \(8, 256\)"),
])
def test_a_checkpoint_with_damaged_contents_is_refused_naming_what(tmp_path, change, match):
    """The zip's checksums hold but the values inside do not: a clear resume error, not an internal one."""
    net, X, Y = _problem()
    out = tmp_path / "r"
    pyrgd.train(net.copy(), X, Y, lr=1e-3, steps=4, progress=False, out=out, checkpoint_every=4, track_every=2)
    arrays, meta = load_checkpoint(out)
    change(arrays, meta)
    save_checkpoint(out / CHECKPOINT_FILE, arrays, {k: v for k, v in meta.items() if k != "format"})
    with pytest.raises(PyrgdError, match="resume: the checkpoint .* is damaged or was not written by pyrgd: " + match):
        pyrgd.train(net.copy(), X, Y, lr=1e-3, steps=8, progress=False, resume=out)


def test_cli_resume_refuses_a_changed_model_seed(tmp_path):
    out = tmp_path / "r"
    base = [sys.executable, "-m", "pyrgd", "train", "--preset", "quickstart", "--no-progress", "--json"]
    subprocess.run(base + ["--steps", "4", "--rel-tol", "0", "--checkpoint-every", "2", "--out", str(out)],
                   check=True, capture_output=True, cwd=tmp_path)
    r = subprocess.run([sys.executable, "-m", "pyrgd", "train", "--resume", str(out), "--set", "model.seed=7",
                        "--steps", "6", "--no-progress"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "initial_weights" in r.stderr and "seed" in r.stderr, r.stderr
    assert 'seed = 0' in (out / "config.toml").read_text().split("[model]")[1]  # the run's config untouched


def test_resume_from_the_checkpoint_a_run_ends_with_keeps_the_envelope(tmp_path):
    """The checkpoint written where a run stops is taken before that step's update: the tracker's state in it is
    the one of the step's start (the envelope not yet advanced by its factor), so the resumed history, envelope
    included, is the uninterrupted run's bit for bit."""
    from pyrgd import config as C
    from pyrgd.runio import read_history

    cfg = C.resolve_config(preset="quickstart", overrides={"train.rel_tol": 0.0, "train.track_every": 10})
    net, X, Y, kw = C.build(cfg)
    kw.update(progress=False, threads=1, checkpoint_every="auto")
    kw.pop("steps")
    full = pyrgd.train(net.copy(), X, Y, steps=40, **kw)
    pyrgd.train(net.copy(), X, Y, steps=25, out=tmp_path / "r", **kw)
    again = pyrgd.train(net.copy(), X, Y, steps=40, out=tmp_path / "r", resume=tmp_path / "r", **kw)
    assert np.isfinite(full.history["envelope"][30])
    for key in ("loss", "factor", "envelope"):
        np.testing.assert_array_equal(again.history[key], full.history[key])
    np.testing.assert_array_equal(read_history(tmp_path / "r")["envelope"], full.history["envelope"])
