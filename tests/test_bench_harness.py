"""The benchmark harness (pyrgd.bench) is right: flop and byte counts, every candidate computes the same GD step,
the memory probe sees what is allocated, targets are judged correctly, and `pyrgd bench --tiny --json` runs.

No timing thresholds here: speed is measured by `pyrgd bench` and bench/, never asserted by a unit test.
"""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from pyrgd.bench import add_bench_parser, main, run_bench
from pyrgd.bench import candidates as C
from pyrgd.bench.memory import measure_cpu_peak
from pyrgd.bench.problems import Problem, all_problems, data_bytes, make_data, select_problems, useful_flops
from pyrgd.bench.report import TARGETS, evaluate_targets, format_report, format_target, json_safe
from pyrgd.bench.runner import Options, run_problem, step_errors, summarize, thread_limits
from pyrgd.errors import PyrgdError

TORCH = C.torch_available()[0]


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def cpu_available():
    try:
        from pyrgd.backends import cpu

        return cpu.available()[0]
    except ImportError:
        return False


# ------------------------------------------------------------------------------------------------ counts
def _count_flops_by_matmuls(N, d, widths):
    """Independent count: every matrix product of an unfused step, 2 m k n flops each."""
    dims = [d] + list(widths)
    L = len(widths)
    f = 0
    for l in range(L):  # forward Z_{l+1} = F_l W_{l+1}
        f += 2 * N * dims[l] * dims[l + 1]
    for l in range(L - 1, -1, -1):  # backward: dW = F^T D, and D W^T except below layer 1
        f += 2 * N * dims[l] * dims[l + 1]
        if l > 0:
            f += 2 * N * dims[l] * dims[l + 1]
    return f


@pytest.mark.parametrize("N,d,widths", [(4096, 64, [4096, 64, 32, 10]), (32768, 32, [32768, 32, 16, 1]),
                                        (7, 3, [11, 2]), (5, 4, [9, 6, 3])])
def test_useful_flops_is_theory_formula(N, d, widths):
    dims = [d] + widths
    theory = sum(6 * N * a * b for a, b in zip(dims, dims[1:])) - 2 * N * d * widths[0]
    assert useful_flops(N, d, widths) == theory == _count_flops_by_matmuls(N, d, widths)


def test_useful_flops_of_b1_by_hand():
    # 6 N (d n1 + n1 n2 + n2 n3 + n3 n4) - 2 N d n1 with N = n1 = 4096, d = n2 = 64, n3 = 32, n4 = 10
    assert useful_flops(4096, 64, [4096, 64, 32, 10]) == 4096 * (6 * (2 * 64 * 4096 + 64 * 32 + 320) - 2 * 64 * 4096)


def test_data_bytes_parts():
    p = data_bytes(32768, 32, [32768, 32, 16, 1], itemsize=4)
    assert p["X"] == 4 * 32768 * 32
    assert p["Y"] == 4 * 32768
    assert p["weights"] == 4 * (32 * 32768 + 32768 * 32 + 32 * 16 + 16)
    assert p["N_x_n2_buffers"] == 2 * 4 * 32768 * 32
    assert p["tail_buffers"] == 4 * 32768 * 16
    assert p["total"] == sum(v for k, v in p.items() if k != "total")
    assert data_bytes(10, 3, [20, 1])["tail_buffers"] == 0  # L = 2: no hidden tail layer


def test_problem_specs():
    full = {p.name: p for p in all_problems("cpu")}
    assert (full["B1"].N, full["B1"].d, full["B1"].widths) == (4096, 64, (4096, 64, 32, 10))
    assert full["B1"].activation == "smooth_leaky_relu(0.2)" and full["B2"].activation == "relu"
    assert (full["B3"].N, full["B3"].d, full["B3"].widths) == (32768, 32, (32768, 32, 16, 1))
    assert sorted(p.n1 for p in full.values() if p.group == "B4") == [1024, 2048, 4096, 8192, 16384]
    assert [full["T1"].threads, full["T2"].threads] == [1, 2]
    # the memory problem runs the method that holds no gradient of the wide layer; the others pyrgd's default
    assert full["B3"].method == "neurons" and all(p.method == "auto" for n, p in full.items() if n != "B3")
    gpu = {p.name: p for p in all_problems("cuda")}
    assert (gpu["G1"].N, gpu["G1"].d, gpu["G1"].widths) == (65536, 256, (65536, 128, 64, 10))
    assert (gpu["G2"].N, gpu["G2"].d, gpu["G2"].widths) == (131072, 256, (131072, 64, 32, 1))
    for tiny in all_problems("cpu", tiny=True):
        assert tiny.N * tiny.n1 <= 2**23  # seconds, not minutes
    # the train problems (group L): pyrgd.train with its defaults for `steps` steps
    assert (full["L1"].N, full["L1"].d, full["L1"].widths, full["L1"].steps) == (20000, 16, (20000, 8, 1), 20)
    assert (full["L2"].N, full["L2"].d, full["L2"].widths, full["L2"].steps) == (65536, 16, (65536, 8, 1), 1)
    b1t = full["B1_track"]
    assert (b1t.N, b1t.d, b1t.widths, b1t.activation, b1t.steps) == (4096, 64, (4096, 64, 32, 10),
                                                                       full["B1"].activation, 200)
    train = [p for p in full.values() if p.kind == "train"]
    assert sorted(p.name for p in train) == ["B1_track", "L1", "L2"]
    assert all(p.group == "L" and p.candidates == ("train",) for p in train)
    assert all(p.kind == "step" and p.steps is None for p in full.values() if p.group != "L" and p.name not in ("T_load", "M1"))
    assert full["T_load"].kind == "load" and full["T_load"].widths == full["B1"].widths  # B1 beside a busy process
    assert full["L2"].max_repeats == 1  # one bare engine step of L2 after its run
    tiny = {p.name: p for p in all_problems("cpu", tiny=True) if p.kind == "train"}
    assert {n: p.steps for n, p in tiny.items()} == {"L1": 20, "L2": 1, "B1_track": 200}
    assert tiny["L1"].N == tiny["L1"].n1 and tiny["L2"].N == tiny["L2"].n1


def test_select_problems():
    assert [p.name for p in select_problems("B4", "cpu")] == ["B4_1024", "B4_2048", "B4_4096", "B4_8192", "B4_16384"]
    assert [p.name for p in select_problems("b1,T", "cpu", tiny=True)] == ["B1", "T1", "T2", "T_load"]
    assert [p.name for p in select_problems(None, "cuda")] == ["G1", "G2"]
    with pytest.raises(PyrgdError, match="--backend cuda"):
        select_problems("G1", "cpu")
    with pytest.raises(PyrgdError, match="unknown problem 'B9'"):
        select_problems("B9", "cpu")
    # the train problems: group L, by name too, never in the default selection
    assert [p.name for p in select_problems("L", "cpu")] == ["L1", "L2", "B1_track"]
    assert [p.name for p in select_problems("l2,b1", "cpu", tiny=True)] == ["L2", "B1"]
    assert [p.name for p in select_problems("B1_track", "cpu")] == ["B1_track"]
    default = [p.name for p in select_problems(None, "cpu")]
    assert default == [p.name for p in all_problems("cpu") if p.group != "L"] and "B1" in default
    assert [p.name for p in select_problems("B1,B2,D,B3,B4,T,M1,L", "cpu")] == [p.name for p in all_problems("cpu")]


def test_fused_candidate_runs_the_problems_method():
    """The fused candidate builds its GDStep with the problem's method (B3: neurons, the memory-lean one), and the
    two methods compute the same step."""
    pytest.importorskip("pyrgd._cpu", reason="the C++ extension is not built")
    base = dict(N=64, d=3, widths=(128, 4, 1))
    outs = {}
    for method in ("auto", "neurons"):
        data = make_data(Problem("M", **base, method=method), "float64", seed=2)
        cand = C.make_candidate("fused", data, backend="cpu")
        assert cand.method == ("rows" if method == "auto" else "neurons")
        assert cand.kept == (128 if method == "auto" else None)
        outs[method] = (cand.step(), cand.weights())
    assert abs(outs["auto"][0] - outs["neurons"][0]) <= 1e-12 * outs["auto"][0]
    assert all(np.allclose(a, b, rtol=1e-10, atol=1e-14) for a, b in zip(outs["auto"][1], outs["neurons"][1]))


def test_make_data_is_reproducible_and_in_dtype():
    p = Problem("x", 30, 4, (50, 3, 2))
    a, b = make_data(p, "float32", seed=3), make_data(p, "float32", seed=3)
    assert a.X.dtype == np.float32 and all(w.dtype == np.float32 for w in a.W)
    assert [w.shape for w in a.W] == [(4, 50), (50, 3), (3, 2)]
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.W[0], b.W[0])
    assert not np.array_equal(a.X, make_data(p, "float32", seed=4).X)
    assert abs(float(np.mean(np.sum(a.X.astype(np.float64) ** 2, axis=1))) - 1.0) < 0.5


# ------------------------------------------------------------------------------------------------ same step
def _reference_step(data, steps=1):
    """Weights and losses after `steps` GD steps by the NumPy reference backend + pyrgd.tail (float64 oracle)."""
    ref = C.FusedStep(data, np, backend="reference")
    losses = [ref.step() for _ in range(steps)]
    return ref.weights(), losses


def _names():
    out = ["unfused", "chunked"]
    if cpu_available():
        out.append("fused")
    if TORCH:
        out.append("torch")
    return out


@pytest.mark.parametrize("activation", ["relu", "smooth_leaky_relu(0.2)", "tanh", "leaky_relu(0.1)"])
@pytest.mark.parametrize("widths", [(64, 6, 4, 3), (70, 2), (45, 5, 5)])
@pytest.mark.parametrize("name", _names())
def test_candidate_computes_the_reference_step(name, widths, activation):
    p = Problem("t", 40, 5, widths, activation=activation)
    data = make_data(p, "float64", seed=7)
    w_ref, loss_ref = _reference_step(data, steps=2)
    cand = C.make_candidate(name, data, block=16)  # 16 does not divide n1: ragged last block
    losses = [cand.step() for _ in range(2)]  # the second step checks what a candidate carries over (H)
    cand.sync()
    for a, b in zip(cand.weights(), w_ref):
        assert rel_err(a, b) < 1e-11
    assert losses == pytest.approx(loss_ref, rel=1e-11)
    # the data the candidates start from is never modified
    np.testing.assert_array_equal(data.W[0], make_data(p, "float64", seed=7).W[0])


def test_unfused_step_is_gradient_descent():
    """The unfused step (independent of pyrgd.tail) is W - lr dPhi/dW: its update matches a central difference."""
    p = Problem("t", 12, 3, (20, 4, 2), activation="tanh")
    data = make_data(p, "float64", seed=1)
    cand = C.UnfusedStep(data)
    phi = lambda W: C.UnfusedStep(type(data)(p, data.X, data.Y, W)).step()  # noqa: E731 (loss at W)
    cand.step()
    for l in range(3):
        grad = (data.W[l] - cand.weights()[l]) / p.lr
        i, j = 1, 1
        e = 1e-6
        Wp = [w.copy() for w in data.W]
        Wm = [w.copy() for w in data.W]
        Wp[l][i, j] += e
        Wm[l][i, j] -= e
        assert grad[i, j] == pytest.approx((phi(Wp) - phi(Wm)) / (2 * e), rel=1e-6, abs=1e-9)


@pytest.mark.skipif(not TORCH, reason="PyTorch is not installed")
@pytest.mark.parametrize("activation", ["relu", "leaky_relu(0.1)", "smooth_leaky_relu(0.2)", "softplus", "tanh",
                                        "erf", "identity"])
def test_torch_activation_matches_pyrgd(activation):
    import torch

    from pyrgd.activations import parse_activation

    act = parse_activation(activation)
    z = np.linspace(-6, 6, 101)
    zt = torch.tensor(z, requires_grad=True)
    y = C._torch_activation(torch, act)(zt)
    y.sum().backward()
    np.testing.assert_allclose(y.detach().numpy(), act.sigma(z), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(zt.grad.numpy(), act.dsigma(z), rtol=1e-12, atol=1e-12)


def test_step_errors():
    w0 = [np.ones((3, 2)), np.ones(4)]
    w_ref = [w0[0] - 0.1, w0[1] - 0.2]
    e = step_errors(w0, w_ref, [w.copy() for w in w_ref], 2.0, 2.0)
    assert e == {"rel_err_weights": 0.0, "rel_err_update": 0.0, "rel_err_loss": 0.0}
    e = step_errors(w0, w_ref, [w.copy() for w in w0], 2.0, 2.2)  # a candidate that does not update at all
    assert e["rel_err_update"] == pytest.approx(1.0)
    assert e["rel_err_weights"] < 0.25  # the updated weights alone would hide it: hence the update's error
    assert e["rel_err_loss"] == pytest.approx(0.1)
    assert step_errors(w0, w_ref, [w0[0] * np.nan, w0[1]], 2.0, 2.0)["rel_err_update"] == math.inf


def test_summarize():
    s = summarize([3.0, 1.0, 2.0, 4.0, 5.0])
    assert s["seconds"] == 3.0 and s["iqr"] == 2.0 and s["min"] == 1.0 and s["max"] == 5.0
    assert s["times"] == [3.0, 1.0, 2.0, 4.0, 5.0]


# ------------------------------------------------------------------------------------------------ runner
def _opts(**kw):
    base = dict(tiny=True, repeats=2, warmup=1, warmup_seconds=0.0, memory=False, progress=False)
    base.update(kw)
    return Options(**base)


def test_run_problem_rows(monkeypatch):
    p = Problem("B1", 64, 6, (96, 8, 3), candidates=C.CANDIDATES)
    res = run_problem(p, _opts(), {"default": {"gflops": 10.0}})
    rows = res["candidates"]
    assert list(rows) == list(C.CANDIDATES)
    assert rows["fused"]["status"] == "ok" and rows["fused"]["backend"] in ("cpu", "reference")
    for n in ("unfused", "chunked"):
        r = rows[n]
        assert r["status"] == "ok", r
        assert r["rel_err_update"] < 1e-3 and r["rel_err_loss"] < 1e-5
        assert len(r["times"]) == 2 and r["seconds"] > 0 and r["fused_speedup"] > 0
        assert r["gflops"] == pytest.approx(res["useful_flops"] / r["seconds"] / 1e9)
        assert r["pct_sgemm"] == pytest.approx(10 * r["gflops"])
        assert len(r["pass_medians"]) == 2
    assert rows["torch"]["status"] == ("ok" if TORCH else "skipped")
    if not TORCH:
        assert "PyTorch" in rows["torch"]["note"]


def test_a_wrong_candidate_is_flagged(monkeypatch, capsys):
    class Wrong(C.ChunkedStep):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.lr *= 1.5  # a different step

    def make(name, data, **kw):
        if name == "chunked":
            return Wrong(data, np, block=8)
        return orig(name, data, **kw)

    orig = C.make_candidate
    monkeypatch.setattr("pyrgd.bench.runner.make_candidate", make)
    p = Problem("B1", 32, 4, (40, 4, 2), candidates=("fused", "chunked"))
    row = run_problem(p, _opts(), {})["candidates"]["chunked"]
    assert row["status"] == "mismatch" and "differs" in row["note"]
    assert row["rel_err_update"] > 0.1
    rc = main(["--tiny", "--problems", "B1", "--repeats", "1", "--no-memory", "--no-progress", "--json"])
    assert rc == 1
    assert "did not compute the fused step" in capsys.readouterr().err


def test_a_failing_candidate_is_reported_not_fatal(monkeypatch):
    def make(name, data, **kw):
        if name == "unfused":
            raise MemoryError("pretend")
        return orig(name, data, **kw)

    orig = C.make_candidate
    monkeypatch.setattr("pyrgd.bench.runner.make_candidate", make)
    p = Problem("B1", 32, 4, (40, 4, 2), candidates=("fused", "unfused", "chunked"))
    rows = run_problem(p, _opts(), {})["candidates"]
    assert rows["unfused"]["status"] == "failed" and "MemoryError" in rows["unfused"]["note"]
    assert rows["chunked"]["status"] == "ok"


def test_a_candidate_failing_while_timed_is_reported(monkeypatch):
    class Flaky(C.ChunkedStep):
        calls = 0

        def step(self):
            Flaky.calls += 1
            if Flaky.calls > 1:  # the check step passes, the timing fails
                raise FloatingPointError("pretend")
            return super().step()

    def make(name, data, **kw):
        return Flaky(data, np, block=8) if name == "chunked" else orig(name, data, **kw)

    orig = C.make_candidate
    monkeypatch.setattr("pyrgd.bench.runner.make_candidate", make)
    p = Problem("B1", 32, 4, (40, 4, 2), candidates=("fused", "chunked", "unfused"))
    res = run_problem(p, _opts(), {})
    rows = res["candidates"]
    assert res["schedule"].startswith("two passes")
    assert rows["chunked"]["status"] == "failed" and "FloatingPointError" in rows["chunked"]["note"]
    assert rows["fused"]["status"] == rows["unfused"]["status"] == "ok"
    assert len(rows["unfused"]["times"]) == 2


def test_candidate_that_would_not_fit_is_skipped(monkeypatch):
    monkeypatch.setattr("pyrgd.bench.runner.available_bytes", lambda: 10 * 2**20)
    p = Problem("B3", 1024, 4, (2048, 4, 1), candidates=("fused", "unfused"))
    rows = run_problem(p, _opts(), {})["candidates"]
    assert rows["unfused"]["status"] == "skipped" and "would not fit" in rows["unfused"]["note"]
    assert rows["fused"]["status"] == "ok"


def test_thread_limits_restore():
    if not cpu_available():
        pytest.skip("the C++ backend is not built")
    from pyrgd.backends import cpu

    before = cpu.get_num_threads()
    with thread_limits(1):
        assert cpu.get_num_threads() == 1
    assert cpu.get_num_threads() == before


# ------------------------------------------------------------------------------------------------ memory
def test_memory_probe_sees_the_n_by_n1_matrices():
    """The fresh-process probe: the unfused step's N x n1 matrices show, the fused step stays near its data."""
    # N = 4096: the fused step's own memory does not grow with N (panels of at most 240 rows, one per thread where
    # the threads run row groups of their own, and the groups' gradients), while the unfused step's does
    p = Problem("m", 4096, 8, (2048, 8, 1))
    nn1 = 4 * p.N * p.n1  # one float32 N x n1 matrix: 32 MiB
    unf = measure_cpu_peak(p, "unfused")
    assert "error" not in unf, unf
    assert unf["peak_bytes"] >= 2 * nn1  # at least F1 and sigma'(Z1) live at once
    assert unf["method"] in ("vmhwm-reset", "vmhwm-no-reset", "ru_maxrss")
    if cpu_available():
        fus = measure_cpu_peak(p, "fused", backend="cpu")
        assert "error" not in fus, fus
        assert fus["peak_bytes"] < nn1 / 2
        assert fus["loss_finite"]


def test_memory_probe_reports_errors():
    p = Problem("m", 16, 2, (16, 1))
    out = measure_cpu_peak(p, "no_such_candidate")
    assert "error" in out


# ------------------------------------------------------------------------------------------------ targets
def _row(seconds=None, status="ok", **kw):
    r = {"status": status, **kw}
    if seconds is not None:
        r["seconds"] = seconds
    return r


def _prob(name, cands, group=None, widths=(4096, 64, 32, 10), **kw):
    return {"name": name, "group": group or name, "widths": list(widths), "data_bytes": 100 * 2**20,
            "sgemm_gflops": 200.0, "candidates": cands, **kw}


def _synthetic():
    return {"device": "cpu", "problems": [
        _prob("B1", {"fused": _row(1.0, pct_sgemm=55.0, gflops=110.0), "chunked": _row(3.5),
                     "torch": _row(2.0), "unfused": _row(9.0)}),
        _prob("B2", {"fused": _row(1.0, pct_sgemm=20.0, gflops=40.0),
                     "chunked": _row(5.0, status="mismatch", note="differs"),
                     "torch": _row(status="skipped", note="PyTorch is not importable")}),
        _prob("B3", {"fused": _row(9.0, peak_bytes=140 * 2**20, peak_over_data=1.4, peak_method="vmhwm-reset")}),
        _prob("B4_1024", {"fused": _row(1.0)}, group="B4", widths=(1024, 64, 32, 10)),
        _prob("B4_2048", {"fused": _row(2.1)}, group="B4", widths=(2048, 64, 32, 10)),
        _prob("B4_4096", {"fused": _row(4.4)}, group="B4", widths=(4096, 64, 32, 10)),
        _prob("T1", {"fused": _row(1.8)}, threads=1),
        _prob("T2", {"fused": _row(1.0)}, threads=2),
    ]}


def test_targets_on_synthetic_numbers():
    t = {x["id"]: x for x in evaluate_targets(_synthetic())}
    assert set(t) == {x["id"] for x in TARGETS if x["device"] == "cpu"}
    assert t["B1_vs_chunked"]["status"] == "PASS" and t["B1_vs_chunked"]["measured"] == pytest.approx(3.5)
    assert t["B1_vs_torch"]["status"] == "FAIL" and t["B1_vs_torch"]["measured"] == pytest.approx(2.0)
    assert t["B1_sgemm"]["status"] == "PASS" and t["B1_sgemm"]["measured"] == 55.0
    assert t["B2_sgemm"]["status"] == "FAIL"
    assert t["B2_vs_chunked"]["status"] == "SKIP" and "mismatch" in t["B2_vs_chunked"]["detail"]
    assert t["B2_vs_torch"]["status"] == "SKIP" and "PyTorch" in t["B2_vs_torch"]["detail"]
    assert t["B3_memory"]["status"] == "PASS" and t["B3_memory"]["measured"] == 1.4
    # s per neuron: 1.0/1024, 2.1/2048, 4.4/4096 -> max/min = (4.4/4096)/(1.0/1024) = 1.1
    assert t["B4_per_neuron"]["status"] == "PASS" and t["B4_per_neuron"]["measured"] == pytest.approx(1.1)
    assert t["threads"]["status"] == "PASS" and t["threads"]["measured"] == pytest.approx(1.8)
    for x in t.values():
        assert set(x) == {"id", "text", "status", "measured", "threshold", "op", "unit", "detail"}
        line = format_target(x)
        assert line.startswith(x["status"]) and x["text"] in line


def test_b4_target_uses_the_interleaved_timing_where_the_run_has_it():
    """The interleaved medians (every size timed in the same stretch of the machine) decide the B4 target; the spread
    of the sizes timed one after the other is stated beside it; an interleaved timing that lacks a size is ignored."""
    r = _synthetic()
    r["problems"][5]["candidates"]["fused"]["seconds"] = 5.0  # one after the other: spread 1.25, a FAIL
    r["interleaved"] = {"B4": {"rounds": 21, "schedule": "rounds", "iqr": {},
                               "seconds": {"1024": 1.0, "2048": 2.0, "4096": 4.2}}}
    t = {x["id"]: x for x in evaluate_targets(r)}["B4_per_neuron"]
    assert t["status"] == "PASS" and t["measured"] == pytest.approx(4.2 / 4096 / (2.0 / 2048))
    assert "interleaved, 21 rounds; 1.25x timed one size after the other" in t["detail"]
    del r["interleaved"]["B4"]["seconds"]["4096"]
    t = {x["id"]: x for x in evaluate_targets(r)}["B4_per_neuron"]
    assert t["status"] == "FAIL" and t["measured"] == pytest.approx(1.25) and "one size after the other" in t["detail"]


def test_speedup_targets_state_the_roofline_bound():
    """With the fused flop count and the FMA peak, a speed-up target says the largest ratio any implementation of the
    fused algorithm could show: baseline s / (fused flops / peak rate)."""
    from pyrgd.bench.problems import fused_flops, useful_flops
    from pyrgd.bench.report import attainable_speedup

    shape = (4096, 64, (4096, 64, 32, 10))
    assert fused_flops(*shape, "neurons") == useful_flops(*shape) + 2 * 4096 * 64 * 4096
    assert fused_flops(*shape, "rows") == useful_flops(*shape)
    assert fused_flops(*shape, "rows", 4096) == useful_flops(*shape)
    assert fused_flops(*shape, "rows", 1024) == useful_flops(*shape) + 2 * 4096 * 64 * 3072  # 3072 recomputed
    with pytest.raises(ValueError, match="method"):
        fused_flops(*shape, "columns")
    with pytest.raises(ValueError, match="kept"):
        fused_flops(*shape, "rows", 5000)
    r = _synthetic()
    r["problems"][0]["fused_flops"] = 400e9  # 2 s at the peak of 200 GFLOP/s
    r["problems"][0]["peak_gflops"] = 200.0
    t = {x["id"]: x for x in evaluate_targets(r)}
    assert attainable_speedup(r["problems"][0], 3.5) == pytest.approx(1.75)
    assert "at most 1.75x is attainable" in t["B1_vs_chunked"]["detail"]
    assert "at most 1.00x is attainable" in t["B1_vs_torch"]["detail"]
    assert attainable_speedup(r["problems"][1], 3.5) is None  # no flop count: no bound claimed
    assert "roofline" not in t["B2_vs_torch"]["detail"]


def test_plot_of_a_result(tmp_path):
    """The figure has a panel per problem with speed-up targets and one for the B4 sweep, and is a real PNG; a
    result with nothing to draw is refused with a message; the JSON redraw entry point reports bad files."""
    from pyrgd.bench.plot import main as plot_main
    from pyrgd.bench.plot import plot_result

    r = _synthetic()
    r["problems"][0].update(fused_flops=400e9, peak_gflops=400.0, N=4096, d=64, activation="relu")
    r["problems"][1].update(N=4096, d=64, activation="relu")
    out = tmp_path / "b.png"
    assert plot_result(r, str(out)) == ["B1", "B2", "B4"]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # with the interleaved B4 timing the panel draws both timings: another figure
    r2 = dict(r, interleaved={"B4": {"rounds": 9, "seconds": {"1024": 1.0, "2048": 2.0, "4096": 4.1}}})
    assert plot_result(r2, str(tmp_path / "i.png")) == ["B1", "B2", "B4"]
    assert (tmp_path / "i.png").read_bytes() != out.read_bytes()
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_result({"device": "cpu", "problems": []}, str(tmp_path / "none.png"))
    js = tmp_path / "r.json"
    js.write_text(json.dumps(r))
    assert plot_main([str(js), str(tmp_path / "again.png")]) == 0 and (tmp_path / "again.png").stat().st_size > 0
    assert plot_main([str(tmp_path / "missing.json"), str(tmp_path / "x.png")]) == 2
    assert plot_main([str(js)]) == 2


def test_targets_fail_and_skip_edges():
    r = _synthetic()
    r["problems"][2]["candidates"]["fused"]["peak_over_data"] = 1.6  # B3 over budget
    r["problems"][5]["candidates"]["fused"]["seconds"] = 5.0  # B4 spread 1.25
    r["problems"][6]["candidates"]["fused"]["seconds"] = 1.5  # threads 1.5x
    t = {x["id"]: x for x in evaluate_targets(r)}
    assert t["B3_memory"]["status"] == "FAIL" and t["B4_per_neuron"]["status"] == "FAIL"
    assert t["threads"]["status"] == "FAIL" and t["threads"]["measured"] == pytest.approx(1.5)
    r["problems"] = r["problems"][:1]  # only B1 ran
    t = {x["id"]: x for x in evaluate_targets(r)}
    assert t["B3_memory"]["status"] == "SKIP" and "not run" in t["B3_memory"]["detail"]
    assert t["threads"]["status"] == "SKIP" and t["B4_per_neuron"]["status"] == "SKIP"
    r["problems"][0]["candidates"]["fused"] = _row(status="failed", note="boom")
    t = {x["id"]: x for x in evaluate_targets(r)}
    assert t["B1_vs_chunked"]["status"] == "FAIL" and "boom" in t["B1_vs_chunked"]["detail"]


# ------------------------------------------------------------------------------------------------ train problems
def _plan(data, weights, step, tracking=7, lr=5):
    parts = [("data", data), ("weights", weights), ("step", step), ("tracking", tracking), ("lr", lr)]
    return {"tracking_route": "estimate", "total_bytes": sum(b for _, b in parts),
            "parts": [{"name": n, "bytes": b} for n, b in parts]}


def _measured(problem, *, wall=10.0, steps=8.0, tracking=0.5, lr=1.0, peak=130, process_peak=1000, bare=(2.0,),
              plan=None, drop=()):
    """A fake answer of train_runs.measure_train (bytes and seconds chosen for easy arithmetic)."""
    dims = problem.dims
    w = 4 * sum(a * b for a, b in zip(dims, dims[1:]))
    summary = {"status": "max_steps", "steps": problem.steps, "wall_time_s": wall - 0.01, "step_time_s": steps,
               "tracking_time_s": tracking, "lr_time_s": lr, "method": "rows", "kept_neurons": problem.n1,
               "backend": "cpu", "lr": 1e-3, "lr_rule": "auto", "initial_loss": 2.0, "final_loss": 1.0,
               "tracking": {"every": "auto", "route": "estimate", "certificates": 3, "seconds": tracking},
               "plan": _plan(40, 2 * w, 60 - w) if plan is None else plan}
    for k in drop:
        summary.pop(k)
    return {"wall_s": wall, "peak_bytes": peak, "process_peak_bytes": process_peak,
            "baseline_bytes": process_peak - peak, "method": "vmhwm-reset", "summary": summary, "summary_missing": list(drop), "bare_times": list(bare),
            "bare_method": "rows", "dtype": "float32"}


def _train_result(**rows):
    """A run of the three train problems (at their tiny sizes) from fake measurements."""
    from pyrgd.bench.train_runs import train_row

    probs = {p.name: p for p in all_problems("cpu", tiny=True) if p.kind == "train"}
    out = []
    for name, p in probs.items():
        row = rows.get(name) or train_row(p, _measured(p))
        out.append({**p.to_dict(), "candidates": {"train": row}})
    return {"device": "cpu", "problems": out}, probs


def test_train_row_arithmetic():
    """The denominator is the plan's data and step parts plus the weights once (from the shapes, not the plan's
    weights part, which holds the initial-weights copy too); the ratios divide the figures they name."""
    from pyrgd.bench.train_runs import denominator, train_row

    p = Problem("L1", 100, 4, (100, 8, 1), group="L", candidates=("train",), kind="train", steps=20)
    w = 4 * (4 * 100 + 100 * 8 + 8)
    r = train_row(p, _measured(p, wall=10.0, steps=8.0, tracking=0.5, lr=1.0, peak=130, bare=(3.0, 2.0, 2.5)))
    assert r["status"] == "ok" and r["denominator_parts"]["weights"] == w
    assert r["denominator_bytes"] == 40 + w + (60 - w) == 100
    assert r["denominator_parts"]["plan_weights"] == 2 * w and r["plan_total_bytes"] == 40 + 2 * w + 60 - w + 12
    assert r["peak_over_denominator"] == pytest.approx(1.3)
    assert r["tracking_pct_of_wall"] == pytest.approx(5.0)
    assert r["wall_over_steps"] == pytest.approx(1.25)
    assert r["bare_step_s"] == 2.5 and r["wall_over_bare_step"] == pytest.approx(4.0)
    assert r["other_s"] == pytest.approx(10.0 - 8.0 - 0.5 - 1.0)
    assert r["summary_wall_s"] == pytest.approx(9.99) and r["certificates"] == 3 and r["summary_missing"] == []
    assert denominator(None, p, 4) is None and denominator({"parts": [{"name": "data", "bytes": 1}]}, p, 4) is None
    # a summary without a plan or without the tracking time: the ratios that need them are None, and said
    r = train_row(p, _measured(p, drop=("plan", "tracking_time_s")))
    assert r["denominator_bytes"] is None and r["peak_over_denominator"] is None
    assert r["tracking_pct_of_wall"] is None and r["other_s"] is None and r["wall_over_steps"] is not None
    assert r["summary_missing"] == ["plan", "tracking_time_s"]
    assert train_row(p, {"error": "exit code 1: boom"})["status"] == "failed"
    refused = train_row(p, {"refused": "the run does not fit in memory"})
    assert refused["status"] == "skipped" and "does not fit" in refused["note"]
    assert "diverged" in train_row(p, {**_measured(p), "summary": {**_measured(p)["summary"],
                                                                    "status": "diverged"}})["note"]


def test_train_targets_on_fake_results():
    from pyrgd.bench.train_runs import train_row

    res, probs = _train_result()
    t = {x["id"]: x for x in evaluate_targets(res)}
    ids = ("L1_memory", "L1_tracking", "L2_memory", "L2_time", "B1_track_overhead")
    assert set(ids) <= set(t)
    # the fake run: peak 130 B over 100 B (1.3x: at the line), tracking 5% of 10 s, process peak 1000 B,
    # 10 s against a bare step of 2 s (5x), 10 s against 8 s of steps (1.25x)
    assert [t[i]["status"] for i in ids] == ["PASS", "PASS", "PASS", "FAIL", "FAIL"]
    assert [t[i]["measured"] for i in ids] == pytest.approx([1.3, 5.0, 1e-6, 5.0, 1.25])
    assert [t[i]["unit"] for i in ids] == ["x", "%", "GB", "x", "x"] and all(t[i]["op"] == "<=" for i in ids)
    assert "without the lr='auto' rule 4.50x" in t["L2_time"]["detail"]  # (10 - 1) / 2
    assert "without the lr='auto' rule 1.12x" in t["B1_track_overhead"]["detail"]  # (10 - 1) / 8
    assert "3 certificates, route estimate" in t["L1_tracking"]["detail"]
    assert "stopped with status" not in t["L1_tracking"]["detail"]
    line = format_target(t["L2_memory"])
    assert line.startswith("PASS  L2 train (one step) peak RSS <= 2 GB: measured 1e-06 GB (target <= 2 GB)")
    assert "measured 5.0% (target <= 10%)" in format_target(t["L1_tracking"])
    # over the lines: FAIL; within: PASS
    diverged = _measured(probs["L1"], peak=131, tracking=1.01)
    diverged["summary"].update(status="diverged", steps=13)
    res, probs = _train_result(
        L1=train_row(probs["L1"], diverged),
        L2=train_row(probs["L2"], _measured(probs["L2"], process_peak=2_000_000_001, wall=2.4, lr=0.1,
                                            bare=(2.0,))),
        B1_track=train_row(probs["B1_track"], _measured(probs["B1_track"], wall=8.8)))
    t = {x["id"]: x for x in evaluate_targets(res)}
    assert [t[i]["status"] for i in ids] == ["FAIL", "FAIL", "FAIL", "PASS", "PASS"]
    assert t["L2_time"]["measured"] == pytest.approx(1.2) and t["B1_track_overhead"]["measured"] == pytest.approx(1.1)
    assert "pyrgd.train stopped with status diverged after 13 steps" in t["L1_memory"]["detail"]
    # a failed run FAILs its targets, a refused one SKIPs them, a missing plan SKIPs the memory ratio only
    res, probs = _train_result(L1=train_row(probs["L1"], {"error": "exit code 1: boom"}),
                               L2=train_row(probs["L2"], {"refused": "does not fit"}),
                               B1_track=train_row(probs["B1_track"], _measured(probs["B1_track"], wall=8.8,
                                                                               drop=("plan",))))
    t = {x["id"]: x for x in evaluate_targets(res)}
    assert t["L1_memory"]["status"] == t["L1_tracking"]["status"] == "FAIL" and "boom" in t["L1_memory"]["detail"]
    assert t["L2_memory"]["status"] == t["L2_time"]["status"] == "SKIP" and "does not fit" in t["L2_time"]["detail"]
    assert t["B1_track_overhead"]["status"] == "PASS" and "the summary lacked plan" in t["B1_track_overhead"]["detail"]
    res["problems"] = []
    t = {x["id"]: x for x in evaluate_targets(res)}
    assert all(t[i]["status"] == "SKIP" and "not run" in t[i]["detail"] for i in ids)


def test_format_report_of_train_problems():
    res, _ = _train_result()
    for p in res["problems"]:
        p["activation"] = "relu"
    res.update(targets=evaluate_targets(res), sgemm={})
    text = format_report(res)
    assert "fused x:" not in text  # no step problem ran: no candidates table
    assert "L2: N=1024 d=16 widths=[1024, 8, 1] relu; pyrgd.train 1 step, backend cpu, method rows" in text
    assert "wall 10 s = steps 8 s + tracking 0.5 s + lr 1 s + other 0.5 s" in text
    assert "tracking_pct_of_wall 5%, wall_over_steps 1.25x, wall_over_bare_step 5x" in text
    assert "FAIL  L2 train (one step) wall time <= 1.2x one bare engine step: measured 5.00x" in text


def test_train_problems_end_to_end_tiny(capsys):
    """`pyrgd bench --tiny --problems L`: each train problem runs pyrgd.train in a fresh process and reports its
    figures, consistent with one another; its targets are judged (PASS or FAIL, never SKIP)."""
    rc = main(["--tiny", "--problems", "L", "--json", "--no-progress", "--repeats", "2"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    res = json.loads(cap.out)
    assert [p["name"] for p in res["problems"]] == ["L1", "L2", "B1_track"]
    for p in res["problems"]:
        r = p["candidates"]["train"]
        assert r["status"] == "ok", r
        assert r["summary_missing"] == [] and r["steps"] == p["steps"] and p["kind"] == "train"
        # lr="auto" but on B1_track (train_runs.GIVEN_LR: the benchmark's step size)
        assert r["train_status"] == "max_steps" and r["lr"] == p["lr"] > 0
        assert (r["lr_rule"] == "given") == (p["name"] == "B1_track")
        assert len(r["bare_times"]) == (1 if p["name"] == "L2" else 2) and r["bare_method"] == r["method"]
        assert 0 < r["steps_s"] <= r["summary_wall_s"] <= r["wall_s"]
        assert r["other_s"] == pytest.approx(r["wall_s"] - r["steps_s"] - r["tracking_s"] - r["lr_s"])
        parts = r["denominator_parts"]
        dims = [p["d"]] + p["widths"]
        assert parts["data"] == 4 * p["N"] * (p["d"] + p["widths"][-1])
        assert parts["weights"] == 4 * sum(a * b for a, b in zip(dims, dims[1:]))
        assert r["denominator_bytes"] == parts["data"] + parts["weights"] + parts["step"] > 0
        assert r["peak_bytes"] >= 0 and r["process_peak_bytes"] >= r["peak_bytes"]
        if r["peak_method"] != "ru_maxrss":
            assert r["process_peak_bytes"] == r["baseline_bytes"] + r["peak_bytes"]
        assert r["peak_over_denominator"] == pytest.approx(r["peak_bytes"] / r["denominator_bytes"])
        assert r["wall_over_bare_step"] == pytest.approx(r["wall_s"] / r["bare_step_s"])
        assert r["tracking_pct_of_wall"] == pytest.approx(100 * r["tracking_s"] / r["wall_s"])
    t = {x["id"]: x for x in res["targets"]}
    assert all(t[i]["status"] in ("PASS", "FAIL")
               for i in ("L1_memory", "L1_tracking", "L2_memory", "L2_time", "B1_track_overhead"))
    assert t["B1_sgemm"]["status"] == "SKIP"


def test_gpu_targets_on_synthetic_numbers():
    r = {"device": "cuda", "problems": [
        _prob("G1", {"fused": _row(1.0, pct_sgemm=65.0, gflops=1.0), "torch": _row(1.9), "chunked": _row(1.6)}),
        _prob("G2", {"fused": _row(3.0, peak_bytes=130 * 2**20, peak_over_data=1.3),
                     "torch": _row(status="skipped", note="would not fit")}),
    ]}
    t = {x["id"]: x for x in evaluate_targets(r)}
    assert set(t) == {"G1_sgemm", "G1_vs_torch", "G1_vs_chunked", "G1_vs_best_peer", "G2_memory"}
    assert [t[k]["status"] for k in ("G1_sgemm", "G1_vs_torch", "G1_vs_chunked", "G2_memory")] == \
        ["PASS", "FAIL", "PASS", "FAIL"]
    assert t["G1_vs_best_peer"]["status"] == "SKIP"  # no compiled peer ran


def test_json_safe():
    out = json_safe({"a": float("nan"), "b": [np.float32(1.5), (1, 2)], "c": np.int64(3), "d": float("inf")})
    assert out == {"a": None, "b": [1.5, [1, 2]], "c": 3, "d": None}
    json.dumps(out, allow_nan=False)


# ------------------------------------------------------------------------------------------------ command line
REQUIRED_TOP = {"schema", "date", "pyrgd_version", "mode", "device", "fused_backend", "dtype", "repeats", "machine",
                "sgemm", "problems", "targets"}
REQUIRED_ROW = {"seconds", "iqr", "times", "gflops", "pct_gemm", "rel_err_weights", "rel_err_update",
                "rel_err_loss", "status"}


def _check_schema(res, problems):
    assert REQUIRED_TOP <= set(res)
    assert res["schema"] == "pyrgd-bench-1" and res["mode"] == "tiny" and res["device"] == "cpu"
    assert {"cpu_model", "logical_cpus", "blas", "pyrgd"} <= set(res["machine"])
    assert res["sgemm"]["default"]["gflops"] > 0
    assert [p["name"] for p in res["problems"]] == problems
    for p in res["problems"]:
        assert p["useful_flops"] == useful_flops(p["N"], p["d"], p["widths"])
        if p.get("kind", "step") != "step":  # T_load, M1: rows of their own (tests/test_bench_load.py, test_mpi.py)
            assert all(row["status"] in ("ok", "skipped") for row in p["candidates"].values()), p["name"]
            continue
        for name, row in p["candidates"].items():
            if row["status"] == "ok":
                assert REQUIRED_ROW <= set(row), (p["name"], name, set(row))
                if name != "fused":
                    assert "fused_speedup" in row
            else:
                assert row["status"] == "skipped" and row["note"], (p["name"], name, row)


@pytest.mark.slow
def test_main_tiny_json_has_every_candidate(capsys, tmp_path):
    out = tmp_path / "bench.json"
    fig = tmp_path / "bench.png"
    rc = main(["--tiny", "--json", "--no-progress", "--out", str(out), "--plot", str(fig)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    res = json.loads(cap.out)
    assert json.loads(out.read_text()) == res
    assert fig.read_bytes()[:4] == b"\x89PNG"
    names = [p.name for p in select_problems(None, "cpu", tiny=True)]
    _check_schema(res, names)
    b1 = res["problems"][0]
    assert list(b1["candidates"]) == list(C.CANDIDATES)
    for n in ("fused", "unfused", "chunked"):
        assert b1["candidates"][n]["status"] == "ok"
        assert b1["candidates"][n]["peak_bytes"] >= 0
    assert b1["candidates"]["torch"]["status"] == ("ok" if TORCH else "skipped")
    assert {t["id"] for t in res["targets"]} == {t["id"] for t in TARGETS if t["device"] == "cpu"}
    assert all(t["status"] in ("PASS", "FAIL", "SKIP") for t in res["targets"])
    assert set(res["sgemm"]) == {"default", "1", "2", "default:float64"}  # float64: B1d, B2d's DGEMM
    assert res["sgemm"]["default:float64"]["name"] == "DGEMM"
    # every B4 size timed again in interleaved rounds, 3 per repeat, each a list of real step times
    b4 = {str(p["widths"][0]) for p in res["problems"] if p["group"] == "B4"}
    it = res["interleaved"]["B4"]
    assert set(it["seconds"]) == set(it["times"]) == b4 and it["rounds"] == 3 * res["repeats"]
    assert all(len(ts) == it["rounds"] and min(ts) > 0 and it["seconds"][n] == float(np.median(ts))
               for n, ts in it["times"].items())
    from pyrgd.backends import cpu

    if cpu.available()[0]:  # the FMA roof at each thread count, and the bound it gives
        assert set(res["fma_peak"]) == {"default", "1", "2", "default:float64"}
        assert all(v["gflops"] > 0 for v in res["fma_peak"].values())
        assert res["fma_peak"]["default:float64"]["dtype"] == "float64"
        assert b1["peak_gflops"] == res["fma_peak"]["default"]["gflops"]
        # the cpu backend's one pass executes the useful flops; the neuron-streamed method computes X W_1 twice
        assert b1["fused_method"] == b1["candidates"]["fused"]["method"]
        n1 = b1["widths"][0]
        recomputed = n1 - b1["fused_kept"] if b1["fused_method"] == "rows" else n1
        assert b1["fused_flops"] == b1["useful_flops"] + 2 * b1["N"] * b1["d"] * recomputed


def test_text_report(capsys):
    rc = main(["--tiny", "--problems", "B2,B4", "--repeats", "2", "--no-memory", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "SGEMM" in out and "B2       fused" in out and "B4_512" in out
    assert "B4 fused time per neuron within 15% across n1" in out
    assert "B4 interleaved (" in out and "rounds; " in out  # the interleaved timing decides the target
    assert "B3 fused peak memory" in out and "not run" in out  # SKIP line of a problem left out
    if not TORCH:
        assert any(ln.split()[:3] == ["B2", "torch", "skipped:"] and "PyTorch is not importable" in ln
                   for ln in out.splitlines())


def test_cli_hook_and_errors(capsys):
    p = argparse.ArgumentParser(prog="pyrgd")
    sub = p.add_subparsers(dest="command")
    add_bench_parser(sub)
    args = p.parse_args(["bench", "--tiny", "--problems", "T1", "--repeats", "1", "--no-memory", "--no-progress",
                         "--json"])
    assert args.func is run_bench
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["problems"][0]["name"] == "T1"
    assert main(["--tiny", "--problems", "B9"]) == 2
    assert "unknown problem 'B9'" in capsys.readouterr().err
    assert main(["--repeats", "0"]) == 2
    try:
        import cupy  # noqa: F401

        has_cupy = True
    except ImportError:
        has_cupy = False
    if not has_cupy:
        assert main(["--backend", "cuda", "--tiny"]) == 2
        assert "cuda" in capsys.readouterr().err


def test_format_report_of_synthetic_result():
    r = _synthetic()
    for p in r["problems"]:
        p.update(N=10, d=2, activation="relu", useful_flops=10**9, repeats=3, threads=p.get("threads"))
    r.update(targets=evaluate_targets(r), sgemm={"default": {"n": 64, "gflops": 200.0, "library": "numpy.matmul"}})
    text = format_report(r)
    assert "mismatch".upper() in text and "skipped: PyTorch is not importable" in text
    assert "PASS  B1 fused >= 3x chunked NumPy: measured 3.50x (target >= 3x)" in text


# ------------------------------------------------------------------------------------------------ GPU
def _gpu():
    try:
        import cupy as cp

        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu(), reason="needs CuPy and a CUDA device")
def test_gpu_tiny_bench(capsys):
    rc = main(["--backend", "cuda", "--tiny", "--json", "--no-progress", "--repeats", "2"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert [p["name"] for p in res["problems"]] == ["G1", "G2"]
    for p in res["problems"]:
        assert p["candidates"]["fused"]["status"] == "ok"
        assert p["candidates"]["fused"]["peak_bytes"] > 0
        assert p["candidates"]["chunked"]["status"] == "ok"
        assert p["candidates"]["chunked"]["rel_err_update"] < 1e-2
    assert res["machine"]["gpu_name"] and res["sgemm"]["default"]["gflops"] > 0
