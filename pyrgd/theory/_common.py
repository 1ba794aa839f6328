"""Input checks and small helpers shared by the certificate modules of :mod:`pyrgd.theory`."""
from __future__ import annotations

import numpy as np

from .._validate import array_module, check_float_array
from ..errors import PyrgdError


def check_net(net):
    from ..model import PyramidalNet

    if not isinstance(net, PyramidalNet):
        raise PyrgdError(f"net: expected a pyrgd.PyramidalNet, got {type(net).__name__}")
    return net


def net_inputs(net, X):
    """(xp, X64, W64): X (N, d) checked and cast to float64, the weights as float64 arrays of X's module.

    The theory quantities are computed in float64 whatever the net's dtype (squared singular values lose half the
    digits; float32 would leave too few).
    """
    X = check_float_array("X", X, 2, shape=(None, net.d))
    xp = array_module(X)
    X64 = X.astype(xp.float64, copy=False)
    W64 = [xp.ascontiguousarray(xp.asarray(w), dtype=xp.float64) for w in net.weights]
    return xp, X64, W64


def check_targets(Y, N, n_out, xp):
    Y = check_float_array("Y", Y, 2, xp=xp, shape=(N, n_out))
    return Y.astype(xp.float64, copy=False)


def to_host(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else a


def spectral_norm(W) -> float:
    """||W||_2 of a (p, q) matrix from the eigenvalues of its smaller Gram matrix (cheap for W_1 (d, n_1))."""
    W = np.asarray(to_host(W), dtype=np.float64)
    G = W.T @ W if W.shape[0] >= W.shape[1] else W @ W.T
    return float(np.sqrt(max(float(np.linalg.eigvalsh(G)[-1]), 0.0)))


def frobenius(a) -> float:
    a = to_host(a)
    return float(np.sqrt(float((np.asarray(a, dtype=np.float64) ** 2).sum())))
