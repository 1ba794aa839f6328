"""E5 (Du et al. 2019's rate): the bound's checks on hand-made loss curves; a tiny run against independent
computations (lambda_0, the NTK's lambda_max, the first GD step's decrease eta r^T K r); the committed --small
variant; parameter errors."""
import math
import os

import numpy as np
import pytest

from pyrgd import theory
from pyrgd.errors import PyrgdError
from pyrgd.experiments import run_experiment
from pyrgd.experiments import e3_du, e5_rate
from pyrgd.sweep import read_results

tomli_w = pytest.importorskip("tomli_w")

TINY = {"N": 6, "d": 3, "data_seed": 1, "cases": [{"activation": "softplus", "H": 2}], "widths": [24],
        "seeds": 1, "steps": 12, "late_window": 4, "eta_over_lmax": 0.5, "sweep_width": 24,
        "sweep_eta_over_lmax": [3.0], "theorem_eta": True}


def write_exp(tmp_path, params, small=None):
    doc = {"experiment": {"name": "E5", "title": "tiny"}, "params": params}
    if small is not None:
        doc["small"] = small
    p = tmp_path / "e5_tiny.toml"
    p.write_text(tomli_w.dumps(doc))
    return str(p)


def test_rate_measures_on_geometric_curves():
    T = 20
    loss = [2.0 * 0.9 ** k for k in range(T + 1)]
    r = e5_rate.rate_measures(loss, eta=1.0, lam0=0.1, late_window=5, lam0_paper=0.3)  # rho = 0.95
    assert r["rho"] == pytest.approx(0.95)
    assert r["held_cumulative"] and r["held_per_step"] and r["first_violation"] is None
    assert r["speedup"] == pytest.approx(math.log(0.9) / math.log(0.95), rel=1e-12)
    assert r["late_speedup"] == pytest.approx(r["speedup"], rel=1e-10)
    assert r["looseness_log10"] == pytest.approx(T * math.log10(0.95 / 0.9), rel=1e-10)
    assert r["held_cumulative_paper"] is False  # rho_paper = 0.85 < 0.9: the printed reading's bound fails
    # a curve that rises above rho^k L_0 at step 3 and comes back
    bumped = list(loss)
    bumped[3] = 2.0 * 0.96 ** 3
    b = e5_rate.rate_measures(bumped, eta=1.0, lam0=0.1, late_window=5)
    assert not b["held_cumulative"] and b["first_violation"] == 3 and not b["held_per_step"]
    assert b["speedup"] == pytest.approx(r["speedup"])  # the end points are the same


def test_e5_tiny_against_independent_computations(tmp_path):
    res = run_experiment(write_exp(tmp_path, TINY), out=tmp_path / "o")
    for k in ("figure", "csv", "csv_history", "json"):
        assert os.path.getsize(res[k]) > 0, k
    rows = read_results(res["csv"])
    hist = read_results(res["csv_history"])
    assert [(r["sweep"], r["eta_rule"]) for r in rows] == [("widths", "lmax"), ("step_sizes", "lmax"),
                                                           ("step_sizes", "theorem")]
    X, Y = e5_rate.make_data(e5_rate.check(TINY))
    assert np.allclose(np.linalg.norm(X, axis=1), 1.0)
    lam0 = theory.du_lambda0(X, 2, "softplus", last_layer_cov="natural")
    lam0p = theory.du_lambda0(X, 2, "softplus", last_layer_cov="paper")
    net0 = e3_du.du_net(3, 24, 2, "softplus", seed=0)
    K0 = np.asarray(theory.empirical_ntk(net0, X))
    lmax = np.linalg.eigvalsh(K0)[-1]
    r0 = (net0.forward(X) - Y).ravel()
    for r in rows:
        L = np.array([h["loss"] for h in hist if h["run"] == r["run"]])
        assert r["lambda0"] == pytest.approx(lam0, rel=1e-12) and r["lambda0_paper"] == pytest.approx(lam0p, rel=1e-12)
        assert r["ntk_lmax_0"] == pytest.approx(lmax, rel=1e-10)
        assert L[0] == pytest.approx(0.5 * r0 @ r0, rel=1e-12)
        rho = 1 - r["eta"] * lam0 / 2
        assert r["held_cumulative"] == bool(np.all(L <= L[0] * rho ** np.arange(L.size)))
        if r["eta_rule"] == "theorem":
            assert r["eta"] == pytest.approx(lam0 / 6 ** 2, rel=1e-12)
            # a tiny step decreases the loss by eta ||grad||^2 = eta r^T K_0 r to first order
            assert L[0] - L[1] == pytest.approx(r["eta"] * r0 @ K0 @ r0, rel=1e-3)
            assert r["held_cumulative"] and r["speedup"] > 1
        else:
            assert r["eta"] * lmax == pytest.approx(r["eta_lmax"], rel=1e-12)
    wide = rows[0]
    assert wide["eta_lmax"] == pytest.approx(0.5) and wide["held_cumulative"] and wide["speedup"] > 1
    big = rows[1]  # eta lambda_max = 3, past the edge of stability: the loss rises and the bound fails
    assert big["eta_lmax"] == pytest.approx(3.0) and not big["held_cumulative"] and big["max_step_factor"] > 1
    f = res["findings"]["softplus H=2"]
    assert f["sweep_smallest_eta_lmax_failed"] == pytest.approx(3.0)
    assert f["sweep_largest_eta_lmax_held"] == pytest.approx(rows[2]["eta_lmax"])


@pytest.mark.slow
def test_e5_committed_small_variant(tmp_path):
    res = run_experiment("E5", out=tmp_path / "s", small=True)
    rows = read_results(res["csv"])
    cases = {(r["activation"], r["H"]) for r in rows}
    assert cases == {("softplus", 2), ("tanh", 3)}
    assert all(r["held_cumulative"] for r in rows if r["eta_lmax"] < 1)
    assert not any(r["held_cumulative"] for r in rows if r["eta_lmax"] > 2.5)
    assert set(res["findings"]) == {"softplus H=2", "tanh H=3"}


@pytest.mark.parametrize("change, fragment", [
    ({"cases": [{"activation": "softplus", "H": 2, "m": 3}]}, "E5.params.cases[0].m: unknown key"),
    ({"cases": [{"activation": "softplus", "H": 0}]}, "E5.params.cases[0].H"),
    ({"cases": [{"activation": "bogus", "H": 2}]}, "E5.params.cases[0].activation"),
    ({"late_window": 12}, "E5.params.late_window"),
    ({"eta_over_lmax": 0.0}, "eta_over_lmax"),
    ({"steps": 1}, "E5.params.steps"),
])
def test_bad_params_name_the_key(tmp_path, change, fragment):
    with pytest.raises(PyrgdError) as e:
        run_experiment(write_exp(tmp_path, {**TINY, **change}), out=tmp_path / "o")
    assert fragment in str(e.value)
