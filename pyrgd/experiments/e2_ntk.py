"""E2, the smallest eigenvalue of the empirical NTK against N (Nguyen, Mondelli, Montufar 2021, Fig. 2 right).

For each N and trial t: data X (N, d) drawn with seed t (``inputs``: i.i.d. N(0, 1) entries, so ||x_i||^2 ~ d),
a net of widths [width_factor * N, n2, 1] with ``activation`` and ``init`` (the paper: ReLU, He init
(W_l)_ij ~ N(0, 2/n_{l-1})) drawn with seed seed_offset + t, and lambda_min(J J^T) of its empirical NTK at
initialization, from the streamed Gram blocks (:func:`pyrgd.theory.ntk_lambda_min`, docs/theory.md section 5). The
paper proves lambda_min grows linearly in N when one layer is Omega~(N) wide (docs/theory.md section 4.5); the figure
shows mean +- 1 std over the trials and the slope of a least-squares line through the means on log-log axes. For
reference it also shows n_1 lambda_*(N) [derived: docs/theory.md section 4.5], the population scale of
lambda_min(F_1 F_1^T) (lambda_* = lambda_min(E_w[sigma(Xw) sigma(Xw)^T]) for the first layer's init variance,
:func:`pyrgd.theory.lambda_star`, on the data of trial 0): at a fixed d, lambda_* itself falls as N grows, which bends
the curve below linear.

With ``d_over_N`` > 0 the experiment also runs a second regime, the input dimension growing with N
(d = round(d_over_N * N), the same nets otherwise), where lambda_* should stay bounded (N of order d) and the paper's
linear growth show without the bend.

Outputs: E2.csv (per regime and N: mean, std, min, max), E2_trials.csv (every trial), E2.png.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import PyrgdError
from ._common import Param, check_params, fit_loglog, progress_bar, save_figure, write_csv

SPEC = {
    "N": Param("int_list", "sample sizes", lo=1),
    "d": Param("int", "input dimension (the fixed-d regime)", lo=1),
    "d_over_N": Param("float", "the second regime, d = round(d_over_N * N); 0: none", lo=0.0),
    "n2": Param("int", "width of the second layer", lo=1),
    "width_factor": Param("int", "n_1 = width_factor * N", lo=1),
    "trials": Param("int", "trials per N (fresh data and weights)", lo=1),
    "inputs": Param("str", "synthetic inputs: gaussian or sphere"),
    "activation": Param("str", "activation of the hidden layers"),
    "init": Param("str", "initialization scheme"),
    "seed_offset": Param("int", "the weights of trial t use the seed seed_offset + t (the data use t)", lo=0),
}


def check(params) -> dict:
    from ..config import resolve_config

    p = check_params("E2", SPEC, params)
    try:
        resolve_config(overrides={"data": {"inputs": p["inputs"]},
                                  "model": {"activation": p["activation"], "init": p["init"]}})
    except PyrgdError as e:
        raise PyrgdError(f"E2.params: {e}") from None
    return p


def regimes(p, N):
    """[(regime name, d)] at sample size N: the fixed d, and d = round(d_over_N * N) when d_over_N > 0."""
    out = [("fixed_d", p["d"])]
    if p["d_over_N"] > 0:
        out.append(("growing_d", max(1, round(p["d_over_N"] * N))))
    return out


def net_and_data(p, N, trial, d=None):
    """The network and the inputs of trial ``trial`` at sample size N (input dimension d, default p["d"]):
    (PyramidalNet, X)."""
    from ..data import synthetic
    from ..model import PyramidalNet

    d = p["d"] if d is None else d
    X, _ = synthetic(N, d, 1, inputs=p["inputs"], seed=trial)
    net = PyramidalNet(d, [p["width_factor"] * N, p["n2"], 1], activation=p["activation"], init=p["init"],
                       seed=p["seed_offset"] + trial)
    return net, X


def run(p, out, progress=False) -> dict:
    from ..theory import lambda_star, ntk_lambda_min

    trials, rows = [], []
    bar = progress_bar(progress, sum(len(regimes(p, N)) for N in p["N"]) * p["trials"], "E2 NTK", unit="net")
    try:
        for N in p["N"]:
            for regime, d in regimes(p, N):
                vals = []
                for t in range(p["trials"]):
                    bar.set_postfix_str(f"N={N} d={d} trial={t}")
                    net, X = net_and_data(p, N, t, d)
                    lam = ntk_lambda_min(net, X)
                    vals.append(lam)
                    trials.append({"regime": regime, "N": N, "d": d, "n1": net.widths[0], "trial": t,
                                   "lambda_min": lam})
                    bar.update(1)
                v = np.array(vals)
                _, X = net_and_data(p, N, 0, d)
                w_var = {"he": 2.0 / d, "lecun": 1.0 / d}.get(p["init"])  # the first layer's init variance
                ls = lambda_star(X, p["activation"], w_var=w_var).value if w_var is not None else None
                rows.append({"regime": regime, "N": N, "d": d, "n1": p["width_factor"] * N, "trials": len(v),
                             "mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                             "min": float(v.min()), "max": float(v.max()), "mean_over_N": float(v.mean()) / N,
                             "lambda_star": ls,
                             "n1_lambda_star": ls * p["width_factor"] * N if ls is not None else None})
    finally:
        bar.close()
    files = {"csv": os.path.join(out, "E2.csv"), "csv_trials": os.path.join(out, "E2_trials.csv"),
             "figure": os.path.join(out, "E2.png")}
    write_csv(files["csv"], rows)
    write_csv(files["csv_trials"], trials)
    fits = {}
    for regime in dict.fromkeys(r["regime"] for r in rows):
        rr = [r for r in rows if r["regime"] == regime]
        slope, pref = fit_loglog([r["N"] for r in rr], [r["mean"] for r in rr])
        slope_ls = fit_loglog([r["N"] for r in rr], [r["n1_lambda_star"] or np.nan for r in rr])[0]
        fits[regime] = {"slope": slope, "prefactor": pref, "slope_n1_lambda_star": slope_ls,
                        "d": {str(r["N"]): r["d"] for r in rr},
                        "mean_lambda_min": {str(r["N"]): r["mean"] for r in rr},
                        "lambda_star": {str(r["N"]): r["lambda_star"] for r in rr}}
    f = fits["fixed_d"]
    findings = {"slope": f["slope"], "prefactor": f["prefactor"], "slope_n1_lambda_star": f["slope_n1_lambda_star"],
                "mean_lambda_min": f["mean_lambda_min"], "regimes": fits}
    _plot(files["figure"], p, rows, fits)
    return {**files, "findings": findings}


def _plot(path, p, rows, fits):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax, ax2 = fig.subplots(1, 2)
    labels = {"fixed_d": f"d = {p['d']}", "growing_d": f"d = {p['d_over_N']:g} N"}
    for k, (regime, fit) in enumerate(fits.items()):
        rr = [r for r in rows if r["regime"] == regime]
        col = f"C{2 * k}"
        N = np.array([r["N"] for r in rr], dtype=float)
        m = np.array([r["mean"] for r in rr])
        s = np.array([r["std"] for r in rr])
        for a in (ax, ax2):
            a.errorbar(N, m, yerr=s, fmt="o-" if k == 0 else "s-", color=col, capsize=4,
                       label=f"{labels[regime]}: mean $\\pm$ 1 std, {p['trials']} trials")
        if np.isfinite(fit["slope"]):
            ax2.plot(N, fit["prefactor"] * N ** fit["slope"], "--", color=col, lw=1,
                     label=f"{labels[regime]}: fit $\\propto N^{{{fit['slope']:.2f}}}$")
        ls = np.array([r["n1_lambda_star"] if r["n1_lambda_star"] is not None else np.nan for r in rr], dtype=float)
        if np.isfinite(ls).any():
            ax2.plot(N, ls, ":", color=col, lw=1.2,
                     label=f"{labels[regime]}: $n_1\\lambda_*(N)$ (population scale of $\\lambda_{{min}}(F_1F_1^T)$)")
    for a in (ax, ax2):
        a.set_xlabel("N (samples)")
        a.set_ylabel("$\\lambda_{min}$ of the empirical NTK $JJ^T$")
        a.grid(True, which="major", alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax.set_title(f"L = 3, {p['activation']}, {p['init']} init, $n_1$ = {p['width_factor']}N, $n_2$ = {p['n2']}",
                 fontsize=9)
    ax2.set_title("log-log, with least-squares fits through the means", fontsize=9)
    ax.legend(fontsize=8)
    ax2.legend(fontsize=7)
    save_figure(fig, path)
