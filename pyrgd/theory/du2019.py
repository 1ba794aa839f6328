"""Du, Lee, Li, Wang, Zhai 2019 (ICML; arXiv 1811.03804v4): c_sigma, the Gram recursion of Definition 5.1, lambda_0.

docs/theory.md section 4.4 [paper]. Setting: every hidden layer has width m,
x^(h) = sqrt(c_sigma/m) sigma(W^(h) x^(h-1)), f = a^T x^(H), weights N(0, 1), ||x_i|| = 1,
c_sigma = 1 / E_{z~N(0,1)}[sigma(z)^2];
  K^(0)_ij = <x_i, x_j>,
  A^(h)_ij = [[K^(h-1)_ii, K^(h-1)_ij], [K^(h-1)_ji, K^(h-1)_jj]],
  K^(h)_ij = c_sigma E_{(u,v) ~ N(0, A^(h)_ij)}[sigma(u) sigma(v)]                      for h = 1..H-1,
  K^(H)_ij = c_sigma K^(H-1)_ij E_{(u,v) ~ N(0, A^(H-1)_ij)}[sigma'(u) sigma'(v)],
  lambda_0 = lambda_min(K^(H)); the rate is L(theta(k)) <= (1 - eta lambda_0 / 2)^k L(theta(0)).

NOTE on A^(H-1): the last line as printed in the paper uses A^(H-1), the covariance built from K^(H-2)
(``last_layer_cov="paper"``). The pre-activations of layer H have covariance K^(H-1) (that is A^(H)), which
``last_layer_cov="natural"``, the default, uses instead [derived]: Du et al.'s own derivation of the limit of the
last layer's Gram leads to it, and finite-width networks converge to it (docs/theory.md section 4.4; experiment E3;
tests/test_theory.py). For H = 1 the printed A^(0) would need K^(-1), which the recursion does not define; both
variants then use A^(1) (built from K^(0)), the covariance of the first layer's pre-activations.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._validate import check_float_array, check_positive_int
from ..activations import Activation, parse_activation
from ..errors import PyrgdError
from .gaussian import gaussian_expectation_1d, gaussian_gram, relu_closed_form

__all__ = ["c_sigma", "du_gram", "du_lambda0", "DuGram", "relu_closed_form", "LAST_LAYER_COV"]

#: the two readings of the covariance in the last line of the recursion (see the module docstring); the first is the
#: default
LAST_LAYER_COV = ("natural", "paper")


def c_sigma(act, *, order: int = 256) -> float:
    """c_sigma = 1 / E_{z~N(0,1)}[sigma(z)^2]  [paper: Du et al. 2019, Sec. 3; docs/theory.md section 4.4].

    E by the 1-D Gauss-Hermite rule of ``order`` nodes: exact for relu (2), leaky_relu (2 / (1 + gamma^2)) and
    identity (1); spectrally accurate for the smooth activations.
    """
    act = parse_activation(act)
    m2 = gaussian_expectation_1d(act, 1.0, power=2, order=order)
    if not m2 > 0:
        raise PyrgdError(f"act: E[sigma(z)^2] = {m2} is not positive for {act}")  # pragma: no cover
    return 1.0 / m2


@dataclass
class DuGram:
    """The result of :func:`du_gram`.

    K: [K^(0), ..., K^(H)], each (N, N) float64 (only [K^(H)] when ``keep_all=False``). lambda_0 = lambda_min(K^(H)).
    """

    K: list
    lambda_0: float
    c_sigma: float
    H: int
    activation: Activation
    method: str
    last_layer_cov: str
    notes: list = field(default_factory=list)

    @property
    def K_H(self) -> np.ndarray:
        return self.K[-1]


def du_gram(X, H: int, act, *, method: str = "auto", order: int | None = None, last_layer_cov: str = "natural",
            keep_all: bool = True) -> DuGram:
    """The Gram recursion K^(0..H) of Du et al. 2019, Definition 5.1, and lambda_0 = lambda_min(K^(H)).

    [paper: Du et al. 2019 (arXiv 1811.03804v4) Def. 5.1; docs/theory.md section 4.4] -- see the module docstring,
    including the note on A^(H-1): ``last_layer_cov`` is "natural" (the default, A^(H) from K^(H-1)) or "paper"
    (A^(H-1) from K^(H-2), as printed). X: (N, d) NumPy float array, used in float64 (the paper assumes
    ||x_i|| = 1; other norms are accepted and give the recursion's value). H >= 1: the number of hidden layers.
    act: any pyrgd activation. method, order: how the Gaussian expectations are computed
    (:func:`pyrgd.theory.gaussian.gaussian_gram`; ``auto`` is exact for relu, leaky_relu, identity and the Hermite
    series otherwise). Returns a :class:`DuGram` (each K^(h) (N, N) float64).
    Cost: H Gaussian Grams of N^2/2 pairs plus one N x N eigenvalue problem.
    """
    X = check_float_array("X", X, 2)
    if not isinstance(X, np.ndarray):
        raise PyrgdError("X: du_gram runs on the host; pass a numpy array (cupy: X.get())")
    H = check_positive_int("H", H)
    act = parse_activation(act)
    if last_layer_cov not in LAST_LAYER_COV:
        raise PyrgdError(f"last_layer_cov: expected one of {', '.join(LAST_LAYER_COV)}, got {last_layer_cov!r}")
    cs = c_sigma(act)
    X64 = X.astype(np.float64, copy=False)
    Ks = [X64 @ X64.T]
    notes = []
    for _ in range(1, H):  # K^(h) = c_sigma E_{A^(h)}[sigma sigma], A^(h) from K^(h-1)
        Ks.append(cs * gaussian_gram(Ks[-1], act, method=method, order=order))
    # K^(H) = c_sigma K^(H-1) (.) E_{A}[sigma' sigma'] with A = A^(H-1) (paper, from K^(H-2)) or A^(H) (from K^(H-1))
    if last_layer_cov == "paper" and H >= 2:
        cov = Ks[-2]
    else:
        cov = Ks[-1]
        if H == 1:
            notes.append("H = 1: A^(0) of the printed recursion is undefined; A^(1) (from K^(0)) was used")
    Ks.append(cs * Ks[-1] * gaussian_gram(cov, act, derivative=True, method=method, order=order))
    lam = float(np.linalg.eigvalsh(Ks[-1])[0])
    if not keep_all:
        Ks = [Ks[-1]]
    used = method if method != "auto" else ("closed_form" if act.name in ("relu", "leaky_relu", "identity")
                                             else "series")
    return DuGram(K=Ks, lambda_0=lam, c_sigma=cs, H=H, activation=act, method=used, last_layer_cov=last_layer_cov,
                  notes=notes)


def du_lambda0(X, H: int, act, **kwargs) -> float:
    """lambda_0 = lambda_min(K^(H)) of :func:`du_gram` [paper: Du et al. 2019, Def. 5.1 / Thm. 5.1]."""
    kwargs.setdefault("keep_all", False)
    return du_gram(X, H, act, **kwargs).lambda_0
