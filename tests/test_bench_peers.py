"""The benchmark's compiled peers (torch_compile, jax_jit) and float64 problems (B1d, B2d): each peer computes the
fused step, a wrong one is flagged (exit code 1), an absent library skips it with a note, the ranking and the "best
peer" targets are judged right, and the float64 problems count their flops, bytes, DGEMM share and FMA peak right.

No timing thresholds: speed is measured by `pyrgd bench`, never asserted here.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from pyrgd.bench import candidates as C
from pyrgd.bench import main
from pyrgd.bench.problems import Problem, all_problems, data_bytes, make_data, select_problems, useful_flops
from pyrgd.bench.report import TARGETS, evaluate_targets, format_report, ranking_line
from pyrgd.bench.runner import Options, gemm_name, rank_candidates, rate_key, run_problem, simt_lanes


def _opts(**kw):
    base = dict(tiny=True, repeats=2, warmup=1, warmup_seconds=0.0, memory=False, progress=False)
    base.update(kw)
    return Options(**base)


def _reference_step(data):
    """One GD step by the unfused NumPy candidate (itself checked against central differences elsewhere)."""
    c = C.UnfusedStep(data)
    loss = c.step()
    return c.weights(), loss


def _rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


# ------------------------------------------------------------------------------------------------ the peers compute
@pytest.mark.parametrize("activation", ["relu", "smooth_leaky_relu(0.2)", "leaky_relu(0.1)", "tanh", "softplus",
                                        "erf", "identity"])
@pytest.mark.parametrize("widths", [(64, 6, 4, 3), (45, 5)])
def test_jax_jit_computes_the_reference_step(widths, activation):
    pytest.importorskip("jax")
    p = Problem("t", 40, 5, widths, activation=activation)
    data = make_data(p, "float64", seed=7)
    w0 = [w.copy() for w in data.W]
    w_ref, loss_ref = _reference_step(data)
    cand = C.make_candidate("jax_jit", data)
    assert cand.compile_seconds > 0  # compiled when built, before any step
    loss = cand.step()
    cand.sync()
    assert loss == pytest.approx(loss_ref, rel=1e-12)
    for a, b in zip(cand.weights(), w_ref):
        assert a.dtype == np.float64 and _rel(a, b) < 1e-11
    # the weights are donated to XLA: the problem's own arrays must stay untouched
    for a, b in zip(data.W, w0):
        np.testing.assert_array_equal(a, b)
    # a second step continues from the first one's weights
    c2 = C.UnfusedStep(type(data)(p, data.X, data.Y, w_ref))
    loss2_ref = c2.step()
    assert cand.step() == pytest.approx(loss2_ref, rel=1e-12)
    for a, b in zip(cand.weights(), c2.weights()):
        assert _rel(a, b) < 1e-11


def test_jax_jit_keeps_float32_and_the_process_x64_setting():
    """float32 data stays float32, and a float64 candidate leaves JAX's process-wide x64 setting as it found it
    (other JAX code in the process keeps its dtypes)."""
    jax = pytest.importorskip("jax")
    p = Problem("t", 32, 4, (40, 4, 2))
    before = jax.config.jax_enable_x64
    c64 = C.make_candidate("jax_jit", make_data(p, "float64", seed=1))
    c64.step()
    assert jax.config.jax_enable_x64 == before and c64.weights()[0].dtype == np.float64
    data = make_data(p, "float32", seed=1)
    cand = C.make_candidate("jax_jit", data)
    cand.step()
    w_ref, _ = _reference_step(data)
    for a, b in zip(cand.weights(), w_ref):
        assert a.dtype == np.float32 and _rel(a, b) < 1e-5


@pytest.mark.slow
def test_torch_compile_computes_the_reference_step_without_recompiling():
    """torch.compile's step in float64 equals the reference, two steps running, and the steps after construction
    compile nothing (the compilation is the candidate's compile_seconds, outside every timed step)."""
    pytest.importorskip("torch")
    from torch._dynamo.utils import counters

    p = Problem("t", 40, 5, (64, 6, 4, 3), activation="smooth_leaky_relu(0.2)")
    data = make_data(p, "float64", seed=3)
    cand = C.make_candidate("torch_compile", data)
    assert cand.compile_seconds > 0
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1
    w_ref, loss_ref = _reference_step(data)
    assert cand.step() == pytest.approx(loss_ref, rel=1e-12)
    for a, b in zip(cand.weights(), w_ref):
        assert _rel(a, b) < 1e-11
    cand.step()
    assert counters["stats"]["unique_graphs"] == graphs  # no recompilation in the steps


# ------------------------------------------------------------------------------------------------ mismatch, absence
def test_a_wrong_peer_is_flagged_and_exits_1(monkeypatch, capsys):
    """A jax_jit step with another step size is a mismatch in its row, and `pyrgd bench` exits 1."""
    pytest.importorskip("jax")
    orig = C.make_candidate

    def make(name, data, **kw):
        cand = orig(name, data, **kw)
        if name == "jax_jit":
            cand.lr *= 1.5  # the step size is an argument of the compiled step: a different step
        return cand

    monkeypatch.setattr("pyrgd.bench.runner.make_candidate", make)
    p = Problem("B1", 32, 4, (40, 4, 2), candidates=("fused", "jax_jit"))
    row = run_problem(p, _opts(), {})["candidates"]["jax_jit"]
    assert row["status"] == "mismatch" and "differs" in row["note"] and row["rel_err_update"] > 0.1
    # the command: every other candidate skipped (fast), the wrong peer exits 1
    monkeypatch.setattr("pyrgd.bench.runner.unavailable",
                        lambda name, device="cpu": None if name in ("fused", "jax_jit") else "skipped by the test")
    rc = main(["--tiny", "--problems", "B1", "--repeats", "1", "--no-memory", "--no-progress", "--json"])
    assert rc == 1
    assert "B1 jax_jit" in capsys.readouterr().err


@pytest.mark.parametrize("module,names,words", [("jax", ("jax_jit",), "JAX is not importable"),
                                                ("torch", ("torch", "torch_compile"), "PyTorch is not importable")])
def test_absent_library_skips_its_candidates_with_a_note(monkeypatch, module, names, words):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    for n in names:
        why = C.unavailable(n, "cpu")
        assert words in why and "pyrgd[bench]" in why
    p = Problem("B1", 32, 4, (40, 4, 2), candidates=("fused", "chunked") + names)
    res = run_problem(p, _opts(), {})
    for n in names:
        assert res["candidates"][n]["status"] == "skipped" and words in res["candidates"][n]["note"]
    assert res["candidates"]["fused"]["status"] == res["candidates"]["chunked"]["status"] == "ok"
    assert not set(names) & set(res["ranking"])
    text = format_report({"device": "cpu", "problems": [res], "targets": []})
    assert any(ln.split()[:3] == ["B1", names[0], "skipped:"] and words in ln for ln in text.splitlines())


def test_peers_are_not_candidates_of_the_memory_problem():
    full = {p.name: p for p in all_problems("cpu")}
    assert set(C.PEERS) <= set(full["B1"].candidates) and set(C.PEERS) <= set(full["B1d"].candidates)
    assert not set(C.PEERS) & set(full["B3"].candidates)
    gpu = {p.name: p for p in all_problems("cuda")}
    assert set(C.PEERS) <= set(gpu["G1"].candidates)


# ------------------------------------------------------------------------------------------------ ranking, targets
def _row(seconds=None, status="ok", **kw):
    r = {"status": status, **kw}
    if seconds is not None:
        r["seconds"] = seconds
    return r


def _prob(name, rows, **kw):
    p = {"name": name, "group": name, "N": 8, "d": 2, "widths": [8, 1], "activation": "relu", "useful_flops": 1,
         "data_bytes": 1, "repeats": 1, "candidates": rows, **kw}
    p.update(rank_candidates(p))
    return p


def test_ranking_best_peer_and_share_of_the_peak():
    p = _prob("B1", {"fused": _row(1.0), "torch": _row(3.0), "torch_compile": _row(2.5),
                     "jax_jit": _row(1.5), "chunked": _row(0.5, status="mismatch")},
              fused_flops=4e9, peak_gflops=10.0)
    assert p["ranking"] == ["fused", "jax_jit", "torch_compile", "torch"]  # the mismatched one is not ranked
    assert p["best_peer"] == {"name": "jax_jit", "seconds": 1.5, "fused_speedup": 1.5}
    assert p["fused_pct_peak"] == pytest.approx(40.0)  # 4 GFLOP in 1 s on a 10 GFLOP/s roof
    line = ranking_line(p)
    assert line.index("fused 1 s") < line.index("jax_jit 1.5 s (1.50x)") < line.index("torch_compile 2.5 s")
    assert "best peer jax_jit" in line and "40% of the peak" in line
    none = _prob("B2", {"fused": _row(1.0), "torch_compile": _row(status="skipped", note="absent")})
    assert none["best_peer"] is None and none["fused_pct_peak"] is None and none["ranking"] == ["fused"]


def test_best_peer_targets():
    ids = {t["id"] for t in TARGETS if t["kind"] == "best_peer"}
    assert ids == {"B1_vs_best_peer", "B2_vs_best_peer", "B1d_vs_best_peer", "G1_vs_best_peer"}
    assert all(t["threshold"] == 1.8 and tuple(t["candidates"]) == C.PEERS for t in TARGETS if t["id"] in ids)
    r = {"device": "cpu", "problems": [
        # the faster peer decides: 1.9 / 1.0 passes although torch_compile alone would give 3x
        _prob("B1", {"fused": _row(1.0), "torch_compile": _row(3.0), "jax_jit": _row(1.9)}),
        # one peer absent: the other decides, and the note says why the first did not run
        _prob("B2", {"fused": _row(1.0), "torch_compile": _row(1.7),
                     "jax_jit": _row(status="skipped", note="JAX is not importable")}),
        # no peer ran: SKIP
        _prob("B1d", {"fused": _row(1.0), "torch_compile": _row(status="failed", note="no compiler"),
                      "jax_jit": _row(status="skipped", note="JAX is not importable")}),
    ]}
    t = {x["id"]: x for x in evaluate_targets(r)}
    assert (t["B1_vs_best_peer"]["status"], t["B1_vs_best_peer"]["measured"]) == ("PASS", pytest.approx(1.9))
    assert "best peer jax_jit" in t["B1_vs_best_peer"]["detail"]
    assert (t["B2_vs_best_peer"]["status"], t["B2_vs_best_peer"]["measured"]) == ("FAIL", pytest.approx(1.7))
    assert "JAX is not importable" in t["B2_vs_best_peer"]["detail"]
    assert t["B1d_vs_best_peer"]["status"] == "SKIP" and "no compiler" in t["B1d_vs_best_peer"]["detail"]


def test_plot_draws_the_float64_problem_ranked(tmp_path):
    pytest.importorskip("matplotlib")
    from pyrgd.bench.plot import plot_result

    r = {"device": "cpu", "problems": [
        _prob("B1d", {"fused": _row(1.0), "torch": _row(3.0), "jax_jit": _row(2.0)}, dtype="float64",
              fused_flops=4e9, peak_gflops=10.0)]}
    assert plot_result(r, str(tmp_path / "f.png")) == ["B1d"]
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------------------------ float64 problems
def test_float64_problems_are_b1_and_b2_in_float64():
    for tiny in (False, True):
        ps = {p.name: p for p in all_problems("cpu", tiny=tiny)}
        for d, s in (("B1d", "B1"), ("B2d", "B2")):
            assert (ps[d].N, ps[d].d, ps[d].widths, ps[d].activation) == (ps[s].N, ps[s].d, ps[s].widths,
                                                                           ps[s].activation)
            assert ps[d].dtype == "float64" and ps[s].dtype is None and ps[d].group == "D"
            # the same useful flops, twice the bytes
            assert useful_flops(ps[d].N, ps[d].d, ps[d].widths) == useful_flops(ps[s].N, ps[s].d, ps[s].widths)
            assert data_bytes(ps[d].N, ps[d].d, ps[d].widths, 8)["total"] == \
                2 * data_bytes(ps[s].N, ps[s].d, ps[s].widths, 4)["total"]
            # drawn in float64 whatever the run's dtype
            assert make_data(ps[d], "float32").X.dtype == np.float64
    assert [p.name for p in select_problems("D", "cpu")] == ["B1d", "B2d"]
    assert {"B1d", "B2d"} <= {p.name for p in select_problems(None, "cpu")}


def test_rate_keys_and_gemm_names():
    assert rate_key(None, "float32") == "default" and rate_key(2, "float32") == "2"
    assert rate_key(None, "float64") == "default:float64" and rate_key(1, "float64") == "1:float64"
    assert rate_key(None, "float64", run_dtype="float64") == "default"
    assert gemm_name("float32") == "SGEMM" and gemm_name(np.float64) == "DGEMM"
    assert simt_lanes(9, 0) == 128 and simt_lanes(9, 0, "float64") == 64  # H100, H200
    assert simt_lanes(8, 6) == 128 and simt_lanes(8, 6, "float64") == 2
    assert simt_lanes(3, 5) is None


def test_float64_problem_uses_the_dgemm_rate_and_the_float64_peak():
    p = Problem("B1d", 64, 6, (96, 8, 3), dtype="float64", candidates=("fused", "chunked"))
    fma = {"default": {"gflops": 100.0, "dtype": "float32"}, "default:float64": {"gflops": 40.0, "dtype": "float64"}}
    res = run_problem(p, _opts(), {"default": {"gflops": 20.0, "dtype": "float64"}}, fma_peak=fma)
    assert res["dtype"] == "float64" and res["data_bytes"] == data_bytes(64, 6, (96, 8, 3), 8)["total"]
    assert (res["gemm_name"], res["gemm_gflops"], res["dgemm_gflops"], res["sgemm_gflops"]) == ("DGEMM", 20.0, 20.0,
                                                                                               None)
    assert res["peak_gflops"] == 40.0  # the float64 roof, not the float32 one
    for n in ("fused", "chunked"):
        r = res["candidates"][n]
        assert r["status"] == "ok" and r["rel_err_update"] < 1e-8  # float64's tolerance
        assert r["pct_dgemm"] == r["pct_gemm"] == pytest.approx(100 * r["gflops"] / 20.0) and "pct_sgemm" not in r
    if res["fused_flops"]:
        tf = res["candidates"]["fused"]["seconds"]
        assert res["fused_pct_peak"] == pytest.approx(100 * res["fused_flops"] / tf / 1e9 / 40.0)
    # a float32 rate is not a DGEMM rate: no share rather than a wrong one
    res = run_problem(p, _opts(), {"default": {"gflops": 20.0, "dtype": "float32"}}, fma_peak=fma)
    assert res["gemm_gflops"] is None and res["candidates"]["fused"]["pct_gemm"] is None
    text = format_report({"device": "cpu", "dtype": "float32", "problems": [res], "targets": []})
    assert "B1d: N=64" in text and "float64" in text and "ranking: " in text


def test_report_shows_the_compile_time_apart():
    res = _prob("B1", {"fused": _row(1.0, times=[1.0]), "torch_compile": _row(2.0, compile_seconds=12.5)})
    text = format_report({"device": "cpu", "problems": [res], "targets": []})
    line = next(ln for ln in text.splitlines() if ln.startswith("B1       torch_compile"))
    assert "compile 12.5 s" in line


def test_simt_peak_from_device_properties(monkeypatch):
    """The GPU roof: multiprocessors x lanes x 2 flops x clock, from the runtime's attributes (a stand-in CuPy
    with an H100 SXM's figures: 132 multiprocessors, compute capability 9.0, 1980 MHz)."""
    import types

    from pyrgd.bench.runner import simt_peak_gpu

    attrs = {16: 132, 75: 9, 76: 0, 13: 1980000}
    runtime = types.SimpleNamespace(deviceGetAttribute=lambda a, dev: attrs[a])
    cuda = types.SimpleNamespace(Device=lambda: types.SimpleNamespace(id=0), runtime=runtime)
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=cuda))
    f32, f64 = simt_peak_gpu("float32"), simt_peak_gpu("float64")
    assert f32["gflops"] == pytest.approx(2 * 132 * 128 * 1.98)  # GHz: 66.9 TFLOP/s
    assert f64["gflops"] == pytest.approx(f32["gflops"] / 2) and f64["dtype"] == "float64"
    attrs[75] = 3  # a compute capability the table does not know: no roof rather than a wrong one
    assert simt_peak_gpu("float32") is None
