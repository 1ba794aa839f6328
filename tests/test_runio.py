"""pyrgd.runio: the run folder, written atomically, and read back."""
import json
import math
import os
import stat
import types

import numpy as np
import pytest

from pyrgd import _atomic
from pyrgd import config as C
from pyrgd import runio
from pyrgd.errors import PyrgdError
from pyrgd.model import PyramidalNet


def fake_result(n=60, status="converged", certificates=True):
    """A stand-in for pyrgd.train.TrainResult with the documented fields."""
    k = np.arange(n + 1)
    loss = 10.0 * 0.9**k
    factor = np.r_[np.nan, loss[1:] / loss[:-1]]
    history = {"step": k.tolist(), "loss": loss.tolist(), "factor": list(factor),  # numpy floats inside
               "grad_norm_1": (0.1 * loss).tolist(), "grad_norm_2": np.sqrt(loss).tolist(),
               "time": (1e-3 * k).tolist(), "envelope": np.where(k < 3, np.nan, 12 * 0.95**k).tolist()}
    cs = k[::20]
    certs = {"step": cs.tolist(), "sigma_min_F1": [0.5] * len(cs), "mu": [0.2] * len(cs),
             "certified_factor": [0.95] * len(cs), "observed_factor": [0.9] * len(cs),
             "dist_W1": [0.0] * len(cs), "time": [0.01] * len(cs)} if certificates else {}
    net = PyramidalNet(3, [16, 1], activation="tanh", seed=1)
    summary = {"status": status, "message": "done", "steps": n, "initial_loss": 10.0, "final_loss": float(loss[-1]),
               "median_factor": np.float64(0.9), "relative_loss": float("nan"), "widths": (16, 1),
               "lr": np.float32(0.5), "N": np.int64(8), "versions": {"numpy": np.__version__}, "bad": float("inf")}
    return types.SimpleNamespace(status=status, message="done", history=history, certificates=certs,
                                 summary=summary, net=net)


def test_write_run_writes_every_file(tmp_path):
    out = tmp_path / "a" / "run"
    cfg = C.resolve_config(preset="quickstart")
    res = fake_result()
    assert runio.write_run(out, res, cfg) == str(out)
    assert sorted(os.listdir(out)) == sorted(runio.RUN_FILES)
    assert C.load_config(out / "config.toml") == cfg
    with open(out / "loss.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    net = PyramidalNet.load(out / "weights.npz")
    for a, b in zip(net.weights, res.net.weights):
        np.testing.assert_array_equal(a, b)


def test_history_reads_back_equal(tmp_path):
    res = fake_result()
    runio.write_run(tmp_path, res)
    h = runio.read_history(tmp_path)
    assert list(h) == list(res.history)
    assert h["step"] == res.history["step"] and all(type(s) is int for s in h["step"])
    for key in res.history:
        np.testing.assert_array_equal(np.asarray(h[key], float), np.asarray(res.history[key], float))  # bit-exact
    assert math.isnan(h["factor"][0]) and math.isnan(h["envelope"][0])
    c = runio.read_certificates(tmp_path)
    assert c["step"] == [0, 20, 40, 60] and c["certified_factor"] == [0.95] * 4


def test_summary_is_json_safe(tmp_path):
    runio.write_run(tmp_path, fake_result())
    text = (tmp_path / "summary.json").read_text()
    s = json.loads(text)  # strict JSON: no NaN / Infinity tokens
    assert "NaN" not in text and "Infinity" not in text
    assert s["relative_loss"] is None and s["bad"] is None
    assert s["median_factor"] == 0.9 and s["N"] == 8 and s["widths"] == [16, 1] and s["lr"] == 0.5
    assert runio.read_summary(tmp_path) == s


def test_no_config_and_no_certificates(tmp_path):
    runio.write_run(tmp_path, fake_result(certificates=False))
    assert not (tmp_path / "config.toml").exists()
    assert not (tmp_path / "certificates.csv").exists()
    assert (tmp_path / "history.csv").exists()


def test_rewriting_a_folder_replaces_the_files(tmp_path):
    runio.write_run(tmp_path, fake_result(n=10))
    runio.write_run(tmp_path, fake_result(n=30, status="diverged"))
    assert len(runio.read_history(tmp_path)["step"]) == 31
    assert runio.read_summary(tmp_path)["status"] == "diverged"
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_a_failure_while_writing_keeps_the_earlier_good_file(tmp_path, monkeypatch):
    runio.write_run(tmp_path, fake_result(n=10))
    good = (tmp_path / "summary.json").read_bytes()

    def crash(fd):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(runio.os, "fsync", crash)  # fails after the temp file holds (part of) the new text
    with pytest.raises(OSError, match="injected"):
        runio.write_run(tmp_path, fake_result(n=30, status="diverged"))
    assert (tmp_path / "summary.json").read_bytes() == good
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_atomic_write_interrupted_half_way(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old and good")

    def half(f):
        f.write("new but ")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runio.atomic_write(p, half)
    assert p.read_text() == "old and good"
    assert os.listdir(tmp_path) == ["f.txt"]
    runio.atomic_write(p, lambda f: f.write("new"))
    assert p.read_text() == "new"


def test_plot_failure_warns_and_keeps_the_numbers(tmp_path, monkeypatch):
    def broken(path, result):
        raise RuntimeError("no plot")

    monkeypatch.setattr(runio, "plot_run", broken)
    with pytest.warns(RuntimeWarning, match="could not draw"):
        runio.write_run(tmp_path, fake_result())
    assert (tmp_path / "summary.json").exists() and not (tmp_path / "loss.png").exists()


def test_plot_handles_a_diverged_run_with_infinite_loss(tmp_path):
    res = fake_result(n=20, status="diverged")
    res.history["loss"][-1] = float("inf")
    res.history["factor"][-1] = float("inf")
    runio.write_run(tmp_path, res)
    assert (tmp_path / "loss.png").stat().st_size > 1000


def test_bad_out_and_bad_history(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(PyrgdError, match=r"^out: .* is not a folder"):
        runio.write_run(f, fake_result())
    with pytest.raises(PyrgdError, match=r"^out: expected a folder path"):
        runio.write_run(None, fake_result())
    res = fake_result()
    res.history["loss"] = res.history["loss"][:-1]
    with pytest.raises(PyrgdError, match=r"^result\.history: columns of unequal length"):
        runio.write_run(tmp_path / "r", res)


def test_read_history_errors(tmp_path):
    with pytest.raises(PyrgdError, match=r"^out: no history\.csv"):
        runio.read_history(tmp_path)
    (tmp_path / "history.csv").write_text("step,loss\n0,1.0\n1\n")
    with pytest.raises(PyrgdError, match=r"line 3 has 1 fields"):
        runio.read_history(tmp_path)


def test_json_safe():
    v = runio.json_safe({"a": np.array([1.0, np.nan]), 3: (np.int32(2), np.bool_(True)), "o": object})
    assert v["a"] == [1.0, None] and v["3"] == [2, True] and isinstance(v["o"], str)
    json.dumps(v, allow_nan=False)


def test_files_get_the_permissions_of_a_plain_open(tmp_path, monkeypatch):
    """atomic_write's temporary file is private (0600, mkstemp's): the file it becomes gets 0666 less the umask, as
    open() would give it, or the permissions of the file it replaces; the same for a saved network."""
    monkeypatch.setattr(_atomic, "_UMASK", 0o022)
    path = tmp_path / "a.txt"
    runio.atomic_write(path, lambda f: f.write("x"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    os.chmod(path, 0o640)
    runio.atomic_write(path, lambda f: f.write("y"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640 and path.read_text() == "y"
    monkeypatch.setattr(_atomic, "_UMASK", 0o077)
    PyramidalNet(3, [8, 1], seed=0).save(tmp_path / "w.npz")
    assert stat.S_IMODE(os.stat(tmp_path / "w.npz").st_mode) == 0o600
    assert _atomic._read_umask() == _atomic._read_umask()  # reading the umask leaves it as it was
