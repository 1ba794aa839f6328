"""Convergence certificates at initialization, gathered in one report (``pyrgd certify``).

:func:`certify` evaluates, at a network's current weights taken as the initialization W^0, every quantity of
docs/theory.md sections 4 and 5 that pyrgd can compute, and :func:`format_certificate` prints them as a table:

- the wide layer: sigma_min(F_1) (from the streamed Gram F_1 F_1^T), ||W_1||_2, ||W_2||_2; the tail:
  sigma_min(W_l) and ||W_l||_2 for l = 3..L  [via :func:`pyrgd.theory.nm2020_quantities`, which uses the tracker's
  :func:`pyrgd.tracking.certificate`];
- the PL constant mu_0 and, for a step size lr, the certified factor 1 - lr mu_0 [derived; docs/theory.md
  section 4.1];
- Nguyen 2021, Theorem 2.2: whether it applies, its three conditions with lhs, rhs, margin lhs/rhs and whether
  each holds, the step-size bound eta_max and the guaranteed factor 1 - eta alpha_0^2/8 [paper; docs/theory.md
  section 4.2];
- Nguyen & Mondelli 2020, Theorem 3.2: its quantities only, with NO verdict (its constants are unavailable,
  docs/theory.md section 4.3);
- the empirical NTK's lambda_min and lambda_max when n_L = 1 [derived; docs/theory.md section 5];
- Du et al. 2019's lambda_0 = lambda_min(K^(H)) for the data, with H = L - 1 hidden layers and the net's
  activation, when the inputs have unit norm (their setting); otherwise the report says why it is left out
  [paper; docs/theory.md section 4.4], under both readings of the covariance in the last line of Definition 5.1,
  labelled: ``lambda_0`` is the natural one (the default of :func:`pyrgd.theory.du_gram`, the one finite-width
  networks converge to), ``readings`` holds both. It describes the data, depth and activation in Du et al.'s
  parameterization (every hidden layer of width m, multipliers sqrt(c_sigma/m), N(0, 1) weights), not this net's
  initialization.

Each heading of the printed table names the section of docs/theory.md that states its formulas.

Everything is computed in float64 whatever the net's dtype. Nothing is certified about training that goes beyond
what each theorem states: the PL factor holds while lr is below 1/(local smoothness); Theorem 2.2's factor holds
when its three conditions hold and eta < eta_max.
"""
from __future__ import annotations

import math

import numpy as np

from ._validate import check_float_array
from .errors import PyrgdError

__all__ = ["certify", "format_certificate", "UNIT_NORM_RTOL"]

#: inputs count as unit-norm (Du et al.'s setting) when every | ||x_i|| - 1 | is below this
UNIT_NORM_RTOL = 1e-6


def _resolve_lr(net, X, lr, backend):
    """(lr as a float or None, how it was chosen). "auto" is the rule of docs/theory.md section 5
    (:mod:`pyrgd.lr_rule`)."""
    if lr is None:
        return None, None
    if isinstance(lr, str):
        if lr.strip().lower() != "auto":
            raise PyrgdError(f"lr: expected a positive number, 'auto' or None, got {lr!r}")
        from . import ops
        from .lr_rule import AUTO_LR_FRACTION, AUTO_LR_RULE, estimate_lambda_max

        X64 = np.ascontiguousarray(X, dtype=np.float64)
        W = [np.ascontiguousarray(w, dtype=np.float64) for w in net.weights]
        be = ops.resolve_backend(backend, np)
        lam = estimate_lambda_max(X64, W, net.activation, net.multipliers, be)
        if not (lam > 0 and math.isfinite(lam)):
            raise PyrgdError(f"lr: 'auto' could not estimate the curvature (lambda_max of the NTK is {lam!r}); "
                             "give lr explicitly")
        return AUTO_LR_FRACTION / lam, f"auto: {AUTO_LR_RULE}"
    from ._validate import check_scalar

    return check_scalar("lr", lr, positive=True), "given"


def certify(net, X, Y, lr=None, *, C=1.0, ntk=True, du=True, backend="auto") -> dict:
    """The certificates at initialization of ``net`` on (X, Y), as a JSON-friendly dict.

    Parameters
    ----------
    net : pyrgd.PyramidalNet, whose current weights are taken as W^0.
    X, Y : NumPy arrays (N, d) and (N, n_L), float32 or float64 (used in float64).
    lr : None, a positive float, or "auto" (the step size ``pyrgd.train(lr="auto")`` would choose:
        0.5/lambda_max of the empirical NTK). With a step size the report adds the PL-certified factor
        1 - lr mu_0 and checks lr against Theorem 2.2's bound; with None Theorem 2.2's factor is given at eta_max.
    C : Nguyen 2021's constants C_l > 0 (one float, or one per layer; the paper's applications use 1).
    ntk, du : compute the empirical NTK's eigenvalues (n_L = 1 only) / Du et al.'s lambda_0 (unit-norm inputs only).
    backend : the wide-layer backend ("auto", "cpu", "reference").

    Returns
    -------
    dict with the keys ``problem``, ``lr``, ``lr_rule``, ``loss_0``, ``wide_layer``, ``tail``, ``pl``,
    ``nguyen2021``, ``nm2020``, ``ntk``, ``du2019`` (see the module docstring; the sources of each formula are in
    :mod:`pyrgd.theory`).
    """
    from .model import PyramidalNet
    from .theory import du_gram, nguyen2021_certificate, nm2020_quantities
    from .theory.ntk import empirical_ntk

    if not isinstance(net, PyramidalNet):
        raise PyrgdError(f"net: expected a pyrgd.PyramidalNet, got {type(net).__name__}")
    X = check_float_array("X", X, 2, shape=(None, net.d))
    if not isinstance(X, np.ndarray):
        raise PyrgdError("X: certify runs on the host; pass numpy arrays (cupy: X.get())")
    N = X.shape[0]
    Y = check_float_array("Y", Y, 2, shape=(N, net.widths[-1]), xp=np)
    for name, flag in (("ntk", ntk), ("du", du)):
        if not isinstance(flag, bool):
            raise PyrgdError(f"{name}: expected True or False, got {flag!r}")
    lr_value, lr_rule = _resolve_lr(net, X, lr, backend)
    act, L = net.activation, net.L

    q = nm2020_quantities(net, X, backend=backend)
    gamma = q.gamma
    mu = q.mu
    pl_ok = math.isfinite(mu)
    if pl_ok:
        pl_note = ("mu_0 = sigma_min(F_1)^2 (L = 2, any activation)" if L == 2 else
                   "mu_0 = (sigma_min(F_1) prod_{l>=3} gamma a_{l-1} sigma_min(W_l))^2")
        if lr_value is not None:
            pl_note += "; 1 - lr mu_0 is certified while lr is below 1/(local smoothness)"
    else:
        pl_note = (f"unavailable: for L >= 3 the PL bound needs sigma' >= gamma > 0, which {act} lacks "
                   "(use leaky_relu, smooth_leaky_relu or identity)")
    pl = {
        "available": pl_ok,
        "gamma": gamma,
        "mu_0": mu if pl_ok else None,
        "certified_factor": (1.0 - lr_value * mu) if (pl_ok and lr_value is not None) else None,
        "note": pl_note,
    }

    cert = nguyen2021_certificate(net, X, Y, C=C, eta=lr_value, backend=backend)
    ng = cert.as_dict()
    ng["conditions"] = {k: dict(v) for k, v in ng["conditions"].items()}
    ng["verdict"] = _nguyen_verdict(cert)

    res = {
        "problem": {"N": N, "d": net.d, "widths": list(net.widths), "L": L, "activation": str(act),
                    "init": net.init, "dtype": net.dtype.name, "multipliers": list(net.multipliers),
                    "n_params": net.n_params},
        "lr": lr_value,
        "lr_rule": lr_rule,
        "loss_0": cert.loss_0,
        "wide_layer": {"sigma_min_F1": q.lambda_F, "norm_W1": q.norms[1], "norm_W2": q.norms[2],
                       "n1_at_least_N": net.widths[0] >= N},
        "tail": [{"layer": l, "sigma_min": q.lambda_l[l], "norm": q.norms[l]} for l in range(3, L + 1)],
        "pl": pl,
        "nguyen2021": ng,
        "nm2020": q.as_dict(),
    }

    if not ntk:
        res["ntk"] = {"available": False, "reason": "skipped (ntk=False, --no-ntk)"}
    elif net.widths[-1] != 1:
        res["ntk"] = {"available": False,
                      "reason": f"the empirical NTK is computed for single-output nets (n_L = 1); n_L = "
                                f"{net.widths[-1]}"}
    else:
        K = empirical_ntk(net, X, backend=backend)
        ev = np.linalg.eigvalsh(np.asarray(K))
        res["ntk"] = {"available": True, "lambda_min": float(ev[0]), "lambda_max": float(ev[-1]),
                      "lr_times_lambda_max": (lr_value * float(ev[-1])) if lr_value is not None else None}

    res["du2019"] = _du_entry(X, L, act, du, du_gram)
    return res


def _nguyen_verdict(cert) -> str:
    if not cert.applies:
        return "does not apply: " + "; ".join(cert.reasons)
    failed = [k for k, c in cert.conditions.items() if not c.holds]
    if failed:
        return "applies, but " + ", ".join(failed) + (" fails" if len(failed) == 1 else " fail") + \
            " at this initialization: no certificate"
    if cert.eta_ok is False:
        return f"the conditions hold, but lr = {cert.eta:.4g} is not below eta_max = {cert.eta_max:.4g}"
    if cert.eta is None:
        return (f"certified for every eta < eta_max: Phi_k <= (1 - eta alpha_0^2/8)^k Phi_0 "
                f"(factor {cert.rate_factor:.6g} as eta -> eta_max)")
    return f"certified: Phi_k <= {cert.rate_factor:.6g}^k Phi_0 at lr = {cert.eta:.4g}"


def _du_entry(X, L, act, wanted, du_gram) -> dict:
    H = L - 1
    if not wanted:
        return {"available": False, "H": H, "reason": "skipped (du=False, --no-du)"}
    norms = np.linalg.norm(X.astype(np.float64, copy=False), axis=1)
    dev = float(np.max(np.abs(norms - 1.0)))
    if dev > UNIT_NORM_RTOL:
        return {"available": False, "H": H,
                "reason": (f"Du et al. 2019 assume unit-norm inputs (||x_i|| = 1); these have norms in "
                           f"[{norms.min():.4g}, {norms.max():.4g}] (synthetic data: inputs = 'sphere')")}
    g = du_gram(X, H, act, last_layer_cov="natural", keep_all=False)
    gp = du_gram(X, H, act, last_layer_cov="paper", keep_all=False)
    notes = list(g.notes) + [
        "in Du et al.'s parameterization (every hidden layer of width m, multipliers sqrt(c_sigma/m), N(0, 1) "
        "weights); it describes the data, the depth and the activation, not this net's initialization"]
    return {"available": True, "H": H, "lambda_0": g.lambda_0, "c_sigma": g.c_sigma, "method": g.method,
            "last_layer_cov": g.last_layer_cov,
            "readings": {"natural": g.lambda_0, "paper": gp.lambda_0},
            "notes": notes}


#: the labels of the two readings of Definition 5.1's last line in the printed table
DU_READING_LABELS = {"natural": ("lambda_0, natural (default)", "A^(H) from K^(H-1), the finite-width limit"),
                     "paper": ("lambda_0, as printed", "A^(H-1) from K^(H-2), Def. 5.1 as printed")}


# --------------------------------------------------------------------------------------------- the table
def _f(v, spec=".4g"):
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return format(x, spec)


def _row(name, value, width=30):
    return f"  {name:<{width}} {value}"


def format_certificate(d: dict) -> str:
    """A readable, multi-line table of a :func:`certify` result (or of its JSON round trip)."""
    if not isinstance(d, dict) or "problem" not in d:
        raise PyrgdError("d: expected the dict returned by pyrgd.certify.certify")
    p = d["problem"]
    out = ["pyrgd certificate at initialization",
           _row("problem", f"N = {p['N']}, d = {p['d']}, widths = {p['widths']}, L = {p['L']}"),
           _row("network", f"{p['activation']}, init = {p['init']}, {p['dtype']}, a = {p['multipliers']}")]
    lr = d.get("lr")
    out.append(_row("step size lr", "not given" if lr is None else f"{_f(lr, '.6g')} ({d.get('lr_rule')})"))
    out.append(_row("initial loss Phi_0", _f(d.get("loss_0"), ".6g")))

    w = d["wide_layer"]
    out += ["", "Wide layer and tail (docs/theory.md 4.1, 4.3)",
            _row("sigma_min(F_1)", _f(w["sigma_min_F1"], ".6g")
                 + ("" if w.get("n1_at_least_N", True) else "   (n_1 < N: F_1 cannot have full row rank)")),
            _row("||W_1||_2, ||W_2||_2", f"{_f(w['norm_W1'])}, {_f(w['norm_W2'])}")]
    for t in d.get("tail", []):
        out.append(_row(f"W_{t['layer']}: sigma_min, ||.||_2", f"{_f(t['sigma_min'])}, {_f(t['norm'])}"))

    pl = d["pl"]
    out += ["", "PL certificate (docs/theory.md 4.1, derived)"]
    if pl["available"]:
        out.append(_row("mu_0", _f(pl["mu_0"], ".6g")))
        if pl.get("gamma") is not None:
            out.append(_row("gamma (sigma' >= gamma)", _f(pl["gamma"])))
        out.append(_row("certified factor 1 - lr mu_0", _f(pl.get("certified_factor"), ".10g")
                        if pl.get("certified_factor") is not None else "n/a (no lr)"))
    out.append(_row("note", pl["note"]))

    ng = d["nguyen2021"]
    out += ["", "Nguyen 2021, Theorem 2.2 (relu, n_{L-1} >= N; docs/theory.md 4.2, paper)",
            _row("applies", _f(ng["applies"]) + ("" if ng["applies"] else ": " + "; ".join(ng["reasons"]))),
            _row("alpha_0 = sigma_min(F_{L-1})", _f(ng["alpha_0"], ".6g")),
            _row("lbar_l = ||W_l||_2 + C_l", ", ".join(_f(v) for v in ng["lbar"]) + f"  (C = {list(ng['C'])})"),
            f"  {'condition':<10} {'lhs':>12} {'rhs':>12} {'margin':>12}  holds"]
    for name, c in ng["conditions"].items():
        out.append(f"  {name:<10} {_f(c['lhs'], '12.4e')} {_f(c['rhs'], '12.4e')} {_f(c['margin'], '12.4e')}  "
                   f"{_f(c['holds'])}")
    out.append(_row("eta_max (eta < eta_max)", _f(ng["eta_max"], ".6g")))
    if ng.get("eta") is not None:
        out.append(_row("lr < eta_max", _f(ng["eta_ok"])))
    out.append(_row("factor 1 - eta alpha_0^2 / 8", _f(ng["rate_factor"], ".10g")
                    + (" (at eta_max)" if ng.get("eta") is None else " (at lr)")))
    out.append(_row("verdict", ng["verdict"]))

    nm = d["nm2020"]
    out += ["", "Nguyen & Mondelli 2020, Theorem 3.2: quantities only (docs/theory.md 4.3, unavailable)",
            _row("lambda_F = sigma_min(F_1^0)", _f(nm["lambda_F"], ".6g"))]
    for l, v in nm["lambda_l"].items():
        out.append(_row(f"lambda_{l} = sigma_min(W_{l}^0)", _f(v)))
    out.append(_row("||W_l^0||_2, l = 1..L", ", ".join(_f(v) for v in nm["norms"].values())))
    out.append(_row("gamma", _f(nm["gamma"])))
    out.append(_row("verdict", "none: the theorem's constants are unavailable"))

    k = d["ntk"]
    out += ["", "Empirical NTK J J^T (docs/theory.md 5, derived)"]
    if k["available"]:
        out.append(_row("lambda_min, lambda_max", f"{_f(k['lambda_min'], '.6g')}, {_f(k['lambda_max'], '.6g')}"))
        if k.get("lr_times_lambda_max") is not None:
            out.append(_row("lr lambda_max", _f(k["lr_times_lambda_max"])))
    else:
        out.append(_row("n/a", k["reason"]))

    du = d["du2019"]
    out += ["", f"Du et al. 2019, lambda_0 = lambda_min(K^(H)), H = {du['H']} (docs/theory.md 4.4, paper)"]
    if du["available"]:
        out.append(_row("c_sigma, method", f"{_f(du['c_sigma'], '.6g')}, {du['method']}"))
        readings = du.get("readings") or {du.get("last_layer_cov", "natural"): du["lambda_0"]}
        for c, v in readings.items():
            label, what = DU_READING_LABELS.get(c, (f"lambda_0, {c}", ""))
            out.append(_row(label, f"{_f(v, '.6g'):<12} ({what})" if what else _f(v, ".6g")))
        for n in du.get("notes", []):
            out.append(_row("note", n))
    else:
        out.append(_row("n/a", du["reason"]))
    return "\n".join(out)
