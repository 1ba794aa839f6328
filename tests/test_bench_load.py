"""The load problem T_load (pyrgd.bench.load) and the OpenMP wait policy pyrgd sets (pyrgd._omp)."""
import os
import subprocess
import sys

import pytest

from pyrgd.bench import load
from pyrgd.bench.problems import make_data, select_problems
from pyrgd.bench.report import TARGETS, evaluate_targets, format_report


def test_busy_process_runs_and_is_gone_after_the_block():
    with load.busy_process(30) as proc:
        import time

        t0 = load.cpu_seconds(proc.pid)
        time.sleep(0.6)
        t1 = load.cpu_seconds(proc.pid)
        assert proc.poll() is None and t1 is not None and t1 > t0  # it spins
    assert proc.poll() is not None  # killed at the end of the block


def test_busy_process_ends_by_itself():
    with load.busy_process(0.2) as proc:
        assert proc.wait(timeout=20) == 0


def test_measure_load_compares_bits_and_times_both_thread_counts():
    p = [q for q in select_problems("T_load", tiny=True)][0]
    assert p.kind == "load" and p.candidates == ("load",)
    row = load.measure_load(make_data(p, "float32", 0), p.activation, p.lr, rounds=2, steps=2, busy_seconds=30)
    assert row["same_bits"] is True  # 1 and 2 threads: the same weights after the same steps
    assert len(row["seconds_by_round"]["1"]) == len(row["seconds_by_round"]["2"]) == 2
    assert row["speedup"] == pytest.approx(row["seconds_1"] / row["seconds_2"])
    assert row["min_round_speedup"] == pytest.approx(min(row["round_speedups"]))
    assert row["busy_cpu_seconds"] is None or row["busy_cpu_seconds"] > 0


def _result(speedup, rounds, same=True):
    row = {"status": "ok", "rounds": len(rounds), "steps": 5, "seconds_1": speedup * 0.1, "seconds_2": 0.1,
           "speedup": speedup, "round_speedups": rounds, "min_round_speedup": min(rounds), "same_bits": same,
           "busy_cpu_seconds": 3.0, "busy_wall_seconds": 4.0, "wait_policy": "x"}
    p = {"name": "T_load", "group": "T", "kind": "load", "N": 8, "d": 2, "widths": [8, 1], "activation": "relu",
         "candidates": {"load": row}}
    return {"device": "cpu", "problems": [p]}


@pytest.mark.parametrize("speedup, rounds, same, status", [
    (1.5, [1.4, 1.6], True, "PASS"),
    (1.2, [1.1, 1.3], True, "FAIL"),   # below 1.3x
    (1.5, [0.9, 1.8], True, "FAIL"),   # slower than one thread in a round
    (1.5, [1.4, 1.6], False, "FAIL"),  # other bits
])
def test_load_target(speedup, rounds, same, status):
    res = _result(speedup, rounds, same)
    t = [x for x in evaluate_targets(res) if x["id"] == "T_load"][0]
    assert t["status"] == status
    assert any(x["id"] == "T_load" for x in TARGETS)
    res["targets"] = evaluate_targets(res)
    assert "beside one busy process" in format_report(res)


def _child_policy(env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(env_extra)
    code = "import os, pyrgd.backends.cpu as c; print(c.WAIT_POLICY); print(os.environ.get('GOMP_SPINCOUNT'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_wait_policy_default_and_the_users_choice():
    from pyrgd._omp import DEFAULT_SPINCOUNT

    policy, spin = _child_policy({})
    assert "pyrgd's default" in policy and spin == DEFAULT_SPINCOUNT
    policy, spin = _child_policy({"OMP_WAIT_POLICY": "active"})
    assert policy == "OMP_WAIT_POLICY=active (set by the user)" and spin == "None"  # nothing added
    policy, spin = _child_policy({"GOMP_SPINCOUNT": "7"})
    assert policy == "GOMP_SPINCOUNT=7 (set by the user)" and spin == "7"


def test_wait_policy_is_left_alone_where_libgomp_is_loaded(monkeypatch):
    from pyrgd import _omp as _threads

    env = {}
    monkeypatch.setattr(_threads, "_libgomp_loaded", lambda: True)
    assert "loaded before" in _threads.set_default_wait_policy(env) and env == {}
    monkeypatch.setattr(_threads, "_libgomp_loaded", lambda: False)
    assert "pyrgd's default" in _threads.set_default_wait_policy(env) and env["GOMP_SPINCOUNT"]
