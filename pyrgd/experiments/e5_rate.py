"""E5, Du, Lee, Li, Wang, Zhai 2019, Theorem 5.1: the rate L(theta(k)) <= (1 - eta lambda_0 / 2)^k L(theta(0)).

Data: N points drawn uniformly on the unit sphere S^{d-1} (seed ``data_seed``) with i.i.d. N(0, 1) targets, as Du et
al. assume (||x_i|| = 1, |y_i| = O(1)). Network: Du et al.'s deep net of H hidden layers of width m
(:func:`pyrgd.experiments.e3_du.du_net`: N(0, 1) weights, multipliers sqrt(c_sigma/m); docs/theory.md section 4.4),
seed s, trained by :func:`pyrgd.train` (all layers, full batch, loss 1/2 sum (f(x_i) - y_i)^2, the paper's loss) for
``steps`` steps at a constant step size eta.

lambda_0 = lambda_min(K^(H)) (:func:`pyrgd.theory.du_gram`) under the natural reading of the last line of Definition
5.1 (the default; the printed reading's value is recorded too). The guaranteed per-step factor is
rho = 1 - eta lambda_0 / 2. Per run:

- ``held_cumulative``: L_k <= rho^k L_0 at every step k <= steps (the theorem's statement); ``first_violation``;
  the same under the printed reading (``held_cumulative_paper``);
- ``held_per_step``: L_{k+1} <= rho L_k at every step (what the proof's induction shows step by step);
- the observed rate -ln(L_T / L_0) / T and, over the last ``late_window`` steps, -ln(L_T / L_{T-W}) / W, each divided
  by the guaranteed rate -ln(rho): ``speedup`` and ``late_speedup`` (> 1: faster than guaranteed; < 1: the bound
  fails at that rate);
- ``looseness_log10`` = log10(rho^T L_0 / L_T), how far below its bound the loss ends (negative: above it);
- ``linear_speedup``: -2 ln|1 - eta lambda_min(K_T)| / -ln(rho), with K_T the empirical NTK at the end; in the
  linearized (lazy) regime the loss eventually contracts by (1 - eta lambda_min)^2 per step [derived: docs/theory.md
  section 5], so this is the ratio the run approaches as k grows, not a measurement.

Two sweeps, both in float64:

- **widths**: every case (activation, H) of ``cases`` at every width m of ``widths`` and seed 0..``seeds``-1, at
  eta = ``eta_over_lmax`` / lambda_max(K_0), K_0 the empirical NTK of that net at initialization (so eta lambda_max
  is the same at every width; 2 is the edge of stability of GD on the linearized model);
- **step sizes**: every case at width ``sweep_width``, seed 0, at eta = each of ``sweep_eta_over_lmax`` /
  lambda_max(K_0) and, when ``theorem_eta``, at the theorem's scale eta = lambda_0 / N^2 (Theorem 5.1 asks for
  eta = O(lambda_0 / (N^2 2^{O(H)})); the unknown constants are set to 1, which makes it the largest step of that
  form).

Outputs: E5.csv (one row per run), E5_history.csv (the loss at every step of every run), E5.png.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ..errors import PyrgdError
from ._common import Param, check_params, progress_bar, save_figure, write_csv

SPEC = {
    "N": Param("int", "number of points on the sphere", lo=1),
    "d": Param("int", "input dimension", lo=2),
    "data_seed": Param("int", "seed of the data (inputs, then N(0, 1) targets)", lo=0),
    "cases": Param("table_list", "the cases: tables {activation = ..., H = ...} (H hidden layers of width m)"),
    "widths": Param("int_list", "the widths m of the width sweep", lo=1),
    "seeds": Param("int", "networks per width in the width sweep (seeds 0..seeds-1)", lo=1),
    "steps": Param("int", "GD steps of every run", lo=2),
    "late_window": Param("int", "the last steps over which the late rate is measured", lo=1),
    "eta_over_lmax": Param("float", "the width sweep's step size, times lambda_max of the NTK at init", lo=0),
    "sweep_width": Param("int", "the width of the step-size sweep", lo=1),
    "sweep_eta_over_lmax": Param("float_list", "the step-size sweep: eta lambda_max(K_0)", lo=0),
    "theorem_eta": Param("bool", "add eta = lambda_0 / N^2 (Theorem 5.1's scale, constants 1) to the sweep"),
}
_CASE_KEYS = ("activation", "H")
#: runs whose loss grows past this factor of L_0 stop as diverged
DIVERGENCE_FACTOR = 1e6


def check(params) -> dict:
    from ..activations import parse_activation

    p = check_params("E5", SPEC, params)
    cases = []
    for i, c in enumerate(p["cases"]):
        where = f"E5.params.cases[{i}]"
        for k in c:
            if k not in _CASE_KEYS:
                raise PyrgdError(f"{where}.{k}: unknown key; a case has {', '.join(_CASE_KEYS)}")
        try:
            act = str(parse_activation(c.get("activation")))
        except PyrgdError as e:
            raise PyrgdError(f"{where}.activation: {str(e).split(': ', 1)[-1]}") from None
        H = c.get("H")
        if isinstance(H, bool) or not isinstance(H, int) or H < 1:
            raise PyrgdError(f"{where}.H: expected an integer >= 1 (hidden layers), got {H!r}")
        cases.append({"activation": act, "H": H})
    p["cases"] = cases
    if any(e <= 0 for e in p["sweep_eta_over_lmax"]) or p["eta_over_lmax"] <= 0:
        raise PyrgdError("E5.params.eta_over_lmax, sweep_eta_over_lmax: expected positive step sizes")
    if p["late_window"] >= p["steps"]:
        raise PyrgdError(f"E5.params.late_window: expected fewer than steps = {p['steps']}, got {p['late_window']}")
    return p


def make_data(p):
    """(X, Y): N points on the unit sphere in R^d and N(0, 1) targets, (N, d) and (N, 1) float64."""
    from ..data import synthetic

    return synthetic(p["N"], p["d"], 1, inputs="sphere", targets="gaussian", seed=p["data_seed"])


def rate_measures(loss, eta, lam0, late_window, lam0_paper=None) -> dict:
    """The bound's checks and the observed rates of one loss history ``loss`` (L_0..L_T, T >= 1 steps; floats) at
    step size eta against rho = 1 - eta lam0 / 2 (see the module docstring). A history that stopped early (a
    diverged run) is checked up to where it stopped."""
    L = np.asarray(loss, dtype=np.float64)
    T = L.size - 1
    rho = 1.0 - eta * lam0 / 2.0
    k = np.arange(L.size)
    env = L[0] * rho ** k
    bad = np.flatnonzero(~(L <= env))
    out = {"rho": rho, "held_cumulative": bad.size == 0,
           "first_violation": int(bad[0]) if bad.size else None,
           "held_per_step": bool(np.all(L[1:] <= rho * L[:-1])),
           "max_step_factor": float(np.max(L[1:] / L[:-1])) if T >= 1 else float("nan")}
    if lam0_paper is not None:
        envp = L[0] * (1.0 - eta * lam0_paper / 2.0) ** k
        out["held_cumulative_paper"] = bool(np.all(L <= envp))
    g = -math.log(rho) if rho > 0 else float("inf")  # the guaranteed rate per step
    out["guaranteed_rate"] = g
    finite = np.isfinite(L[-1]) and L[-1] > 0
    obs = -math.log(L[-1] / L[0]) / T if finite else float("-inf")
    W = min(late_window, T)
    late = -math.log(L[-1] / L[-1 - W]) / W if finite and L[-1 - W] > 0 else float("-inf")
    out.update(observed_rate=obs, late_rate=late, speedup=obs / g, late_speedup=late / g,
               looseness_log10=(math.log10(L[0]) + T * math.log10(rho) - math.log10(L[-1])) if finite and rho > 0
               else float("-inf"))
    return out


def one_run(X, Y, act, H, m, seed, eta_rule, lam0, lam0_paper, p, K0=None) -> tuple[dict, list, np.ndarray]:
    """Train Du et al.'s net (case act, H; width m; seed) at the step size ``eta_rule`` (a float: times
    1/lambda_max(K_0); or "theorem": lambda_0 / N^2); returns (the CSV row, the loss history L_0..L_T, the
    eigenvalues of the NTK K_0 at initialization, ascending; pass them back as K0 to skip recomputing them)."""
    from ..theory import empirical_ntk
    from ..train import train
    from .e3_du import du_net

    net = du_net(p["d"], m, H, act, seed=seed)
    if K0 is None:
        K0 = np.linalg.eigvalsh(np.asarray(empirical_ntk(net, X)))
    lmin0, lmax0 = float(K0[0]), float(K0[-1])
    if eta_rule == "theorem":
        eta = lam0 / X.shape[0] ** 2
    else:
        eta = float(eta_rule) / lmax0
    res = train(net, X, Y, lr=eta, steps=p["steps"], track_every=0, progress=False,
                divergence_factor=DIVERGENCE_FACTOR, threads=1)  # small steps: one thread is fastest
    if res.status in ("interrupted", "terminated"):  # Ctrl-C or SIGTERM: stop the experiment, not just this run
        raise KeyboardInterrupt
    loss = [float(v) for v in res.history["loss"]]
    row = {"activation": act, "H": H, "m": m, "seed": seed, "eta_rule": "theorem" if eta_rule == "theorem" else
           "lmax", "eta": eta, "eta_lmax": eta * lmax0, "lambda0": lam0, "lambda0_paper": lam0_paper,
           "ntk_lmin_0": lmin0, "ntk_lmax_0": lmax0, "status": res.status, "steps": len(loss) - 1,
           "loss_0": loss[0], "loss_T": loss[-1]}
    row.update(rate_measures(loss, eta, lam0, p["late_window"], lam0_paper))
    if res.status != "diverged":
        lminT = float(np.linalg.eigvalsh(np.asarray(empirical_ntk(net, X)))[0])
        row["ntk_lmin_T"] = lminT
        q = abs(1.0 - eta * lminT)
        row["linear_speedup"] = (-2.0 * math.log(q) / row["guaranteed_rate"]) if 0 < q else float("inf")
    else:
        row["ntk_lmin_T"] = row["linear_speedup"] = None
    return row, loss, K0


def run(p, out, progress=False) -> dict:
    from ..theory import du_lambda0

    X, Y = make_data(p)
    lam = {}
    for c in p["cases"]:
        key = (c["activation"], c["H"])
        lam[key] = (du_lambda0(X, c["H"], c["activation"]),
                    du_lambda0(X, c["H"], c["activation"], last_layer_cov="paper"))
    etas = list(p["sweep_eta_over_lmax"]) + (["theorem"] if p["theorem_eta"] else [])
    n_runs = len(p["cases"]) * (len(p["widths"]) * p["seeds"] + len(etas))
    bar = progress_bar(progress, n_runs, "E5 runs", unit="run")
    rows, history = [], []
    try:
        for c in p["cases"]:
            act, H = c["activation"], c["H"]
            lam0, lam0p = lam[(act, H)]
            for m in p["widths"]:
                for s in range(p["seeds"]):
                    bar.set_postfix_str(f"{act} H={H} m={m} seed={s}")
                    row, loss, _ = one_run(X, Y, act, H, m, s, p["eta_over_lmax"], lam0, lam0p, p)
                    _record(rows, history, "widths", row, loss)
                    bar.update(1)
            K0 = None
            for e in etas:
                bar.set_postfix_str(f"{act} H={H} m={p['sweep_width']} eta={e}")
                row, loss, K0 = one_run(X, Y, act, H, p["sweep_width"], 0, e, lam0, lam0p, p, K0=K0)
                _record(rows, history, "step_sizes", row, loss)
                bar.update(1)
    finally:
        bar.close()
    files = {"csv": os.path.join(out, "E5.csv"), "csv_history": os.path.join(out, "E5_history.csv"),
             "figure": os.path.join(out, "E5.png")}
    write_csv(files["csv"], rows)
    write_csv(files["csv_history"], history)
    _plot(files["figure"], p, rows, history)
    return {**files, "findings": findings(p, rows)}


def _record(rows, history, sweep, row, loss):
    run_id = len(rows)
    rows.append({"run": run_id, "sweep": sweep, **row})
    history.extend({"run": run_id, "step": k, "loss": v} for k, v in enumerate(loss))


def findings(p, rows) -> dict:
    """Per case: lambda_0 (both readings), the width sweep's speedups per width (median over seeds) and whether
    the bound held in every run; the step-size sweep's largest eta lambda_max at which it held and the smallest at
    which it failed."""
    out = {}
    for c in p["cases"]:
        key = f"{c['activation']} H={c['H']}"
        mine = [r for r in rows if r["activation"] == c["activation"] and r["H"] == c["H"]]
        w = [r for r in mine if r["sweep"] == "widths"]
        s = [r for r in mine if r["sweep"] == "step_sizes"]
        per_m = {}
        for m in p["widths"]:
            rm = [r for r in w if r["m"] == m]
            per_m[str(m)] = {"speedup": float(np.median([r["speedup"] for r in rm])),
                             "late_speedup": float(np.median([r["late_speedup"] for r in rm])),
                             "linear_speedup": _median([r["linear_speedup"] for r in rm]),
                             "looseness_log10": float(np.median([r["looseness_log10"] for r in rm])),
                             "held_cumulative": all(r["held_cumulative"] for r in rm),
                             "held_per_step": all(r["held_per_step"] for r in rm)}
        held = [r["eta_lmax"] for r in s if r["held_cumulative"]]
        failed = [r["eta_lmax"] for r in s if not r["held_cumulative"]]
        thm = [r for r in s if r["eta_rule"] == "theorem"]
        out[key] = {"lambda0": mine[0]["lambda0"] if mine else None,
                    "lambda0_paper": mine[0]["lambda0_paper"] if mine else None,
                    "widths": per_m,
                    "all_width_runs_held": all(r["held_cumulative"] for r in w),
                    "sweep_largest_eta_lmax_held": max(held) if held else None,
                    "sweep_smallest_eta_lmax_failed": min(failed) if failed else None,
                    "sweep_held_per_step_all_below_failure": all(
                        r["held_per_step"] for r in s if not failed or r["eta_lmax"] < min(failed)),
                    "theorem_eta": ({"eta": thm[0]["eta"], "eta_lmax": thm[0]["eta_lmax"],
                                     "speedup": thm[0]["speedup"], "held_cumulative": thm[0]["held_cumulative"]}
                                    if thm else None)}
    return out


def _median(v):
    v = [x for x in v if x is not None and math.isfinite(x)]
    return float(np.median(v)) if v else None


def _plot(path, p, rows, history):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax0, ax1, ax2 = fig.subplots(1, 3)
    styles = {}
    for i, c in enumerate(p["cases"]):
        styles[(c["activation"], c["H"])] = (f"C{i % 10}", "o-" if "softplus" in c["activation"] else "s--")
    # (a) the step-size sweep of the first case: loss / L_0 and the bound's envelope rho^k
    c0 = p["cases"][0]
    first = [r for r in rows if r["sweep"] == "step_sizes" and (r["activation"], r["H"]) == (c0["activation"],
                                                                                            c0["H"])]
    for j, r in enumerate(first):
        L = np.array([h["loss"] for h in history if h["run"] == r["run"]])
        k = np.arange(L.size)
        col = f"C{j % 10}"
        lab = ("theorem: " if r["eta_rule"] == "theorem" else "") + f"$\\eta\\lambda_{{max}}$ = {r['eta_lmax']:.3g}"
        ax0.plot(k, L / L[0], "-", color=col, lw=1.3, label=lab + ("" if r["held_cumulative"] else " (fails)"))
        ax0.plot(k, r["rho"] ** k, ":", color=col, lw=1.0)
    ax0.set_yscale("log")
    lows = [h["loss"] / r["loss_0"] for r in first for h in history if h["run"] == r["run"]]
    finite = [v for v in lows if math.isfinite(v) and v > 0]
    ax0.set_ylim(min(finite) / 20 if finite else 1e-3, 1e2)
    ax0.set_xlabel("step k")
    ax0.set_ylabel("$L_k / L_0$ (solid); bound $(1-\\eta\\lambda_0/2)^k$ (dotted)")
    ax0.set_title(f"{c0['activation']}, H = {c0['H']}, m = {p['sweep_width']}, N = {p['N']} on "
                  f"$S^{{{p['d'] - 1}}}$", fontsize=9)
    ax0.grid(True, which="major", alpha=0.3)
    ax0.legend(fontsize=7, loc="lower left", ncol=2)
    # (b) width sweep: observed over guaranteed rate against m
    for c in p["cases"]:
        col, st = styles[(c["activation"], c["H"])]
        w = [r for r in rows if r["sweep"] == "widths" and (r["activation"], r["H"]) == (c["activation"], c["H"])]
        ms = sorted({r["m"] for r in w})
        sp = [np.median([r["speedup"] for r in w if r["m"] == m]) for m in ms]
        late = [np.median([r["late_speedup"] for r in w if r["m"] == m]) for m in ms]
        ax1.plot(ms, sp, st, color=col, ms=4, label=f"{c['activation']}, H = {c['H']}")
        ax1.plot(ms, late, st[0] + ":", color=col, ms=3, mfc="none")
        bad = [m for m in ms if not all(r["held_cumulative"] for r in w if r["m"] == m)]
        if bad:
            ax1.plot(bad, [sp[ms.index(m)] for m in bad], "x", color="k", ms=9)
    ax1.axhline(1.0, color="k", lw=1)
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log")
    ax1.set_xlabel("width m")
    ax1.set_ylabel("observed rate / guaranteed rate $-\\ln(1-\\eta\\lambda_0/2)$")
    ax1.set_title(f"$\\eta$ = {p['eta_over_lmax']:g} / $\\lambda_{{max}}(K_0)$, {p['steps']} steps; filled: whole run, "
                  f"open dotted: last {p['late_window']} steps; x: bound fails", fontsize=8)
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=7)
    # (c) step-size sweep: observed over guaranteed rate against eta lambda_max
    for c in p["cases"]:
        col, st = styles[(c["activation"], c["H"])]
        s = sorted((r for r in rows if r["sweep"] == "step_sizes" and (r["activation"], r["H"]) == (c["activation"],
                                                                                                    c["H"])),
                   key=lambda r: r["eta_lmax"])
        x = np.array([r["eta_lmax"] for r in s])
        y = np.array([r["speedup"] for r in s])
        ok = np.array([r["held_cumulative"] for r in s])
        pos = y > 0
        ax2.plot(x[pos], y[pos], st, color=col, ms=4, label=f"{c['activation']}, H = {c['H']}")
        if (~ok).any():
            fl = np.where(pos, y, np.nan)[~ok]
            ax2.plot(x[~ok], np.where(np.isfinite(fl), fl, 1e-1), "x", color=col, ms=9, mew=2)
    ax2.axhline(1.0, color="k", lw=1)
    ax2.axvline(2.0, color="grey", lw=1, ls="--")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("$\\eta \\lambda_{max}(K_0)$ (2: edge of stability of the linearized model)")
    ax2.set_ylabel("observed rate / guaranteed rate")
    ax2.set_title(f"m = {p['sweep_width']}; x: the bound fails (at 0.1: the loss rose)", fontsize=9)
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=7)
    save_figure(fig, path)
