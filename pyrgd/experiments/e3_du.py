"""E3, Du, Lee, Li, Wang, Zhai 2019: lambda_0 against depth, and finite-width Grams approaching K^(H).

Data: N points drawn uniformly on the unit sphere S^{d-1} (seed ``data_seed``), as Du et al. assume.

- **lambda_0 against depth**: lambda_0 = lambda_min(K^(H)) of the recursion of Definition 5.1
  (:func:`pyrgd.theory.du_gram`, docs/theory.md section 4.4) for H = each of ``depths``, under both readings of the
  covariance in its last line: ``paper`` (A^(H-1) as printed, built from K^(H-2)) and ``natural`` (A^(H), built from
  K^(H-1), the covariance of the last hidden layer's pre-activations).
- **Finite width**: Du et al.'s network at width m is pyrgd's PyramidalNet with widths [m] * H + [1], N(0, 1)
  weights (init = "normal", init_std = 1) and multipliers a_l = sqrt(c_sigma/m) (docs/theory.md sections 1 and 4.4);
  its Gram of the last hidden layer, G^(H)_ij = <dF/dW_H (x_i), dF/dW_H (x_j)> = (F_{H-1} F_{H-1}^T) (.) (B_H B_H^T)
  (docs/theory.md section 5), should approach K^(H) as m grows, with fluctuations of order m^{-1/2}. The figure shows
  the relative error ||G^(H) - K^(H)||_F / ||K^(H)||_F against m for each H in ``gram_depths`` (mean and standard
  error over ``seeds`` nets) and both readings of K^(H).

Outputs: E3.csv (lambda_0 per depth), E3_width.csv (every error), E3.png.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ..errors import PyrgdError
from ._common import Param, check_params, fit_loglog, progress_bar, save_figure, write_csv

SPEC = {
    "N": Param("int", "number of points on the sphere", lo=1),
    "d": Param("int", "input dimension", lo=2),
    "data_seed": Param("int", "seed of the data", lo=0),
    "activation": Param("str", "the activation (Du et al.'s guiding example: softplus)"),
    "depths": Param("int_list", "the depths H of the lambda_0 curve", lo=1),
    "gram_depths": Param("int_list", "the depths H of the finite-width comparison", lo=1),
    "widths": Param("int_list", "the widths m of the finite-width comparison", lo=1),
    "seeds": Param("int", "networks per width", lo=1),
}


def check(params) -> dict:
    from ..activations import parse_activation

    p = check_params("E3", SPEC, params)
    try:
        p["activation"] = str(parse_activation(p["activation"]))
    except PyrgdError as e:
        raise PyrgdError(f"E3.params.activation: {str(e).split(': ', 1)[-1]}") from None
    return p


def make_data(p):
    from ..data import synthetic

    X, _ = synthetic(p["N"], p["d"], 1, inputs="sphere", seed=p["data_seed"])
    return X


def du_net(d, m, H, act, seed):
    """Du et al.'s network of depth H at width m as a PyramidalNet (see the module docstring)."""
    from ..model import PyramidalNet
    from ..theory import c_sigma

    a = math.sqrt(c_sigma(act) / m)
    return PyramidalNet(d, [m] * H + [1], activation=act, init="normal", init_std=1.0, seed=seed,
                        multipliers=[a] * H)


def ntk_block(net, X, l, backend="auto"):
    """The layer-l block (F_{l-1} F_{l-1}^T) (.) (B_l B_l^T) of the empirical NTK of a single-output net, an (N, N)
    float64 NumPy array, l = 1..L [derived: docs/theory.md section 5]; the blocks sum to
    :func:`pyrgd.theory.empirical_ntk`. X: (N, d) NumPy float array."""
    from .. import ops
    from ..activations import sigma_and_derivative
    from ..tail import tail_forward

    L = net.L
    if not 1 <= l <= L:
        raise PyrgdError(f"l: expected a layer in 1..{L}, got {l!r}")
    if net.widths[-1] != 1:
        raise PyrgdError("net: ntk_block needs a single-output net (n_L = 1)")
    X = np.ascontiguousarray(X, dtype=np.float64)
    W = [np.ascontiguousarray(w, dtype=np.float64) for w in net.weights]
    act, mult = net.activation, net.multipliers
    H = ops.wide_forward(X, W[0], W[1], activation=act, a1=mult[0], backend=backend)
    cache = tail_forward(H, W, act, mult)  # [Z_2, F_2, Z_3, F_3, ..., Z_L]
    B = np.ones((X.shape[0], 1))  # B_L
    for k in range(L, max(l, 2), -1):  # down to B_max(l, 2): B_{k-1} = a_{k-1} (B_k W_k^T) (.) sigma'(Z_{k-1})
        _, dS = sigma_and_derivative(act, cache[2 * (k - 3)], value=False)
        B = mult[k - 2] * (B @ W[k - 1].T) * dS
    if l >= 3:
        F = cache[2 * (l - 3) + 1]
        return (F @ F.T) * (B @ B.T)
    B = np.ascontiguousarray(B)
    if l == 2:
        return ops.wide_gram(X, W[0], activation=act, a1=mult[0], backend=backend) * (B @ B.T)
    return (X @ X.T) * ops.wide_gram(X, W[0], activation=act, a1=mult[0], W2=W[1], B2=B, backend=backend)


def run(p, out, progress=False) -> dict:
    from ..theory import du_gram

    X = make_data(p)
    act = p["activation"]
    depth_rows = []
    for H in p["depths"]:
        gp = du_gram(X, H, act, last_layer_cov="paper", keep_all=False)
        gn = du_gram(X, H, act, last_layer_cov="natural", keep_all=False)
        depth_rows.append({"H": H, "lambda0_paper": gp.lambda_0, "lambda0_natural": gn.lambda_0,
                           "c_sigma": gp.c_sigma})
    width_rows = []
    bar = progress_bar(progress, len(p["gram_depths"]) * len(p["widths"]) * p["seeds"], "E3 Grams", unit="net")
    try:
        for H in p["gram_depths"]:
            K = {c: du_gram(X, H, act, last_layer_cov=c, keep_all=False).K_H for c in ("paper", "natural")}
            for m in p["widths"]:
                for s in range(p["seeds"]):
                    bar.set_postfix_str(f"H={H} m={m} seed={s}")
                    G = ntk_block(du_net(p["d"], m, H, act, seed=s), X, H)
                    row = {"H": H, "m": m, "seed": s}
                    for c, Kc in K.items():
                        row[f"err_{c}"] = float(np.linalg.norm(G - Kc) / np.linalg.norm(Kc))
                    width_rows.append(row)
                    bar.update(1)
    finally:
        bar.close()
    files = {"csv": os.path.join(out, "E3.csv"), "csv_width": os.path.join(out, "E3_width.csv"),
             "figure": os.path.join(out, "E3.png")}
    write_csv(files["csv"], depth_rows)
    write_csv(files["csv_width"], width_rows)
    slopes = {}
    for H in p["gram_depths"]:
        for c in ("paper", "natural"):
            ms = sorted({r["m"] for r in width_rows if r["H"] == H})
            means = [np.mean([r[f"err_{c}"] for r in width_rows if r["H"] == H and r["m"] == m]) for m in ms]
            slopes[f"H{H}_{c}"] = fit_loglog(ms, means)[0]
    findings = {"lambda0": {str(r["H"]): {"paper": r["lambda0_paper"], "natural": r["lambda0_natural"]}
                            for r in depth_rows},
                "error_slopes_vs_m": slopes}
    _plot(files["figure"], p, depth_rows, width_rows)
    return {**files, "findings": findings}


def _plot(path, p, depth_rows, width_rows):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax, ax2 = fig.subplots(1, 2)
    Hs = [r["H"] for r in depth_rows]
    ax.plot(Hs, [r["lambda0_natural"] for r in depth_rows], "o-", color="C0",
            label="natural: $A^{(H)}$ from $K^{(H-1)}$")
    ax.plot(Hs, [r["lambda0_paper"] for r in depth_rows], "s--", color="C1",
            label="as printed: $A^{(H-1)}$ from $K^{(H-2)}$")
    ax.set_yscale("log")
    ax.set_xlabel("depth H (hidden layers)")
    ax.set_ylabel("$\\lambda_0 = \\lambda_{min}(K^{(H)})$")
    ax.set_title(f"Du et al. 2019, {p['activation']}, N = {p['N']} points on $S^{{{p['d'] - 1}}}$", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    allm = []
    for k, H in enumerate(p["gram_depths"]):
        ms = sorted({r["m"] for r in width_rows if r["H"] == H})
        allm += ms
        for c, style in (("natural", "o-"), ("paper", "s--")):
            e = np.array([[r[f"err_{c}"] for r in width_rows if r["H"] == H and r["m"] == m] for m in ms])
            sem = e.std(axis=1, ddof=1) / np.sqrt(e.shape[1]) if e.shape[1] > 1 else None
            ax2.errorbar(ms, e.mean(axis=1), yerr=sem, fmt=style,
                         color=f"C{k % 10}", capsize=3, ms=4, mfc="none" if c == "paper" else None,
                         label=f"H = {H}, {'natural' if c == 'natural' else 'as printed'}")
    if allm:
        m0 = min(allm)
        first = [r for r in width_rows if r["m"] == m0]
        y0 = np.mean([r["err_natural"] for r in first])
        mm = np.array(sorted(set(allm)), dtype=float)
        ax2.plot(mm, y0 * (mm / m0) ** -0.5, ":", color="k", label="$\\propto m^{-1/2}$")
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xlabel("width m")
    ax2.set_ylabel("$\\|G^{(H)}_m - K^{(H)}\\|_F / \\|K^{(H)}\\|_F$")
    ax2.set_title(f"last-layer Gram at width m against $K^{{(H)}}$ (mean $\\pm$ s.e. over {p['seeds']} nets)",
                  fontsize=9)
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=7, ncol=2)
    save_figure(fig, path)
