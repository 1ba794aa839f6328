"""pyrgd.jax.wide: gradients against jax.grad of a plain JAX version, under jit and vmap; the documented limits."""
import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import pyrgd.jax as pj  # noqa: E402
import pyrgd.ops as ops  # noqa: E402
from pyrgd.errors import PyrgdError  # noqa: E402

PLAIN = {
    "tanh": jnp.tanh,
    "softplus": jax.nn.softplus,
    "erf": jax.scipy.special.erf,
    "smooth_leaky_relu(0.2)": lambda z: 0.2 * z + 0.8 * (jax.nn.softplus(z) - np.log(2.0)),
}


@pytest.fixture
def x64():
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


def _arrays(dtype, N=12, d=3, n1=70, n2=2, seed=0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal(s) / np.sqrt(s[0]), dtype=dtype) for s in ((N, d), (d, n1), (n1, n2))]


def _loss(f):
    return lambda X, W1, W2: jnp.sum(jnp.sin(f(X, W1, W2)))


@pytest.mark.parametrize("spec", list(PLAIN))
def test_gradients_match_jax_grad_of_plain_jax_float64(spec, x64):
    X, W1, W2 = _arrays(jnp.float64)
    a1 = 0.7
    ours = jax.jit(jax.grad(_loss(lambda X, W1, W2: pj.wide(X, W1, W2, spec, a1)), argnums=(0, 1, 2)))(X, W1, W2)
    plain = jax.grad(_loss(lambda X, W1, W2: a1 * PLAIN[spec](X @ W1) @ W2), argnums=(0, 1, 2))(X, W1, W2)
    for o, p in zip(ours, plain):
        assert o.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(o), np.asarray(p), rtol=1e-11, atol=1e-13)


def test_float32_value_and_gradients():
    X, W1, W2 = _arrays(jnp.float32, n1=200)
    H = pj.wide(X, W1, W2, "tanh")
    assert H.dtype == jnp.float32
    assert np.array_equal(np.asarray(H), ops.wide_forward(*(np.asarray(a) for a in (X, W1, W2)), activation="tanh"))
    ours = jax.grad(_loss(lambda X, W1, W2: pj.wide(X, W1, W2, "tanh")), argnums=(0, 1, 2))(X, W1, W2)
    plain = jax.grad(_loss(lambda X, W1, W2: jnp.tanh(X @ W1) @ W2), argnums=(0, 1, 2))(X, W1, W2)
    for o, p in zip(ours, plain):
        np.testing.assert_allclose(np.asarray(o), np.asarray(p), rtol=2e-4, atol=2e-5)


def test_vmap_calls_per_element(x64):
    X, W1, W2 = _arrays(jnp.float64)
    Xs = jnp.stack([X, 2 * X, -X])
    got = jax.vmap(lambda x: pj.wide(x, W1, W2, "softplus"))(Xs)
    for i in range(3):
        np.testing.assert_allclose(np.asarray(got[i]), np.asarray(jax.nn.softplus(Xs[i] @ W1) @ W2), rtol=1e-12)


def test_documented_limits_raise(x64):
    X, W1, W2 = _arrays(jnp.float64)
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda w: pj.wide(X, W1, w, "tanh"), (W2,), (W2,))
    g = jax.grad(lambda w: jnp.sum(pj.wide(X, W1, w, "tanh") ** 2))
    with pytest.raises(Exception, match="(?i)jvp|differentiat"):
        jax.grad(lambda w: jnp.sum(g(w)))(W2)


def test_bad_arguments_are_pyrgd_errors(x64):
    X, W1, W2 = _arrays(jnp.float64)
    with pytest.raises(PyrgdError, match="activation"):
        pj.wide(X, W1, W2, "nope")
    with pytest.raises(PyrgdError, match="X, W1, W2: expected shapes"):
        pj.wide(X, W1, W2[:5])
    with pytest.raises(PyrgdError, match="W2: expected dtype float64 like X"):
        pj.wide(X, W1, W2.astype(jnp.float32))
    with pytest.raises(PyrgdError, match="X: expected a 2-D array"):
        pj.wide(X[0], W1, W2)
    with pytest.raises(PyrgdError, match="a1: expected a finite number"):
        pj.wide(X, W1, W2, a1=float("inf"))


def test_non_finite_values_propagate_as_in_jax(x64):
    """A NaN sample gives NaN in its own row and in the gradients it touches, not an error inside the callback."""
    X, W1, W2 = _arrays(jnp.float64)
    X = X.at[1, 0].set(jnp.nan)
    H = jax.jit(lambda X: pj.wide(X, W1, W2, "tanh"))(X)
    rows = np.arange(X.shape[0]) != 1
    assert np.isnan(np.asarray(H[1])).all() and np.isfinite(np.asarray(H)[rows]).all()
    dW2 = jax.grad(lambda w: jnp.sum(pj.wide(X, W1, w, "tanh")))(W2)
    assert np.isnan(np.asarray(dW2)).any()
