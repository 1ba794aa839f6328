"""Update rules of pyrgd.train: heavy-ball momentum and Nesterov against a plain NumPy loop, GD's bits unchanged,
the engine's step_gradients / apply, the rules' text forms, the config keys and the command-line flags."""
import json

import numpy as np
import pytest

import pyrgd
from pyrgd import ops
from pyrgd.errors import PyrgdError
from pyrgd.update_rules import GD, Momentum, Nesterov, parse_update

from _numpy_net import reference_losses

pytest.importorskip("pyrgd._cpu", reason="the C++ extension pyrgd._cpu is not built")

ENGINES = [("cpu", "rows"), ("cpu", "neurons"), ("reference", "auto")]


def _problem(dtype="float64", seed=0, widths=(192, 6, 2)):
    rng = np.random.default_rng(seed)
    net = pyrgd.PyramidalNet(5, list(widths), activation="tanh", seed=seed, dtype=dtype, multipliers=[1.3, 0.8])
    X = rng.standard_normal((40, 5)).astype(dtype)
    Y = rng.standard_normal((40, widths[-1])).astype(dtype)
    return net, X, Y


@pytest.mark.parametrize("backend,method", ENGINES)
@pytest.mark.parametrize("rule", [Momentum(0.9), Nesterov(0.8)])
def test_momentum_matches_a_numpy_reference_loop(backend, method, rule):
    """Same lr and beta: the losses of 25 steps equal those of the NumPy loop to 1e-10 (float64), and so do the
    final weights."""
    net, X, Y = _problem()
    lr, steps = 2e-3, 25
    want, W_ref = reference_losses(X, Y, net.weights, net.multipliers, lr, steps, beta=rule.beta,
                                   nesterov=isinstance(rule, Nesterov))
    res = pyrgd.train(net.copy(), X, Y, lr=lr, steps=steps, backend=backend, method=method, update=rule,
                      progress=False, track_every=0)
    assert res.status == "max_steps" and res.summary["update"] == rule.spec()
    np.testing.assert_allclose(res.history["loss"], want, rtol=1e-10, atol=0)
    for got, ref in zip(res.net.weights, W_ref):
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)
    # momentum is not GD: the same steps of GD end elsewhere
    gd, _ = reference_losses(X, Y, net.weights, net.multipliers, lr, steps)
    assert abs(gd[-1] - want[-1]) > 1e-3 * want[-1]


def test_float32_momentum_follows_the_reference_loosely():
    net, X, Y = _problem("float32")
    want, _ = reference_losses(X.astype(np.float64), Y.astype(np.float64),
                               [w.astype(np.float64) for w in net.weights], net.multipliers, 2e-3, 10, beta=0.9)
    res = pyrgd.train(net, X, Y, lr=2e-3, steps=10, update="momentum", progress=False, track_every=0)
    np.testing.assert_allclose(res.history["loss"], want, rtol=1e-4)


@pytest.mark.parametrize("backend,method", ENGINES)
def test_default_update_is_the_engines_own_gd_step_bit_for_bit(backend, method):
    """update='gd' (the default) runs the engine's update: the losses and weights equal a hand loop over
    ops.step_engine's evaluate / update, bit for bit."""
    net, X, Y = _problem()
    res = pyrgd.train(net.copy(), X, Y, lr=1e-3, steps=6, backend=backend, method=method, progress=False,
                      track_every=0)
    named = pyrgd.train(net.copy(), X, Y, lr=1e-3, steps=6, backend=backend, method=method, progress=False,
                        track_every=0, update=GD())
    W = [w.copy() for w in net.weights]
    eng = ops.step_engine(X, Y, W, activation=net.activation, multipliers=net.multipliers, backend=backend,
                          method=method)
    losses = []
    for k in range(7):
        losses.append(eng.evaluate())
        if k < 6:
            eng.update(1e-3)
    assert res.history["loss"] == losses == named.history["loss"]
    assert all(np.array_equal(a, b) for a, b in zip(res.net.weights, W))
    assert res.summary["update"] == "gd" and res.summary["tracking"]["certificates_apply"] is True


@pytest.mark.parametrize("backend,method", ENGINES)
def test_step_gradients_are_the_gradients_of_the_evaluated_weights(backend, method):
    net, X, Y = _problem()
    W = [w.copy() for w in net.weights]
    eng = ops.step_engine(X, Y, W, activation=net.activation, multipliers=net.multipliers, backend=backend,
                          method=method)
    with pytest.raises(PyrgdError, match="step_gradients: call evaluate"):
        eng.step_gradients()
    eng.evaluate()
    got = [g.copy() for g in eng.step_gradients()]
    want = ops.step_engine(X, Y, [w.copy() for w in W], activation=net.activation, multipliers=net.multipliers,
                           backend="reference").gradients()
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend,method", ENGINES)
def test_apply_moves_every_layer_or_none(backend, method):
    net, X, Y = _problem()
    W = [w.copy() for w in net.weights]
    eng = ops.step_engine(X, Y, W, activation=net.activation, multipliers=net.multipliers, backend=backend,
                          method=method)
    first = eng.evaluate()
    before = [w.copy() for w in W]
    bad = [np.ones_like(w) for w in W[:-1]] + [np.ones((W[-1].shape[0] + 1, W[-1].shape[1]))]
    with pytest.raises(PyrgdError, match=r"direction\[2\]: expected shape"):
        eng.apply(bad, 0.1)
    with pytest.raises(PyrgdError, match="direction: expected a list of 3 arrays"):
        eng.apply(bad[:2], 0.1)
    with pytest.raises(PyrgdError, match=r"direction\[0\]: expected shape .* and dtype float64"):
        eng.apply([w.astype(np.float32) for w in W], 0.1)
    assert all(np.array_equal(a, b) for a, b in zip(W, before))  # nothing moved
    D = [np.full_like(w, 0.01) for w in W]
    eng.apply(D, 0.5)
    for w, b in zip(W, before):
        np.testing.assert_allclose(w, b - 0.005, rtol=0, atol=1e-15)
    # the next evaluate is of the moved weights (a neurons engine drops the H it carried)
    again = ops.step_engine(X, Y, [w.copy() for w in W], activation=net.activation, multipliers=net.multipliers,
                            backend="reference")
    assert eng.evaluate() == pytest.approx(again.evaluate(), rel=1e-12) and eng.evaluate() != first


@pytest.mark.parametrize("text,want", [("gd", GD()), ("GD", GD()), ("momentum", Momentum(0.9)),
                                       ("nesterov", Nesterov(0.9)), ("momentum(0.95)", Momentum(0.95)),
                                       (" nesterov( 0 ) ", Nesterov(0.0))])
def test_update_rules_from_text(text, want):
    got = parse_update(text)
    assert got == want and type(got) is type(want)
    assert parse_update(got.spec()) == got


@pytest.mark.parametrize("bad,match", [("adam", "update: expected one of gd, momentum, nesterov"),
                                       ("momentum(1.0)", r"beta: expected a number in \[0, 1\)"),
                                       ("momentum(-0.1)", r"beta: expected a number in \[0, 1\)"),
                                       ("momentum(x)", "update: expected a number in"),
                                       ("gd(0.5)", "update: 'gd' takes no parameter"),
                                       (0.9, "update: expected 'gd'")])
def test_bad_update_rules(bad, match):
    net, X, Y = _problem()
    with pytest.raises(PyrgdError, match=match):
        pyrgd.train(net, X, Y, lr=1e-3, steps=1, update=bad, progress=False)
    with pytest.raises(PyrgdError, match=r"beta: expected a number in \[0, 1\)"):
        Momentum(float("nan"))


def test_certificates_do_not_apply_to_momentum(tmp_path):
    """track_every='auto' takes none; a given track_every records the tracked quantities with certified_factor and
    the envelope nan, and summary.json says why."""
    _, X, Y = _problem()
    net = pyrgd.PyramidalNet(5, [192, 6, 2], activation="smooth_leaky_relu(0.2)", seed=0)  # GD: finite factors
    auto = pyrgd.train(net.copy(), X, Y, lr=1e-3, steps=5, update="nesterov", progress=False)
    assert auto.certificates == {} or auto.certificates.get("step", []) == []
    res = pyrgd.train(net.copy(), X, Y, lr=1e-3, steps=5, update="momentum", progress=False, track_every=2,
                      out=tmp_path / "r")
    assert res.certificates["step"] == [0, 2, 4]
    assert all(np.isnan(res.certificates["certified_factor"])) and all(np.isnan(res.history["envelope"]))
    assert all(s > 0 for s in res.certificates["sigma_min_F1"])
    summary = json.load(open(tmp_path / "r" / "summary.json"))
    assert summary["tracking"]["certificates_apply"] is False and "momentum(0.9)" in summary["tracking"]["why_not"]
    gd = pyrgd.train(net.copy(), X, Y, lr=1e-3, steps=5, progress=False, track_every=2)
    assert np.all(np.isfinite(gd.certificates["certified_factor"]))


def test_config_keys_and_cli_flags(tmp_path):
    from pyrgd import cli
    from pyrgd.config import build, resolve_config

    kw = build(resolve_config(overrides={"data": {"N": 8, "d": 3}, "model": {"widths": [32, 1]},
                                         "train": {"update": "nesterov", "momentum": 0.5}}))[3]
    assert kw["update"] == "nesterov(0.5)" and parse_update(kw["update"]) == Nesterov(0.5)
    assert build(resolve_config(overrides={"data": {"N": 8, "d": 3}, "model": {"widths": [32, 1]}}))[3]["update"] \
        == "gd"
    with pytest.raises(PyrgdError, match=r"train.momentum: expected a finite number in \[0, 1\), got 1"):
        resolve_config(overrides={"train": {"momentum": 1}})
    with pytest.raises(PyrgdError, match="train.update: expected one of gd, momentum, nesterov"):
        resolve_config(overrides={"train": {"update": "adam"}})
    rc = cli.main(["train", "--N", "16", "--d", "4", "--widths", "64,1", "--steps", "3", "--lr", "0.01",
                   "--update", "momentum", "--momentum", "0.7", "--no-progress", "--json", "--out",
                   str(tmp_path / "r")])
    assert rc == 0
    s = json.load(open(tmp_path / "r" / "summary.json"))
    assert s["update"] == "momentum(0.7)" and s["loss"] == "squared"


def _cupy_with_a_device():
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception:  # driver missing or broken
        pytest.skip("no CUDA device")
    return cp


@pytest.mark.gpu
@pytest.mark.parametrize("rule", [Momentum(0.9), Nesterov(0.8)])
def test_momentum_on_the_gpu_matches_the_numpy_reference_loop(rule):
    _cupy_with_a_device()
    net, X, Y = _problem()
    want, _ = reference_losses(X, Y, net.weights, net.multipliers, 2e-3, 15, beta=rule.beta,
                               nesterov=isinstance(rule, Nesterov))
    res = pyrgd.train(net, X, Y, lr=2e-3, steps=15, backend="cuda", update=rule, progress=False, track_every=0)
    np.testing.assert_allclose(res.history["loss"], want, rtol=1e-10, atol=0)
