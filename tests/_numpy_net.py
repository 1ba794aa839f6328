"""A plain NumPy network of pyrgd's model with tanh, for reference loops in the tests of the training hooks.

Written from docs/theory.md section 1 without pyrgd's code: Z_l = F_{l-1} W_l, F_l = a_l tanh(Z_l) for the hidden
layers, F_L = Z_L; the backward pass from D_L = dloss/dF_L.
"""
import numpy as np


def forward(X, W, mult):
    """[F_0 = X, F_1, ..., F_L] and [Z_1, ..., Z_L]."""
    F, Z = [X], []
    for l, w in enumerate(W):
        z = F[-1] @ w
        Z.append(z)
        F.append(mult[l] * np.tanh(z) if l < len(W) - 1 else z)
    return F, Z


def backward(F, Z, W, mult, D):
    """[dloss/dW_1, ..., dloss/dW_L] from D = dloss/dF_L."""
    grads = [None] * len(W)
    for l in range(len(W) - 1, -1, -1):
        grads[l] = F[l].T @ D
        if l > 0:
            D = mult[l - 1] * (D @ W[l].T) * (1.0 - np.tanh(Z[l - 1]) ** 2)
    return grads


def squared(F, Y):
    D = F - Y
    return 0.5 * float((D * D).sum()), D


def cross_entropy(F, Y):
    Z = F - F.max(axis=1, keepdims=True)
    logp = Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))
    return float(-(Y * logp).sum()), np.exp(logp) - Y


def reference_losses(X, Y, W, mult, lr, steps, beta=0.0, nesterov=False, loss=squared):
    """The losses Phi_0..Phi_steps of heavy-ball (or Nesterov) momentum with v_0 = 0 (beta = 0: plain GD)."""
    W = [w.copy() for w in W]
    v = [np.zeros_like(w) for w in W]
    out = []
    for k in range(steps + 1):
        F, Z = forward(X, W, mult)
        phi, D = loss(F[-1], Y)
        out.append(phi)
        if k == steps:
            break
        g = backward(F, Z, W, mult, D)
        for l in range(len(W)):
            v[l] = beta * v[l] + g[l]
            W[l] -= lr * (g[l] + beta * v[l] if nesterov else v[l])
    return np.array(out), W
