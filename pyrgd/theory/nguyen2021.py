"""Nguyen 2021 (arXiv 2101.09612v3), Theorem 2.2: the convergence certificate at initialization.

docs/theory.md section 4.2 [paper]. ReLU network with a wide LAST hidden layer (n_{L-1} >= N), multipliers a_l = 1.
Pick C_l > 0 (the paper's applications use C_l = 1) and write
  alpha_0 = sigma_min(F_{L-1}^0),  lbar_l = ||W_l^0||_2 + C_l,  lbar_{i->j} = prod_{l=i}^{j} lbar_l,
  Phi_0 = 1/2 ||F_L^0 - Y||_F^2.
  (initW) alpha_0^2 >= 16 ||X||_F max_{l=1..L} [ lbar_{1->L} / (lbar_l C_l) ] sqrt(2 Phi_0)
  (initF) alpha_0^3 >= 32 ||X||_F^2 lbar_L sum_{l=1}^{L-1} [ lbar_{1->L-1}^2 / lbar_l^2 ] sqrt(2 Phi_0)
  (initS) alpha_0^2 >= 16 ||X||_F^2 lbar_L^2 sum_{l=1}^{L-1} [ lbar_{1->L-1}^2 / lbar_l^2 ]
  eta < min( 8 / alpha_0^2 , ||X||_F^-2 lbar_{1->L}^-2 [sum_{l<=L-1} lbar_l^-2] [sum_{l<=L} lbar_l^-2]^-2 )
Then Phi_k <= (1 - eta alpha_0^2 / 8)^k Phi_0.

For pyrgd's wide FIRST layer the theorem applies as stated when L = 2 (then F_{L-1} = F_1 = sigma(X W_1) and
F_L = F_1 W_2). For L > 2 the quantities are evaluated all the same; unless the last hidden layer is itself at least
N wide (a non-pyramidal tail) the result says that the theorem does not apply and why.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .. import ops
from .._validate import check_scalar
from ..errors import PyrgdError
from ..tail import tail_forward
from ..tracking import smallest_singular_value_from_gram
from ._common import check_net, check_targets, frobenius, net_inputs, spectral_norm, to_host

__all__ = ["Condition", "Nguyen2021Certificate", "nguyen2021_certificate"]


@dataclass(frozen=True)
class Condition:
    """One inequality lhs >= rhs of the theorem; margin = lhs / rhs (>= 1 when it holds; inf when rhs = 0)."""

    name: str
    lhs: float
    rhs: float
    margin: float
    holds: bool


@dataclass
class Nguyen2021Certificate:
    """The result of :func:`nguyen2021_certificate`.

    applies: the theorem's assumptions hold (relu, all a_l = 1, n_{L-1} >= N); ``reasons`` says why not.
    holds: applies, all three conditions hold and (when eta was given) eta < eta_max: then the loss is certified to
      shrink at least by ``rate_factor`` per step.
    alpha_0, lbar (lbar_1..lbar_L), C (C_1..C_L), norm_X (||X||_F), loss_0 (Phi_0), conditions (initW, initF,
    initS), eta_max (the right-hand side of the step-size condition, a strict bound), eta (the one given, or None),
    eta_ok, rate_factor = 1 - eta alpha_0^2 / 8 at the given eta, or at eta_max when none was given.
    """

    applies: bool
    holds: bool
    reasons: list
    alpha_0: float
    lbar: tuple
    C: tuple
    norm_X: float
    loss_0: float
    conditions: dict
    eta_max: float
    eta: float | None
    eta_ok: bool | None
    rate_factor: float
    L: int
    N: int
    notes: list = field(default_factory=list)

    def as_dict(self) -> dict:
        """Plain JSON-friendly values."""
        d = asdict(self)
        d["lbar"], d["C"] = list(self.lbar), list(self.C)
        return d


def _per_layer(name, C, L):
    if isinstance(C, (list, tuple, np.ndarray)):
        vals = list(C)
        if len(vals) != L:
            raise PyrgdError(f"{name}: expected one value per layer ({L}), got {len(vals)}")
        return tuple(check_scalar(f"{name}[{i}]", v, positive=True) for i, v in enumerate(vals))
    return (check_scalar(name, C, positive=True),) * L


def _condition(name, lhs, rhs):
    margin = lhs / rhs if rhs > 0 else math.inf
    return Condition(name, float(lhs), float(rhs), float(margin), bool(lhs >= rhs))


def nguyen2021_certificate(net, X, Y, C=1.0, eta=None, *, backend="auto") -> Nguyen2021Certificate:
    """The three initial conditions, the step-size bound and the rate of Nguyen 2021, Theorem 2.2, at the net's
    current weights (taken as the initialization W^0).

    [paper: Nguyen 2021, arXiv 2101.09612v3, Thm. 2.2; docs/theory.md section 4.2] -- formulas in the module docstring.
    net: a :class:`pyrgd.PyramidalNet`; X (N, d); Y (N, n_L); C: C_l > 0, one float or one per layer (L values);
    eta: a step size to certify (optional). alpha_0 comes from the streamed Gram F_1 F_1^T (pyrgd.ops.wide_gram) when
    L = 2, from F_{L-1} of the tail otherwise. Everything in float64. The theorem is stated for relu; other
    activations and multipliers a_l != 1 are evaluated anyway, with ``applies=False`` and the reason.
    """
    net = check_net(net)
    xp, X64, W = net_inputs(net, X)
    N, L = X64.shape[0], net.L
    Y64 = check_targets(Y, N, net.widths[-1], xp)
    Cs = _per_layer("C", C, L)
    if eta is not None:
        eta = check_scalar("eta", eta, positive=True)
    act, mult = net.activation, net.multipliers

    reasons = []
    if act.name != "relu":
        reasons.append(f"the theorem is stated for relu; the activation is {act}")
    if any(a != 1.0 for a in mult):
        reasons.append(f"the theorem assumes the standard parameterization (all a_l = 1); multipliers are {mult}")
    n_last = net.dims[L - 1]
    if n_last < N:
        reasons.append(f"the last hidden layer must be at least N = {N} wide (n_{L - 1} >= N); n_{L - 1} = {n_last}"
                       + (" (pyrgd's wide layer is the first one, so this needs L = 2)" if L > 2 else ""))

    Hw = ops.wide_forward(X64, W[0], W[1], activation=act, a1=mult[0], backend=backend)
    cache = tail_forward(Hw, W, act, mult)
    loss_0 = 0.5 * frobenius(cache[-1] - Y64) ** 2
    if L == 2:
        alpha = smallest_singular_value_from_gram(
            ops.wide_gram(X64, W[0], activation=act, a1=mult[0], backend=backend))
    elif n_last < N:
        alpha = 0.0  # rank(F_{L-1}) <= n_{L-1} < N
    else:
        F = np.asarray(to_host(cache[2 * L - 5]), dtype=np.float64)  # F_{L-1}
        alpha = float(np.linalg.svd(F, compute_uv=False)[-1])

    lbar = tuple(spectral_norm(w) + c for w, c in zip(W, Cs))
    p_all = math.prod(lbar)
    p_hid = math.prod(lbar[:-1])
    nX = frobenius(X64)
    r = math.sqrt(2.0 * loss_0)
    s_hid = sum(p_hid ** 2 / lb ** 2 for lb in lbar[:-1])
    conds = {
        "initW": _condition("initW", alpha ** 2, 16 * nX * max(p_all / (lb * c) for lb, c in zip(lbar, Cs)) * r),
        "initF": _condition("initF", alpha ** 3, 32 * nX ** 2 * lbar[-1] * s_hid * r),
        "initS": _condition("initS", alpha ** 2, 16 * nX ** 2 * lbar[-1] ** 2 * s_hid),
    }
    S1 = sum(lb ** -2 for lb in lbar[:-1])
    S2 = sum(lb ** -2 for lb in lbar)
    eta_max = min(8.0 / alpha ** 2 if alpha > 0 else math.inf, nX ** -2 * p_all ** -2 * S1 * S2 ** -2)
    eta_ok = None if eta is None else bool(eta < eta_max)
    rate = 1.0 - (eta if eta is not None else eta_max) * alpha ** 2 / 8.0
    applies = not reasons
    holds = applies and all(c.holds for c in conds.values()) and eta_ok is not False
    notes = []
    if eta is None:
        notes.append("rate_factor is evaluated at eta_max, a strict upper bound: every eta < eta_max certifies "
                     "1 - eta alpha_0^2 / 8")
    return Nguyen2021Certificate(applies=applies, holds=holds, reasons=reasons, alpha_0=alpha, lbar=lbar, C=Cs,
                                 norm_X=nX, loss_0=loss_0, conditions=conds, eta_max=eta_max, eta=eta, eta_ok=eta_ok,
                                 rate_factor=rate, L=L, N=N, notes=notes)
