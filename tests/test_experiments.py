"""The experiments E1..E4 at tiny sizes: each writes its figure and CSV, and its numbers are consistent with
independent computations; the committed configs parse; loader and command-line errors."""
import math
import os
import pathlib

import numpy as np
import pytest

import pyrgd
from pyrgd import PyramidalNet, cli, data, theory
from pyrgd.activations import parse_activation
from pyrgd.errors import PyrgdError
from pyrgd.experiments import EXPERIMENTS, load_experiment, run_experiment
from pyrgd.experiments import e1_width, e3_du
from pyrgd.sweep import read_results

from test_cli import assert_one_line_error

tomli_w = pytest.importorskip("tomli_w")
ROOT = pathlib.Path(__file__).resolve().parents[1]


def write_exp(tmp_path, name, params, small=None):
    doc = {"experiment": {"name": name, "title": "tiny"}, "params": params}
    if small is not None:
        doc["small"] = small
    p = tmp_path / f"{name.lower()}_tiny.toml"
    p.write_text(tomli_w.dumps(doc))
    return str(p)


E1_TINY = {"N": [6, 12], "d": 3, "inputs": "gaussian", "targets": "gaussian", "data_seed": 0, "seeds": [0, 1],
           "steps": 300, "rel_tol": 1e-2, "strict_rel_tol": 0.0, "lr": "auto", "track_every": 300,
           "n1_min_over_N": 0.5, "n1_factor": 2.0,
           "n1_max_over_N": 8.0, "C": 1.0, "exact_n1": [12, 96], "exact_seeds": [0], "threads": 1}


# --------------------------------------------------------------------------------------------- E1
def test_e1_tiny(tmp_path):
    res = run_experiment(write_exp(tmp_path, "E1", E1_TINY), out=tmp_path / "o")
    for k in ("figure", "csv", "csv_gd", "csv_margins", "json"):
        assert os.path.getsize(res[k]) > 0, k
    rows = read_results(res["csv"])
    gd = read_results(res["csv_gd"])
    assert [r["N"] for r in rows] == [6, 12]
    for r in rows:
        X, Y = e1_width.make_data(e1_width.check(E1_TINY), r["N"])
        pred = e1_width.Predictor(X, Y, 1.0)
        thr = r["certified_threshold"]
        assert pred.min_margin(thr) >= 1.0 > pred.min_margin(thr - 1)  # the smallest certified width
        if r["gd_threshold"] is not None:
            assert thr >= r["gd_threshold"]
            mine = [g for g in gd if g["N"] == r["N"] and g["n1"] == r["gd_threshold"]]
            assert len(mine) == 2 and all(g["converged"] for g in mine)  # every seed converged there
            below = [g for g in gd if g["N"] == r["N"] and g["n1"] < r["gd_threshold"]]
            for n1 in {g["n1"] for g in below}:  # and at every smaller width some seed did not
                assert not all(g["converged"] for g in below if g["n1"] == n1)
        assert r["lambda_star"] == pytest.approx(theory.lambda_star(X, "relu", w_var=1 / 3).value, rel=1e-12)
    margins = read_results(res["csv_margins"])
    assert {(m["N"], m["n1"]) for m in margins} == {(6, 12), (6, 96), (12, 12), (12, 96)}
    for r in rows:  # the infinite-width reference: its steps, and each run compared after as many steps
        X, Y = e1_width.make_data(e1_width.check(E1_TINY), r["N"])
        lazy = e1_width.LazyLimit(e1_width.Predictor(X, Y, 1.0).gram, Y)
        assert r["lazy_steps"] == lazy.steps_to(1e-2)
        assert r["lazy_relative_loss_at_budget"] == pytest.approx(lazy.relative_loss(300), rel=1e-12)
        for g in (g for g in gd if g["N"] == r["N"]):
            want = lazy.relative_loss(g["steps"], g["lr"] * g["n1"])
            assert g["lazy_relative_loss"] == pytest.approx(want, rel=1e-9)
            assert g["faster_than_lazy"] == (g["relative_loss"] <= g["lazy_relative_loss"])


def test_e1_redraw_reproduces_the_figure_from_the_files(tmp_path):
    res = run_experiment(write_exp(tmp_path, "E1", E1_TINY), out=tmp_path / "o")
    first = pathlib.Path(res["figure"]).read_bytes()
    os.remove(res["figure"])
    assert e1_width.redraw(e1_width.check(E1_TINY), str(tmp_path / "o")) == res["figure"]
    assert pathlib.Path(res["figure"]).read_bytes() == first  # the same numbers, read back from the CSV files
    os.remove(res["csv_gd"])
    with pytest.raises(PyrgdError, match="out: no E1_gd.csv in"):
        e1_width.redraw(e1_width.check(E1_TINY), str(tmp_path / "o"))


def _explicit_lazy_loss(G, Y, step, k):
    """Phi_k / Phi_0 of the linear map r -> (I - step G) r, averaged over r_0 = f - Y with f ~ N(0, G) per column:
    (|A^k Y|^2 + n_2 tr(A^k G A^k)) / (|Y|^2 + n_2 tr G), A = I - step G, by explicit matrix powers."""
    A = np.linalg.matrix_power(np.eye(len(G)) - step * G, k)
    n2 = Y.shape[1]
    return (np.sum((A @ Y) ** 2) + n2 * np.trace(A @ G @ A.T)) / (np.sum(Y ** 2) + n2 * np.trace(G))


def test_lazy_limit_matches_explicit_matrix_powers():
    rng = np.random.default_rng(3)
    B = rng.standard_normal((9, 9))
    G = B @ B.T / 9 + 0.05 * np.eye(9)
    Y = rng.standard_normal((9, 2))
    lazy = e1_width.LazyLimit(G, Y)
    g = np.linalg.eigvalsh(G)
    assert lazy.auto_step == pytest.approx(0.5 / g[-1], rel=1e-12)
    assert lazy.condition == pytest.approx(g[-1] / g[0], rel=1e-9)
    for k in (0, 1, 7, 40):
        for step in (None, 0.3 / g[-1], 1.5 / g[-1]):
            h = lazy.auto_step if step is None else step
            assert lazy.relative_loss(k, step) == pytest.approx(_explicit_lazy_loss(G, Y, h, k), rel=1e-9)
    r0 = rng.standard_normal((9, 2))
    A = np.linalg.matrix_power(np.eye(9) - lazy.auto_step * G, 5)
    assert lazy.relative_loss(5, residual=r0) == pytest.approx(np.sum((A @ r0) ** 2) / np.sum(r0 ** 2), rel=1e-9)
    k = lazy.steps_to(1e-4)  # the fewest steps
    assert lazy.relative_loss(k) <= 1e-4 < lazy.relative_loss(k - 1)
    assert lazy.steps_to(1.0) == 0
    assert lazy.steps_to(1e-4, step=2.5 / g[-1]) is None  # past the stability edge 2 / g_max
    assert lazy.steps_to(1e-4, step=1e-9 / g[-1], k_max=10 ** 6) is None  # not within k_max


def test_lazy_limit_predicts_gd_on_a_wide_net():
    """GD on a wide LeCun ReLU net at lr = "auto" follows the infinite-width linear map r -> (I - lr n_1 G) r."""
    from pyrgd.data import synthetic

    N, d, n1 = 32, 16, 16384
    X, Y = synthetic(N, d, 1, inputs="gaussian", targets="gaussian", seed=0)[:2]
    lazy = e1_width.LazyLimit(theory.lambda_star(X, "relu", w_var=1 / d).gram, Y)
    for k, rel in ((100, 0.1), (1000, 0.2)):
        net = pyrgd.PyramidalNet(d, [n1, 1], activation="relu", init="lecun", seed=0, dtype="float64")
        r0 = net.forward(X) - Y
        res = pyrgd.train(net, X, Y, lr="auto", steps=k, rel_tol=0, tol=0, track_every=10 ** 6, progress=False,
                          threads=1)
        want = lazy.relative_loss(k, res.lr * n1, residual=r0)
        assert res.summary["relative_loss"] == pytest.approx(want, rel=rel)
    # a narrow net is not lazy: the same formula misses it by far more
    net = pyrgd.PyramidalNet(d, [8, 1], activation="relu", init="lecun", seed=0, dtype="float64")
    r0 = net.forward(X) - Y
    with pytest.warns(UserWarning, match="n_1 = 8 < N = 32"):
        res = pyrgd.train(net, X, Y, lr="auto", steps=1000, rel_tol=0, tol=0, track_every=10 ** 6, progress=False,
                          threads=1)
    want = lazy.relative_loss(1000, res.lr * 8, residual=r0)
    assert not res.summary["relative_loss"] == pytest.approx(want, rel=0.5)


def test_e1_threads_auto_uses_every_core_only_for_large_steps():
    p = e1_width.check({**E1_TINY, "threads": "auto"})
    assert e1_width.gd_threads(p, 64, 64) == 1
    assert e1_width.gd_threads(p, 4096, 1024) == 0  # N n_1 = 2^22: the machine's default
    assert e1_width.gd_threads(e1_width.check({**E1_TINY, "threads": 2}), 4096, 4096) == 2
    assert e1_width.gd_config(p, 4096, 4096, 0)["train"]["threads"] == 0


def test_e1_strict_tolerance_is_a_second_threshold_from_the_same_runs(tmp_path):
    params = {**E1_TINY, "strict_rel_tol": 1e-4, "steps": 600}
    res = run_experiment(write_exp(tmp_path, "E1", params), out=tmp_path / "o")
    loose = run_experiment(write_exp(tmp_path, "E1", {**params, "strict_rel_tol": 0.0}), out=tmp_path / "l")
    rows, gd = read_results(res["csv"]), read_results(res["csv_gd"])
    # the rel_tol threshold is the one a search at rel_tol alone finds
    assert [r["gd_threshold"] for r in rows] == [r["gd_threshold"] for r in read_results(loose["csv"])]
    for r in rows:
        mine = [g for g in gd if g["N"] == r["N"]]
        if r["gd_threshold"] is not None:
            at = [g for g in mine if g["n1"] == r["gd_threshold"]]
            assert len(at) == 2 and all(g["relative_loss"] <= 1e-2 for g in at)
        if r["gd_threshold_strict"] is not None:
            assert r["gd_threshold"] is not None and r["gd_threshold_strict"] >= r["gd_threshold"]
            at = [g for g in mine if g["n1"] == r["gd_threshold_strict"]]
            assert len(at) == 2 and all(g["converged_strict"] and g["relative_loss"] <= 1e-4 for g in at)
            for n1 in {g["n1"] for g in mine if g["n1"] < r["gd_threshold_strict"]}:
                assert not all(g["converged_strict"] for g in mine if g["n1"] == n1)
    f = res["findings"]
    assert f["thresholds"]["6"]["gd_strict"] == rows[0]["gd_threshold_strict"]
    assert "1e-04" in f["strict_tolerance"] or "0.0001" in f["strict_tolerance"]


def test_theorem22_formulas_match_the_certificate():
    X, Y = data.synthetic(10, 4, 1, inputs="gaussian", seed=2)
    for widths, C in (([40, 1], 1.0), ([64, 1], 0.5)):
        net = PyramidalNet(4, widths, activation="relu", seed=1)
        c = theory.nguyen2021_certificate(net, X, Y, C=C)
        norms = [np.linalg.norm(w, 2) for w in net.weights]
        got = e1_width.theorem22_conditions(c.alpha_0, norms, C, c.norm_X, c.loss_0)
        for k in ("initW", "initF", "initS"):
            assert got[k][2] == pytest.approx(c.conditions[k].margin, rel=1e-9)


def test_e1_predicted_quantities_are_the_large_width_limits():
    X, Y = data.synthetic(6, 4, 1, inputs="gaussian", seed=0)
    pred = e1_width.Predictor(X, Y)
    n1 = 2 ** 16
    net = PyramidalNet(4, [n1, 1], activation="relu", init="lecun", seed=5)
    c = theory.nguyen2021_certificate(net, X, Y)
    alpha, norms, _ = pred.quantities(n1)
    assert c.alpha_0 ** 2 / n1 == pytest.approx(alpha ** 2 / n1, rel=0.1)
    assert np.linalg.norm(net.weights[0], 2) == pytest.approx(norms[0], rel=0.02)
    assert np.linalg.norm(net.weights[1], 2) == pytest.approx(norms[1], rel=0.02)


# --------------------------------------------------------------------------------------------- E2
def test_e2_values_are_ntk_lambda_min_of_the_stated_nets(tmp_path):
    params = {"N": [6, 12], "d": 5, "d_over_N": 0.5, "n2": 8, "width_factor": 8, "trials": 2, "inputs": "gaussian",
              "activation": "relu", "init": "he", "seed_offset": 100}
    res = run_experiment(write_exp(tmp_path, "E2", params), out=tmp_path / "o")
    assert os.path.getsize(res["figure"]) > 0
    trials = read_results(res["csv_trials"])
    assert len(trials) == 2 * 2 * 2  # N, regime, trial
    want_d = {("fixed_d", 6): 5, ("fixed_d", 12): 5, ("growing_d", 6): 3, ("growing_d", 12): 6}
    for t in trials:  # rebuilt here from the stated recipe, not from the experiment's helper
        d = want_d[(t["regime"], t["N"])]
        assert t["d"] == d
        X, _ = data.synthetic(t["N"], d, 1, inputs="gaussian", seed=t["trial"])
        net = PyramidalNet(d, [8 * t["N"], 8, 1], activation="relu", init="he", seed=100 + t["trial"])
        assert t["n1"] == 8 * t["N"]
        assert t["lambda_min"] == pytest.approx(theory.ntk_lambda_min(net, X), rel=1e-10)
    for r in read_results(res["csv"]):
        v = [t["lambda_min"] for t in trials if t["N"] == r["N"] and t["regime"] == r["regime"]]
        assert r["mean"] == pytest.approx(np.mean(v)) and r["std"] == pytest.approx(np.std(v, ddof=1))
        X0, _ = data.synthetic(r["N"], r["d"], 1, inputs="gaussian", seed=0)
        assert r["lambda_star"] == pytest.approx(theory.lambda_star(X0, "relu", w_var=2 / r["d"]).value, rel=1e-12)
    f = res["findings"]
    assert math.isfinite(f["slope"]) and f["slope"] == f["regimes"]["fixed_d"]["slope"]
    assert set(f["regimes"]) == {"fixed_d", "growing_d"}
    assert f["regimes"]["growing_d"]["d"] == {"6": 3, "12": 6}


# --------------------------------------------------------------------------------------------- E3
def test_ntk_blocks_sum_to_the_empirical_ntk():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((7, 3))
    for widths in ([30, 1], [30, 5, 1], [30, 5, 4, 1]):
        net = PyramidalNet(3, widths, activation="softplus", seed=2, multipliers=[0.8] * (len(widths) - 1))
        S = sum(e3_du.ntk_block(net, X, l) for l in range(1, net.L + 1))
        np.testing.assert_allclose(S, theory.empirical_ntk(net, X), rtol=1e-11, atol=1e-12)
    with pytest.raises(PyrgdError, match="^l:"):
        e3_du.ntk_block(net, X, 0)


def test_du_net_is_du_et_al_parameterization():
    X, _ = data.synthetic(5, 3, 1, inputs="sphere", seed=1)
    m, H = 40, 3
    net = e3_du.du_net(3, m, H, "softplus", seed=0)
    cs = theory.c_sigma("softplus")
    act = parse_activation("softplus")
    x = X.T  # column vectors as in the paper: x^(h) = sqrt(c_sigma / m) sigma(W^(h) x^(h-1)), f = a^T x^(H)
    for W in net.weights[:-1]:
        x = math.sqrt(cs / m) * act.sigma(W.T @ x)
    np.testing.assert_allclose(net.forward(X).ravel(), (net.weights[-1].T @ x).ravel(), rtol=1e-12)
    assert abs(np.std(net.weights[1]) - 1.0) < 0.05  # N(0, 1) weights


def test_e3_tiny(tmp_path):
    params = {"N": 8, "d": 3, "data_seed": 0, "activation": "softplus", "depths": [1, 2, 3],
              "gram_depths": [1, 2], "widths": [16, 64], "seeds": 2}
    res = run_experiment(write_exp(tmp_path, "E3", params), out=tmp_path / "o")
    assert os.path.getsize(res["figure"]) > 0
    X = e3_du.make_data(e3_du.check(params))
    assert np.allclose(np.linalg.norm(X, axis=1), 1.0)
    for r in read_results(res["csv"]):
        assert r["lambda0_paper"] == pytest.approx(
            theory.du_lambda0(X, r["H"], "softplus", last_layer_cov="paper"), rel=1e-12)
        assert r["lambda0_natural"] == pytest.approx(
            theory.du_lambda0(X, r["H"], "softplus", last_layer_cov="natural"), rel=1e-12)
    w = read_results(res["csv_width"])
    assert len(w) == 2 * 2 * 2 and all(r["err_natural"] > 0 for r in w)
    H1 = [r for r in w if r["H"] == 1]
    assert all(r["err_natural"] == r["err_paper"] for r in H1)  # H = 1: the two readings coincide


# --------------------------------------------------------------------------------------------- E4
def test_e4_tiny(tmp_path):
    params = {"track_every": 5, "runs": [
        {"label": "a", "data": {"N": 8, "d": 3, "inputs": "gaussian"},
         "model": {"widths": [64, 1], "activation": "smooth_leaky_relu(0.2)"}, "train": {"steps": 40}},
        {"label": "b", "data": {"N": 8, "d": 3, "inputs": "gaussian"},
         "model": {"widths": [64, 4, 1], "activation": "smooth_leaky_relu(0.2)"}, "train": {"steps": 40}}]}
    res = run_experiment(write_exp(tmp_path, "E4", params), out=tmp_path / "o")
    assert os.path.getsize(res["figure"]) > 0
    rows = read_results(res["csv"])
    assert {r["run"] for r in rows} == {"a", "b"}
    assert [r["step"] for r in rows if r["run"] == "a"] == list(range(0, 41, 5))
    for r in rows:
        assert r["certified_decrease"] == pytest.approx(r["lr"] * r["mu"], rel=1e-12)
        assert r["certified_factor"] == pytest.approx(1 - r["lr"] * r["mu"], rel=1e-12)
    hist = read_results(res["csv_history"])
    for r in rows:
        if r["step"] + 5 <= 40:
            l0 = next(h["loss"] for h in hist if h["run"] == r["run"] and h["step"] == r["step"])
            l1 = next(h["loss"] for h in hist if h["run"] == r["run"] and h["step"] == r["step"] + 5)
            assert r["observed_decrease"] == pytest.approx(1 - (l1 / l0) ** (1 / 5), rel=1e-9)


# --------------------------------------------------------------------------------------------- configs, errors, CLI
@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
@pytest.mark.parametrize("small", [False, True])
def test_committed_configs_are_valid(name, small):
    exp, _head, params, _path = load_experiment(str(ROOT / "experiments" / f"{name}.toml"), small)
    assert exp == name
    from pyrgd.experiments import _module

    _module(exp).check(params)


@pytest.mark.parametrize("params, fragment", [
    ({**E1_TINY, "bogus": 1}, "E1.params.bogus: unknown parameter"),
    ({k: v for k, v in E1_TINY.items() if k != "d"}, "E1.params.d: missing"),
    ({**E1_TINY, "N": []}, "E1.params.N: expected a non-empty list"),
    ({**E1_TINY, "steps": 0}, "E1.params.steps: expected an integer >= 1"),
    ({**E1_TINY, "n1_factor": 1.0}, "E1.params.n1_factor"),
    ({**E1_TINY, "lr": "fast"}, "train.lr"),
    ({**E1_TINY, "strict_rel_tol": 1e-2}, "E1.params.strict_rel_tol"),
    ({**E1_TINY, "threads": 0}, "E1.params.threads: expected a positive integer or 'auto'"),
    ({**E1_TINY, "threads": "many"}, "E1.params.threads"),
])
def test_bad_params_name_the_key(tmp_path, params, fragment):
    with pytest.raises(PyrgdError) as e:
        run_experiment(write_exp(tmp_path, "E1", params), out=tmp_path / "o")
    assert fragment in str(e.value)


def test_loader_errors(tmp_path):
    with pytest.raises(PyrgdError, match="^name: unknown experiment 'E9'"):
        run_experiment("E9")
    with pytest.raises(PyrgdError, match="^name: file not found"):
        run_experiment(str(tmp_path / "x.toml"))
    with pytest.raises(PyrgdError, match="^small: .* has no \\[small\\] table"):
        run_experiment(write_exp(tmp_path, "E1", E1_TINY), small=True)
    p = tmp_path / "bad.toml"
    p.write_text('[experiment]\nname = "E7"\n')
    with pytest.raises(PyrgdError, match="^experiment.name"):
        run_experiment(str(p))
    p.write_text('[experiment]\nname = "E1"\n[extra]\n')
    with pytest.raises(PyrgdError, match=r"unknown table \[extra\]"):
        run_experiment(str(p))


@pytest.mark.parametrize("argv, fragments", [
    (["experiment"], ["NAME"]),
    (["experiment", "E9"], ["unknown experiment 'E9'"]),
    (["experiment", "E1", "--bogus"], ["--bogus"]),
])
def test_cli_experiment_bad_input(capsys, argv, fragments):
    assert cli.main(argv) == 2
    assert_one_line_error(capsys.readouterr().err, *fragments)


def test_cli_experiment_small_variant(tmp_path, capsys):
    small = {"N": [6], "seeds": [0], "exact_n1": [12]}
    path = write_exp(tmp_path, "E1", {**E1_TINY, "N": [40]}, small=small)
    assert cli.main(["experiment", path, "--small", "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert "E1 done" in capsys.readouterr().out
    assert [r["N"] for r in read_results(tmp_path / "o" / "E1.csv")] == [6]
