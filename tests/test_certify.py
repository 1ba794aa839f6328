"""pyrgd.certify and `pyrgd certify`: the report's numbers against pyrgd.theory / pyrgd.tracking computed directly,
an independent SVD, train's own step-size rule, input checks and the command line."""
import json

import numpy as np
import pytest

import pyrgd
from pyrgd import PyramidalNet, cli, data, theory
from pyrgd.certify import certify, format_certificate
from pyrgd.errors import PyrgdError
from pyrgd.runio import json_safe
from pyrgd.tracking import certificate as tracking_certificate

from test_cli import assert_one_line_error


def _relu_net_sphere():
    X, Y = data.synthetic(12, 5, 1, inputs="sphere", seed=3)
    net = PyramidalNet(5, [96, 1], activation="relu", init="lecun", seed=4)
    return net, X, Y


def _deep_net_gaussian():
    X, Y = data.synthetic(10, 4, 1, inputs="gaussian", seed=1)
    net = PyramidalNet(4, [64, 6, 3, 1], activation="smooth_leaky_relu(0.2)", init="lecun", seed=2)
    return net, X, Y


def test_numbers_agree_with_theory_and_tracking_two_layer():
    net, X, Y = _relu_net_sphere()
    lr = 0.003
    d = certify(net, X, Y, lr=lr)
    row = tracking_certificate(X, net.weights, net.weights, net.activation, net.multipliers, lr, "auto")
    assert d["wide_layer"]["sigma_min_F1"] == pytest.approx(row["sigma_min_F1"], rel=1e-12)
    assert d["pl"]["mu_0"] == pytest.approx(row["mu"], rel=1e-12)
    assert d["pl"]["certified_factor"] == pytest.approx(row["certified_factor"], rel=1e-12)
    # independent: the SVD of the materialized F_1 = relu(X W_1)
    F1 = np.maximum(X @ net.weights[0], 0.0)
    assert d["wide_layer"]["sigma_min_F1"] == pytest.approx(np.linalg.svd(F1, compute_uv=False)[X.shape[0] - 1],
                                                            rel=1e-8)
    assert d["wide_layer"]["norm_W1"] == pytest.approx(np.linalg.norm(net.weights[0], 2), rel=1e-10)
    ng = theory.nguyen2021_certificate(net, X, Y, eta=lr)
    assert d["nguyen2021"]["applies"] is True
    assert d["nguyen2021"]["holds"] == ng.holds
    for k, c in ng.conditions.items():
        got = d["nguyen2021"]["conditions"][k]
        assert (got["lhs"], got["rhs"], got["margin"], got["holds"]) == (c.lhs, c.rhs, c.margin, c.holds)
    assert d["nguyen2021"]["eta_max"] == ng.eta_max and d["nguyen2021"]["eta_ok"] == ng.eta_ok
    assert d["loss_0"] == pytest.approx(0.5 * float(((net.forward(X) - Y) ** 2).sum()), rel=1e-12)
    assert d["ntk"]["available"]
    assert d["ntk"]["lambda_min"] == pytest.approx(theory.ntk_lambda_min(net, X), rel=1e-10)
    assert d["du2019"]["available"] and d["du2019"]["H"] == 1
    assert d["du2019"]["lambda_0"] == pytest.approx(theory.du_lambda0(X, 1, "relu"), rel=1e-12)


def test_du_lambda0_reported_under_both_readings_labelled():
    """H = 2, softplus: the two readings of Def. 5.1's last line differ; both are reported, the natural one as
    lambda_0, each labelled in the table."""
    X, Y = data.synthetic(12, 5, 1, inputs="sphere", seed=3)
    net = PyramidalNet(5, [96, 8, 1], activation="softplus", seed=1)
    d = certify(net, X, Y, ntk=False)
    du = d["du2019"]
    nat = theory.du_lambda0(X, 2, "softplus", last_layer_cov="natural")
    pap = theory.du_lambda0(X, 2, "softplus", last_layer_cov="paper")
    assert abs(nat - pap) > 0.1 * nat
    assert du["H"] == 2 and du["last_layer_cov"] == "natural"
    assert du["lambda_0"] == nat and du["readings"] == {"natural": nat, "paper": pap}
    lines = format_certificate(d).splitlines()
    nat_line = next(l for l in lines if "natural (default)" in l)
    pap_line = next(l for l in lines if "as printed" in l)
    assert f"{nat:.6g}" in nat_line and "A^(H) from K^(H-1)" in nat_line
    assert f"{pap:.6g}" in pap_line and "A^(H-1) from K^(H-2)" in pap_line


def test_numbers_agree_deep_net_and_du_left_out_for_non_unit_inputs():
    net, X, Y = _deep_net_gaussian()
    d = certify(net, X, Y)
    q = theory.nm2020_quantities(net, X)
    assert d["nm2020"]["lambda_F"] == q.lambda_F
    assert d["nm2020"]["lambda_l"] == {str(k): v for k, v in q.lambda_l.items()}
    assert [t["sigma_min"] for t in d["tail"]] == [q.lambda_l[3], q.lambda_l[4]]
    gamma = 0.2
    s = np.linalg.svd
    mu = (q.lambda_F * gamma * s(net.weights[2], compute_uv=False)[-1] * gamma * s(net.weights[3], compute_uv=False)[-1]) ** 2
    assert d["pl"]["mu_0"] == pytest.approx(mu, rel=1e-10)
    assert d["pl"]["certified_factor"] is None and d["lr"] is None  # no step size given
    assert d["nguyen2021"]["applies"] is False and "relu" in d["nguyen2021"]["verdict"]
    assert d["du2019"]["available"] is False and "unit-norm" in d["du2019"]["reason"]
    assert "no verdict" in d["nm2020"]["note"]


def test_pl_unavailable_for_tanh_tail_and_ntk_for_two_outputs():
    X, Y = data.synthetic(8, 3, 2, inputs="sphere", seed=0)
    net = PyramidalNet(3, [32, 4, 2], activation="tanh", seed=0)
    d = certify(net, X, Y, lr=0.01)
    assert d["pl"]["available"] is False and d["pl"]["mu_0"] is None and "tanh" in d["pl"]["note"]
    assert d["ntk"]["available"] is False and "n_L = 2" in d["ntk"]["reason"]
    text = format_certificate(d)
    assert "unavailable" in text and "single-output" in text


def test_auto_lr_is_the_one_train_chooses():
    net, X, Y = _relu_net_sphere()
    d = certify(net, X, Y, lr="auto", ntk=False, du=False)
    res = pyrgd.train(net.copy(), X, Y, lr="auto", steps=0, track_every=0, progress=False)
    assert d["lr"] == pytest.approx(res.lr, rel=1e-12)
    assert d["lr_rule"].startswith("auto")
    assert d["ntk"]["available"] is False and d["du2019"]["available"] is False


def test_table_and_json_round_trip():
    net, X, Y = _relu_net_sphere()
    d = certify(net, X, Y, lr=0.003)
    text = format_certificate(d)
    for frag in ("sigma_min(F_1)", "initW", "initF", "initS", "eta_max", "Nguyen & Mondelli 2020",
                 "none: the theorem's constants are unavailable", "lambda_0", f"{d['wide_layer']['sigma_min_F1']:.6g}"):
        assert frag in text, frag
    # every heading names its section of docs/theory.md
    for frag in ("(docs/theory.md 4.1, derived)", "docs/theory.md 4.2, paper", "(docs/theory.md 4.3, unavailable)",
                 "(docs/theory.md 4.4, paper)", "(docs/theory.md 5, derived)"):
        assert frag in text, frag
    back = json.loads(json.dumps(json_safe(d), allow_nan=False))
    assert format_certificate(back) == text


@pytest.mark.parametrize("call, name", [
    (lambda n, X, Y: certify("net", X, Y), "net"),
    (lambda n, X, Y: certify(n, X[:, :3], Y), "X"),
    (lambda n, X, Y: certify(n, X, Y[:5]), "Y"),
    (lambda n, X, Y: certify(n, X, Y, lr="fast"), "lr"),
    (lambda n, X, Y: certify(n, X, Y, lr=-1.0), "lr"),
    (lambda n, X, Y: certify(n, X, Y, ntk="yes"), "ntk"),
    (lambda n, X, Y: certify(n, X, Y, C=0.0), "C"),
    (lambda n, X, Y: format_certificate({"x": 1}), "d"),
])
def test_bad_input_names_the_argument(call, name):
    net, X, Y = _relu_net_sphere()
    with pytest.raises(PyrgdError, match=rf"^{name}"):
        call(net, X, Y)


# --------------------------------------------------------------------------------------------- the command line
TINY = ["--N", "10", "--d", "3", "--widths", "48,1", "--activation", "relu", "--lr", "0.01",
        "--set", "data.inputs=sphere"]


def test_cli_json_matches_python(capsys):
    assert cli.main(["certify", *TINY, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    from pyrgd import config as C

    cfg = C.resolve_config(overrides={"data": {"N": 10, "d": 3, "inputs": "sphere"},
                                      "model": {"widths": [48, 1], "activation": "relu"}, "train": {"lr": 0.01}})
    net, X, Y, _ = C.build(cfg)
    want = json_safe(certify(net, X, Y, lr=0.01))
    assert got["wide_layer"] == want["wide_layer"]
    assert got["nguyen2021"]["conditions"] == want["nguyen2021"]["conditions"]
    assert got["du2019"]["lambda_0"] == want["du2019"]["lambda_0"]


def test_cli_table(capsys):
    assert cli.main(["certify", *TINY, "--no-ntk", "--C", "2"]) == 0
    out = capsys.readouterr().out
    assert "Nguyen 2021, Theorem 2.2" in out and "C = [2.0, 2.0]" in out and "skipped (ntk=False, --no-ntk)" in out


@pytest.mark.parametrize("argv, fragments", [
    (["certify", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["certify", "--C", "-1"], ["--C", "positive"]),
    (["certify", "--C", "x"], ["--C"]),
    (["certify", "--preset", "nope"], ["preset", "quickstart"]),
    (["certify", "--N", "4", "--widths", "16,2"], ["model.widths", "target columns"]),
])
def test_cli_bad_input_exits_2(capsys, argv, fragments):
    assert cli.main(argv) == 2
    cap = capsys.readouterr()
    assert_one_line_error(cap.err, *fragments)
    assert cap.out == ""
