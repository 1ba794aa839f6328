"""The PL certificate of docs/theory.md section 4.1, at a network's current weights and along a training trajectory.

docs/theory.md section 4.1 [derived]. For a pyramidal net (n_1 >= N, n_2 >= ... >= n_L) whose activation has
sigma' >= gamma > 0 (any activation when L = 2):
  ||grad_{W_2} Phi||_F >= sigma_min(F_1) prod_{l=3}^{L} (gamma a_{l-1} sigma_min(W_l)) ||F_L - Y||_F,
so ||grad Phi||^2 >= 2 mu_k Phi(theta_k) with the PL constant
  mu_k = (sigma_min(F_1) prod_{l=3}^{L} gamma a_{l-1} sigma_min(W_l))^2,
and, for a step size eta below 1/(local smoothness), Phi_{k+1} <= (1 - eta mu_k) Phi_k.

This module does not re-implement the formula: :func:`pl_certificate` calls the tracker's own
:func:`pyrgd.tracking.certificate` (sigma_min(F_1) from the streamed Gram F_1 F_1^T), so the certificate reported
here, by ``pyrgd certify`` and by ``pyrgd.train`` every ``track_every`` steps is one computation.
:func:`pl_trajectory` lines the tracker's certificates of a :class:`pyrgd.train.TrainResult` up with the step that
each one bounds: the certificate computed from the weights at step k bounds Phi_{k+1}/Phi_k.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .._validate import check_scalar
from ..errors import PyrgdError
from ..tracking import certificate
from ._common import check_net, net_inputs

__all__ = ["PLCertificate", "pl_certificate", "pl_trajectory"]


@dataclass
class PLCertificate:
    """The result of :func:`pl_certificate`.

    available: mu is defined (L = 2, or the activation has sigma' >= gamma > 0); ``reason`` says why not.
    mu: the PL constant (nan when unavailable); sigma_min_F1; tail_sigma_min = {l: sigma_min(W_l)} and
    tail_norm = {l: ||W_l||_2} for l = 3..L; gamma (None when the activation has no positive lower bound of
    sigma'); lr (None when not given); certified_factor = 1 - lr mu (None without lr or mu).
    """

    available: bool
    mu: float
    sigma_min_F1: float
    tail_sigma_min: dict
    tail_norm: dict
    gamma: float | None
    lr: float | None
    certified_factor: float | None
    reason: str | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["tail_sigma_min"] = {str(k): v for k, v in self.tail_sigma_min.items()}
        d["tail_norm"] = {str(k): v for k, v in self.tail_norm.items()}
        return d


def pl_certificate(net, X, lr=None, *, backend="auto") -> PLCertificate:
    """mu_k and the certified factor 1 - lr mu_k at the net's current weights [derived: docs/theory.md section 4.1].

    net: a :class:`pyrgd.PyramidalNet`; X (N, d), NumPy or CuPy; lr: a positive step size (optional).
    Computed in float64 by :func:`pyrgd.tracking.certificate`, the tracker's function. The factor is a guarantee
    only while lr is below 1/(local smoothness) of Phi; this function does not check that.
    """
    net = check_net(net)
    if lr is not None:
        lr = check_scalar("lr", lr, positive=True)
    _, X64, W = net_inputs(net, X)
    row = certificate(X64, W, W, net.activation, net.multipliers, 0.0 if lr is None else lr, backend)
    L = net.L
    mu = row["mu"]
    ok = math.isfinite(mu)
    reason = None if ok else (f"for L >= 3 the bound needs sigma' >= gamma > 0, which {net.activation} lacks "
                              "(leaky_relu, smooth_leaky_relu or identity have it)")
    return PLCertificate(available=ok, mu=mu, sigma_min_F1=row["sigma_min_F1"],
                         tail_sigma_min={l: row[f"sigma_min_W{l}"] for l in range(3, L + 1)},
                         tail_norm={l: row[f"norm_W{l}"] for l in range(3, L + 1)},
                         gamma=net.activation.derivative_lower_bound, lr=lr,
                         certified_factor=(1.0 - lr * mu) if (ok and lr is not None) else None, reason=reason)


def pl_trajectory(result) -> list:
    """The PL certificates recorded along a training run, each beside the step it bounds
    [derived: docs/theory.md section 4.1].

    result: the :class:`pyrgd.train.TrainResult` of a run with ``track_every > 0``. One dict per tracked step k
    that was followed by a step: step k, loss Phi_k, mu (mu_k), certified_factor (1 - lr mu_k), observed_factor
    (Phi_{k+1}/Phi_k, the step that the certificate of step k bounds), and holds (observed <= certified; None
    when mu_k is unavailable). A step where ``holds`` is False means that lr was not below 1/(local smoothness)
    there (the certificate's assumption), not an error in mu.
    """
    hist = getattr(result, "history", None)
    certs = getattr(result, "certificates", None)
    if not isinstance(hist, dict) or not isinstance(certs, dict) or "loss" not in hist:
        raise PyrgdError(f"result: expected the TrainResult of pyrgd.train, got {type(result).__name__}")
    if not certs.get("step"):
        raise PyrgdError("result: the run recorded no certificates (train it with track_every > 0)")
    loss, steps = hist["loss"], hist["step"]
    index = {k: i for i, k in enumerate(steps)}
    rows = []
    for j, k in enumerate(certs["step"]):
        i = index.get(k)
        if i is None or i + 1 >= len(loss):
            continue
        mu, cf = certs["mu"][j], certs["certified_factor"][j]
        obs = loss[i + 1] / loss[i] if loss[i] > 0 else float("nan")
        ok = math.isfinite(mu) and math.isfinite(cf)
        rows.append({"step": k, "loss": loss[i], "mu": mu, "certified_factor": cf if ok else None,
                     "observed_factor": obs, "holds": bool(obs <= cf) if ok and math.isfinite(obs) else None})
    return rows
