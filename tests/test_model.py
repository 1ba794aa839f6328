import math

import numpy as np
import pytest

from pyrgd import PyramidalNet, PyrgdError


def test_shapes_and_names():
    net = PyramidalNet(d=5, widths=[40, 8, 3], activation="tanh", seed=1)
    assert [w.shape for w in net.weights] == [(5, 40), (40, 8), (8, 3)]
    assert net.L == 3 and net.dims == [5, 40, 8, 3] and net.n_params == 5 * 40 + 40 * 8 + 8 * 3
    assert all(w.flags.c_contiguous and w.dtype == np.float64 for w in net.weights)


@pytest.mark.parametrize("init, expect", [
    ("lecun", lambda dims: [1 / math.sqrt(dims[l]) for l in range(3)]),
    ("he", lambda dims: [math.sqrt(2 / dims[l]) for l in range(3)]),
    ("xavier", lambda dims: [math.sqrt(2 / (dims[l] + dims[l + 1])) for l in range(3)]),
    ("lecun_last_n43", lambda dims: [1 / math.sqrt(dims[0]), 1 / math.sqrt(dims[1]), dims[2] ** (-2 / 3)]),
])
def test_init_standard_deviations(init, expect):
    net = PyramidalNet(d=50, widths=[400, 60, 30], init=init, seed=0)
    for w, s in zip(net.weights, expect(net.dims)):
        # std of >= 1800 Gaussian draws: relative error ~ 1/sqrt(2n) < 2%; 10% is 5 standard errors
        assert w.std() == pytest.approx(s, rel=0.1)
        assert abs(w.mean()) < 5 * s / math.sqrt(w.size)


def test_normal_and_per_layer_std():
    net = PyramidalNet(d=50, widths=[400, 60], init="normal", init_std=0.3, seed=0)
    assert [w.std() for w in net.weights] == pytest.approx([0.3, 0.3], rel=0.1)
    net = PyramidalNet(d=50, widths=[400, 60], init="normal", init_std=[0.1, 2.0], seed=0)
    assert [w.std() for w in net.weights] == pytest.approx([0.1, 2.0], rel=0.1)
    with pytest.raises(PyrgdError, match="init_std: expected one standard deviation per layer"):
        PyramidalNet(d=5, widths=[40, 6], init="normal", init_std=[0.1])
    with pytest.raises(PyrgdError, match="init_std: init='normal' needs init_std"):
        PyramidalNet(d=5, widths=[40, 6], init="normal")


def test_zero_scaled():
    net = PyramidalNet(d=50, widths=[400, 60, 30], init="zero_scaled", beta=10.0, zero_layer=2, seed=0)
    assert not net.weights[1].any()
    lecun = PyramidalNet(d=50, widths=[400, 60, 30], init="lecun", seed=0)
    assert np.allclose(net.weights[0], 10 * lecun.weights[0])  # same draws, scaled by beta
    last = PyramidalNet(d=50, widths=[400, 60, 30], init="zero_scaled", beta=2.0, seed=0)
    assert not last.weights[2].any() and last.weights[0].any()  # default: the last layer is zero
    with pytest.raises(PyrgdError, match="zero_layer: expected a layer index in 1..3"):
        PyramidalNet(d=5, widths=[40, 6, 2], init="zero_scaled", zero_layer=4)


def test_seed_and_dtype():
    a = PyramidalNet(d=4, widths=[30, 2], seed=7)
    b = PyramidalNet(d=4, widths=[30, 2], seed=7)
    c = PyramidalNet(d=4, widths=[30, 2], seed=8)
    f = PyramidalNet(d=4, widths=[30, 2], seed=7, dtype="float32")
    assert all(np.array_equal(x, y) for x, y in zip(a.weights, b.weights))
    assert not np.array_equal(a.weights[0], c.weights[0])
    assert f.weights[0].dtype == np.float32 and np.array_equal(f.weights[0], a.weights[0].astype(np.float32))


@pytest.mark.parametrize("kwargs, match", [
    (dict(d=0, widths=[4, 2]), "d: expected a positive integer"),
    (dict(d=3, widths=[4]), "widths: expected at least two layers"),
    (dict(d=3, widths="4,2"), "widths: expected a list"),
    (dict(d=3, widths=[4, 2.5]), r"widths\[1\]: expected a positive integer"),
    (dict(d=3, widths=[4, -2]), r"widths\[1\]: expected a positive integer"),
    (dict(d=3, widths=[40, 4, 8, 1]), "must be pyramidal"),
    (dict(d=3, widths=[4, 2], activation="gelu"), "activation: unknown activation"),
    (dict(d=3, widths=[4, 2], init="orthogonal"), "init: unknown scheme 'orthogonal'"),
    (dict(d=3, widths=[4, 2], dtype="float16"), "dtype: expected 'float32' or 'float64'"),
    (dict(d=3, widths=[4, 2, 1], multipliers=[1.0]), "multipliers: expected 2 values"),
    (dict(d=3, widths=[4, 2], multipliers=[-1.0]), r"multipliers\[0\]: expected a positive number"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(PyrgdError, match=match):
        PyramidalNet(**kwargs)


def test_non_pyramidal_opt_out():
    net = PyramidalNet(d=3, widths=[40, 4, 8, 1], allow_non_pyramidal=True)
    assert net.widths == [40, 4, 8, 1]


def test_save_load_roundtrip(tmp_path):
    net = PyramidalNet(d=4, widths=[30, 5, 2], activation="leaky_relu(0.3)", init="he", seed=3, dtype="float32",
                       multipliers=[0.5, 2.0])
    net.weights[0] += 1.0  # trained weights differ from the initial draw
    net.save(tmp_path / "w.npz")
    back = PyramidalNet.load(tmp_path / "w.npz")
    assert back.config() == net.config()
    assert all(np.array_equal(x, y) and x.dtype == y.dtype for x, y in zip(back.weights, net.weights))
    with np.load(tmp_path / "w.npz", allow_pickle=False) as z:  # readable without pickle
        assert sorted(z.files) == ["W1", "W2", "W3", "__meta__"]


def test_load_errors(tmp_path):
    with pytest.raises(PyrgdError, match="path: no file"):
        PyramidalNet.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(PyrgdError, match="path: .* is not a pyrgd weights file"):
        PyramidalNet.load(tmp_path / "other.npz")


def test_forward_matches_layers(rng):
    net = PyramidalNet(d=3, widths=[20, 4, 2], activation="softplus", seed=0, multipliers=[0.5, 2.0])
    X = rng.standard_normal((5, 3))
    W = net.weights
    F1 = 0.5 * np.log1p(np.exp(X @ W[0]))
    F2 = 2.0 * np.log1p(np.exp(F1 @ W[1]))
    assert np.allclose(net.forward(X, backend="reference"), F2 @ W[2], rtol=1e-13)
    with pytest.raises(PyrgdError, match=r"X: expected shape \(any, 3\)"):
        net.forward(rng.standard_normal((5, 4)))


def test_warns_when_narrow():
    with pytest.warns(UserWarning, match="n_1 = 10 < N = 20"):
        PyramidalNet(d=3, widths=[10, 1]).warn_if_narrow(20)
