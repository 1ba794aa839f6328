import math

import numpy as np
import pytest

from pyrgd.activations import ACTIVATION_CODES, Activation, parse_activation, sigma_and_derivative
from pyrgd.errors import PyrgdError

from conftest import ALL_ACTIVATIONS


@pytest.mark.parametrize("spec", ALL_ACTIVATIONS)
def test_derivative_matches_finite_difference(spec):
    act = parse_activation(spec)
    x = np.linspace(-6, 6, 2001) + 1e-3  # avoid the kink of relu at exactly 0
    h = 1e-6
    fd = (act.sigma(x + h) - act.sigma(x - h)) / (2 * h)
    kink = np.abs(x) < 2 * h
    assert np.max(np.abs(fd - act.dsigma(x))[~kink]) < 1e-7


def test_known_values():
    x = np.array([-2.0, 0.0, 3.0])
    assert np.allclose(parse_activation("relu").sigma(x), [0, 0, 3])
    assert np.allclose(parse_activation("relu").dsigma(x), [0, 0, 1])  # sigma'(0) = 0
    assert np.allclose(parse_activation("leaky_relu(0.1)").sigma(x), [-0.2, 0, 3])
    assert np.allclose(parse_activation("softplus").sigma(x), np.log1p(np.exp(x)))
    s = parse_activation("smooth_leaky_relu(0.3)")
    assert s.sigma(np.array([0.0]))[0] == 0.0
    assert np.allclose(s.sigma(x), 0.3 * x + 0.7 * (np.log1p(np.exp(x)) - math.log(2)))
    assert np.allclose(parse_activation("erf").dsigma(x), 2 / math.sqrt(math.pi) * np.exp(-x * x))


@pytest.mark.parametrize("spec", ["smooth_leaky_relu(0.2)", "softplus", "tanh", "erf"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_safe_for_large_inputs(spec, dtype):
    act = parse_activation(spec)
    x = np.array([-1e4, -200.0, -90.0, 90.0, 200.0, 1e4], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s, ds = sigma_and_derivative(act, x)
    assert s.dtype == dtype and ds.dtype == dtype
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(ds))


def test_smooth_leaky_relu_properties():
    g = 0.2
    act = parse_activation("smooth_leaky_relu", gamma=g)
    x = np.linspace(-50, 50, 10001)
    ds = act.dsigma(x)
    assert np.all(ds >= g) and np.all(ds <= 1)
    assert np.all(np.diff(ds) >= 0)  # logistic is increasing
    assert np.all(np.abs(act.sigma(x)) <= np.abs(x) + 1e-12)
    assert act.derivative_lower_bound == g


def test_parse_forms():
    assert parse_activation("leaky_relu(0.25)") == Activation("leaky_relu", 0.25)
    assert parse_activation(("leaky_relu", 0.25)) == Activation("leaky_relu", 0.25)
    assert parse_activation("LeakY_ReLU") == Activation("leaky_relu", 0.01)
    assert parse_activation(Activation("tanh")) == Activation("tanh", 0.0)
    assert str(parse_activation("smooth_leaky_relu(0.2)")) == "smooth_leaky_relu(0.2)"
    assert set(ACTIVATION_CODES) == {"relu", "leaky_relu", "smooth_leaky_relu", "softplus", "tanh", "erf", "identity"}


@pytest.mark.parametrize("bad, match", [
    ("swish", "unknown activation"),
    ("leaky_relu(abc)", "not a number"),
    ("leaky_relu(1.5)", r"\(0, 1\)"),
    ("tanh(0.1)", "takes no slope"),
    (3, "expected a name"),
])
def test_parse_errors(bad, match):
    with pytest.raises(PyrgdError, match=match):
        parse_activation(bad)


def test_codes_match_header():
    import pathlib
    import re

    header = (pathlib.Path(__file__).parents[1] / "csrc/include/pyrgd/activations.h").read_text()
    structs = dict(re.findall(r"M\((\w+), (\d+)\)", header))
    names = {"Relu": "relu", "LeakyRelu": "leaky_relu", "SmoothLeakyRelu": "smooth_leaky_relu",
             "Softplus": "softplus", "Tanh": "tanh", "Erf": "erf", "Identity": "identity"}
    assert {names[k]: int(v) for k, v in structs.items()} == ACTIVATION_CODES


def test_relu_propagates_nan_as_numpy_does():
    """A NaN in one sample (the raw backend functions take it; pyrgd.ops refuses it): relu keeps NaN there, as
    NumPy's maximum does, so the cpu kernels give NaN exactly where the reference does and the same values
    elsewhere."""
    import pytest

    pytest.importorskip("pyrgd._cpu")
    from pyrgd.backends import cpu, reference

    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        X = rng.standard_normal((37, 5)).astype(dtype)
        X[3, 2] = np.nan
        W1 = rng.standard_normal((5, 70)).astype(dtype)
        W2 = rng.standard_normal((70, 3)).astype(dtype)
        act = parse_activation("relu")
        ref = reference.forward(X, W1, W2, act, 1.0)
        got = cpu.forward(X, W1, W2, act, 1.0)
        assert np.array_equal(np.isnan(got), np.isnan(ref)) and np.isnan(got[3]).all()
        ok = ~np.isnan(ref)
        assert np.allclose(got[ok], ref[ok], rtol=1e-5)
