"""The NumPy reference (the oracle of every backend) against float64 finite differences of the loss."""
import numpy as np
import pytest

from pyrgd.activations import parse_activation
from pyrgd.backends import reference as R
from pyrgd.model import PyramidalNet
from pyrgd.tail import tail_backward, tail_forward

from conftest import ALL_ACTIVATIONS, rel_err


def _loss_and_grads(X, Y, W, act, mult):
    H = R.forward(X, W[0], W[1], act, mult[0])
    cache = tail_forward(H, W, act, mult)
    loss, G, tail = tail_backward(cache, Y, W, act, mult)
    g1, g2 = R.gradients(X, W[0], W[1], G, act, mult[0])
    return float(loss), [g1, g2] + tail


@pytest.mark.parametrize("spec", ALL_ACTIVATIONS)
@pytest.mark.parametrize("widths", [[13, 3], [11, 5, 4, 2]])
def test_gradients_match_finite_differences(spec, widths, rng):
    act = parse_activation(spec)
    d, N = 4, 6
    net = PyramidalNet(d, widths, activation=act, seed=3, multipliers=[1.3] + [0.8] * (len(widths) - 2))
    X = rng.standard_normal((N, d))
    Y = rng.standard_normal((N, widths[-1]))
    W = net.weights
    _, grads = _loss_and_grads(X, Y, W, act, net.multipliers)
    h = 1e-6
    for l, (w, g) in enumerate(zip(W, grads)):
        fd = np.zeros_like(w)
        for idx in np.ndindex(w.shape):
            old = w[idx]
            w[idx] = old + h
            lp, _ = _loss_and_grads(X, Y, W, act, net.multipliers)
            w[idx] = old - h
            lm, _ = _loss_and_grads(X, Y, W, act, net.multipliers)
            w[idx] = old
            fd[idx] = (lp - lm) / (2 * h)
        # relu/leaky_relu are piecewise linear: finite differences are exact away from kinks (none at this scale)
        assert rel_err(g, fd) < 1e-6, f"layer {l + 1}"


def test_step_updates_and_next_forward(rng):
    act = parse_activation("tanh")
    X, G = rng.standard_normal((7, 3)), rng.standard_normal((7, 2))
    W1, W2 = rng.standard_normal((3, 9)), rng.standard_normal((9, 2))
    g1, g2 = R.gradients(X, W1, W2, G, act, 0.7)
    W1c, W2c = W1.copy(), W2.copy()
    res = R.step(X, W1c, W2c, G, 0.05, act, 0.7, True)
    assert np.allclose(W1c, W1 - 0.05 * g1) and np.allclose(W2c, W2 - 0.05 * g2)
    assert np.allclose(res.H_next, R.forward(X, W1c, W2c, act, 0.7))
    assert res.grad_sq_w1 == pytest.approx(float((g1 ** 2).sum()))
    assert R.step(X, W1.copy(), W2.copy(), G, 0.05, act, 0.7, False).H_next is None


def test_gram_definitions(rng):
    act = parse_activation("softplus")
    X, W1, W2, B2 = (rng.standard_normal(s) for s in [(5, 3), (3, 8), (8, 2), (5, 2)])
    F = 1.5 * act.sigma(X @ W1)
    assert rel_err(R.gram(X, W1, act, 1.5), F @ F.T) < 1e-14
    B1 = 1.5 * (B2 @ W2.T) * act.dsigma(X @ W1)
    assert rel_err(R.gram(X, W1, act, 1.5, W2=W2, B2=B2), B1 @ B1.T) < 1e-14
