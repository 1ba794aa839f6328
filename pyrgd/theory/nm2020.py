"""Nguyen & Mondelli 2020 (NeurIPS), Theorem 3.2: the quantities only, with NO verdict.

docs/theory.md section 4.3 is [unavailable]: the theorem's setting is pyrgd's (wide first layer, pyramidal tail,
sigma' in [gamma, 1]) and its quantities are lambda_F = sigma_min(F_1^0), lambda_l = sigma_min(W_l^0) (l >= 3) and the
spectral norms of W_l^0, but its exact constants could not be read. This module exposes those quantities and the PL
certificate of docs/theory.md section 4.1 (computed by :func:`pyrgd.tracking.certificate`, not re-implemented) and
never states whether the theorem's conditions hold.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..tracking import certificate
from ._common import check_net, net_inputs, spectral_norm

__all__ = ["NM2020Quantities", "nm2020_quantities"]

NO_VERDICT = ("Nguyen & Mondelli 2020, Theorem 3.2: the exact constants are unavailable (docs/theory.md section 4.3); "
              "these are its quantities and the PL constant of docs/theory.md section 4.1, with no verdict on whether "
              "the theorem applies")


@dataclass
class NM2020Quantities:
    """lambda_F = sigma_min(F_1^0); lambda_l = {l: sigma_min(W_l^0)} for l = 3..L; norms = {l: ||W_l^0||_2} for
    l = 1..L; gamma = the lower bound of sigma' (None when the activation has none); mu = the PL constant of
    docs/theory.md section 4.1 (nan when the tail needs a gamma that the activation lacks)."""

    lambda_F: float
    lambda_l: dict
    norms: dict
    gamma: float | None
    mu: float
    note: str = NO_VERDICT
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["lambda_l"] = {str(k): v for k, v in self.lambda_l.items()}
        d["norms"] = {str(k): v for k, v in self.norms.items()}
        return d


def nm2020_quantities(net, X, *, backend="auto") -> NM2020Quantities:
    """The quantities of Nguyen & Mondelli 2020, Thm. 3.2, at the net's current weights (as the initialization).

    [unavailable: docs/theory.md section 4.3 -- no verdict] [derived: docs/theory.md section 4.1 for mu].
    net: a :class:`pyrgd.PyramidalNet`; X (N, d), NumPy or CuPy. lambda_F from the streamed Gram F_1 F_1^T.
    Computed in float64; the scalars are Python floats.
    """
    net = check_net(net)
    _, X64, W = net_inputs(net, X)
    row = certificate(X64, W, W, net.activation, net.multipliers, 0.0, backend)
    L = net.L
    lam = {l: row[f"sigma_min_W{l}"] for l in range(3, L + 1)}
    norms = {1: spectral_norm(W[0]), 2: spectral_norm(W[1])}
    norms.update({l: row[f"norm_W{l}"] for l in range(3, L + 1)})
    return NM2020Quantities(lambda_F=row["sigma_min_F1"], lambda_l=lam, norms=norms,
                            gamma=net.activation.derivative_lower_bound, mu=row["mu"],
                            extra={"multipliers": list(net.multipliers), "widths": list(net.widths)})
