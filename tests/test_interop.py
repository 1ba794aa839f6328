"""pyrgd.ops takes DLPack arrays (PyTorch, JAX) besides NumPy/CuPy, zero-copy, and returns the caller's kind."""
import numpy as np
import pytest

import pyrgd.ops as ops
from pyrgd.errors import PyrgdError

torch = pytest.importorskip("torch")


def _case(dtype=np.float64, N=20, d=3, n1=70, n2=2, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in ((N, d), (d, n1), (n1, n2), (N, n2))]


def _t(a):
    return torch.from_numpy(a.copy())


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torch_in_torch_out_with_numpys_bits(dtype, backend):
    X, W1, W2, G = _case(dtype)
    tX, tW1, tW2, tG = map(_t, (X, W1, W2, G))
    H = ops.wide_forward(tX, tW1, tW2, activation="tanh", backend=backend)
    assert isinstance(H, torch.Tensor) and H.dtype == torch.from_numpy(X).dtype
    assert np.array_equal(H.numpy(), ops.wide_forward(X, W1, W2, activation="tanh", backend=backend))
    grads = ops.wide_grad(tX, tW1, tW2, tG, activation="tanh", input_grad=True, backend=backend)
    want = ops.wide_grad(X, W1, W2, G, activation="tanh", input_grad=True, backend=backend)
    assert all(isinstance(g, torch.Tensor) for g in grads)
    assert all(np.array_equal(g.numpy(), w) for g, w in zip(grads, want))
    K = ops.wide_gram(tX, tW1, activation="tanh", W2=tW2, B2=tG, backend=backend)
    assert isinstance(K, torch.Tensor)
    assert np.array_equal(K.numpy(), ops.wide_gram(X, W1, activation="tanh", W2=W2, B2=G, backend=backend))


def test_wide_step_updates_torch_tensors_in_place():
    """Zero-copy: the step writes the caller's tensors' memory (the same storage, no copy back)."""
    X, W1, W2, G = _case()
    tX, tW1, tW2, tG = map(_t, (X, W1, W2, G))
    ptr = tW1.data_ptr()
    res = ops.wide_step(tX, tW1, tW2, tG, 0.1, activation="softplus", next_forward=True)
    want = ops.wide_step(X, W1, W2, G, 0.1, activation="softplus", next_forward=True)
    assert tW1.data_ptr() == ptr
    assert np.array_equal(tW1.numpy(), W1) and np.array_equal(tW2.numpy(), W2)
    assert isinstance(res.H_next, torch.Tensor) and np.array_equal(res.H_next.numpy(), want.H_next)
    assert res.grad_sq_w1 == want.grad_sq_w1 and isinstance(res.grad_sq_w1, float)


def test_out_tensors_are_written_and_returned_as_the_callers_objects():
    X, W1, W2, G = _case()
    tX, tW1, tW2, tG = map(_t, (X, W1, W2, G))
    out = (torch.empty_like(tW1), torch.empty_like(tW2), torch.empty_like(tX))
    got = ops.wide_grad(tX, tW1, tW2, tG, input_grad=True, out=out)
    assert all(g is o for g, o in zip(got, out))
    assert all(np.array_equal(g.numpy(), w) for g, w in zip(got, ops.wide_grad(X, W1, W2, G, input_grad=True)))
    H = torch.empty_like(tG)
    assert ops.wide_step(tX, tW1, tW2, tG, 0.0, next_forward=True, out=H).H_next is H
    H2 = torch.full_like(tG, float("nan"))
    assert ops.wide_forward(tX, tW1, tW2, out=H2) is H2 and np.array_equal(H2.numpy(), H.numpy())


def test_numpy_out_arrays_come_back_as_themselves_for_torch_inputs():
    """out arrays of another kind than X (NumPy out, torch X) are the caller's objects too, written in place."""
    X, W1, W2, G = _case()
    out = (np.empty_like(W1), np.empty_like(W2), np.empty_like(X))
    got = ops.wide_grad(*map(_t, (X, W1, W2, G)), input_grad=True, out=out)
    assert all(g is o for g, o in zip(got, out))
    assert all(np.array_equal(g, w) for g, w in zip(got, ops.wide_grad(X, W1, W2, G, input_grad=True)))


def test_tensors_that_require_grad_and_strided_tensors():
    X, W1, W2, G = _case()
    tW1 = _t(W1).requires_grad_()
    tXT = _t(np.ascontiguousarray(X.T)).T  # not contiguous: copied for reading
    H = ops.wide_forward(tXT, tW1, _t(W2))
    assert not H.requires_grad and np.array_equal(H.numpy(), ops.wide_forward(X, W1, W2))
    with pytest.raises(PyrgdError, match="W1: is updated in place but is not C-contiguous"):
        ops.wide_step(_t(X), _t(np.ascontiguousarray(W1.T)).T, _t(W2), _t(G), 0.1)


def test_bad_tensors_are_pyrgd_errors():
    X, W1, W2, G = _case()
    with pytest.raises(PyrgdError, match="X: expected dtype float32 or float64, got float16"):
        ops.wide_forward(_t(X).half(), _t(W1), _t(W2))
    with pytest.raises(PyrgdError, match="X: cannot be read through DLPack"):
        ops.wide_forward(_t(X).bfloat16(), _t(W1), _t(W2))
    with pytest.raises(PyrgdError, match="W1: expected dtype float64 like the other arguments, got float32"):
        ops.wide_forward(_t(X), _t(W1).float(), _t(W2))
    with pytest.raises(PyrgdError, match="X: expected a numpy.ndarray or cupy.ndarray"):
        ops.wide_forward(X.tolist(), W1, W2)


def test_step_engine_on_torch_tensors_updates_them():
    X, W1, W2, _ = _case(N=30)
    Y = np.random.default_rng(1).standard_normal((30, 2))
    tW = [_t(W1), _t(W2)]
    eng = ops.step_engine(_t(X), _t(Y), tW, activation="tanh")
    ref = ops.step_engine(X, Y, [W1, W2], activation="tanh")
    for _ in range(3):
        assert eng.evaluate() == ref.evaluate()
        eng.update(0.01)
        ref.update(0.01)
    assert np.array_equal(tW[0].numpy(), W1) and np.array_equal(tW[1].numpy(), W2)


def test_jax_arrays_in_jax_arrays_out():
    jnp = pytest.importorskip("jax.numpy")
    X, W1, W2, G = _case(np.float32)
    jX, jW1, jW2, jG = map(jnp.asarray, (X, W1, W2, G))
    H = ops.wide_forward(jX, jW1, jW2, activation="erf")
    assert type(H).__module__.split(".")[0] in ("jax", "jaxlib") and H.dtype == jnp.float32
    assert np.array_equal(np.asarray(H), ops.wide_forward(X, W1, W2, activation="erf"))
    grads = ops.wide_grad(jX, jW1, jW2, jG, activation="erf")
    assert all(np.array_equal(np.asarray(g), w) for g, w in zip(grads, ops.wide_grad(X, W1, W2, G, activation="erf")))
    with pytest.raises(PyrgdError, match="W1: is updated in place but is read-only"):  # JAX arrays are immutable
        ops.wide_step(jX, jW1, jW2, jG, 0.1)


def test_torch_tensors_with_the_negative_bit_are_read_as_their_values():
    """A lazily negated tensor (.conj().imag of a complex one: is_neg() is True) exports its memory through DLPack
    without the negation: read-only inputs are resolved first, arrays written in place are refused."""
    def lazily_negated(a):  # a float64 tensor of the values a, stored as -a with the negative bit set
        t = torch.from_numpy(-a)
        return torch.complex(torch.zeros_like(t), t).conj().imag

    X, W1, W2, G = _case()
    Xneg = lazily_negated(X)
    assert Xneg.is_neg() and np.array_equal(Xneg.resolve_neg().numpy(), X)
    assert np.array_equal(ops.wide_forward(Xneg, _t(W1), _t(W2)).numpy(), ops.wide_forward(X, W1, W2))
    W1neg = lazily_negated(W1)
    with pytest.raises(PyrgdError, match="W1: a torch tensor with its negative bit set"):
        ops.wide_step(_t(X), W1neg, _t(W2), _t(G), 0.1)
    with pytest.raises(PyrgdError, match="out: a torch tensor with its negative bit set"):
        ops.wide_forward(_t(X), _t(W1), _t(W2), out=torch.zeros(20, 2, dtype=torch.complex128).conj().imag)
