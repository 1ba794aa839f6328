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

Outputs: E2.csv (per N: mean, std, min, max), E2_trials.csv (every trial), E2.png.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import PyrgdError
from ._common import Param, check_params, fit_loglog, progress_bar, save_figure, write_csv

SPEC = {
    "N": Param("int_list", "sample sizes", lo=1),
    "d": Param("int", "input dimension", lo=1),
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


def net_and_data(p, N, trial):
    """The network and the inputs of trial ``trial`` at sample size N: (PyramidalNet, X)."""
    from ..data import synthetic
    from ..model import PyramidalNet

    X, _ = synthetic(N, p["d"], 1, inputs=p["inputs"], seed=trial)
    net = PyramidalNet(p["d"], [p["width_factor"] * N, p["n2"], 1], activation=p["activation"], init=p["init"],
                       seed=p["seed_offset"] + trial)
    return net, X


def run(p, out, progress=False) -> dict:
    from ..theory import lambda_star, ntk_lambda_min

    trials, rows = [], []
    bar = progress_bar(progress, len(p["N"]) * p["trials"], "E2 NTK", unit="net")
    try:
        for N in p["N"]:
            vals = []
            for t in range(p["trials"]):
                bar.set_postfix_str(f"N={N} trial={t}")
                net, X = net_and_data(p, N, t)
                lam = ntk_lambda_min(net, X)
                vals.append(lam)
                trials.append({"N": N, "n1": net.widths[0], "trial": t, "lambda_min": lam})
                bar.update(1)
            v = np.array(vals)
            _, X = net_and_data(p, N, 0)
            w_var = {"he": 2.0 / p["d"], "lecun": 1.0 / p["d"]}.get(p["init"])  # the first layer's init variance
            ls = lambda_star(X, p["activation"], w_var=w_var).value if w_var is not None else None
            rows.append({"N": N, "n1": p["width_factor"] * N, "trials": len(v), "mean": float(v.mean()),
                         "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "min": float(v.min()),
                         "max": float(v.max()), "mean_over_N": float(v.mean()) / N, "lambda_star": ls,
                         "n1_lambda_star": ls * p["width_factor"] * N if ls is not None else None})
    finally:
        bar.close()
    files = {"csv": os.path.join(out, "E2.csv"), "csv_trials": os.path.join(out, "E2_trials.csv"),
             "figure": os.path.join(out, "E2.png")}
    write_csv(files["csv"], rows)
    write_csv(files["csv_trials"], trials)
    slope, pref = fit_loglog([r["N"] for r in rows], [r["mean"] for r in rows])
    slope_ls = fit_loglog([r["N"] for r in rows], [r["n1_lambda_star"] or np.nan for r in rows])[0]
    findings = {"slope": slope, "prefactor": pref, "slope_n1_lambda_star": slope_ls,
                "mean_lambda_min": {str(r["N"]): r["mean"] for r in rows}}
    _plot(files["figure"], p, rows, slope, pref)
    return {**files, "findings": findings}


def _plot(path, p, rows, slope, pref):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax, ax2 = fig.subplots(1, 2)
    N = np.array([r["N"] for r in rows], dtype=float)
    m = np.array([r["mean"] for r in rows])
    s = np.array([r["std"] for r in rows])
    for a in (ax, ax2):
        a.errorbar(N, m, yerr=s, fmt="o-", color="C0", capsize=4, label=f"mean $\\pm$ 1 std, {p['trials']} trials")
        a.set_xlabel("N (samples)")
        a.set_ylabel("$\\lambda_{min}$ of the empirical NTK $JJ^T$")
        a.grid(True, which="major", alpha=0.3)
    if np.isfinite(slope):
        ax2.plot(N, pref * N ** slope, "--", color="C3", label=f"fit $\\propto N^{{{slope:.2f}}}$")
    ls = np.array([r["n1_lambda_star"] if r["n1_lambda_star"] is not None else np.nan for r in rows], dtype=float)
    if np.isfinite(ls).any():
        ax2.plot(N, ls, ":", color="0.3", label="$n_1\\lambda_*(N)$ (population scale of $\\lambda_{min}(F_1F_1^T)$)")
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax.set_title(f"L = 3, {p['activation']}, {p['init']} init, $n_1$ = {p['width_factor']}N, d = {p['d']}, "
                 f"$n_2$ = {p['n2']}", fontsize=9)
    ax2.set_title("log-log, with a least-squares fit through the means", fontsize=9)
    ax.legend(fontsize=8)
    ax2.legend(fontsize=8)
    save_figure(fig, path)
