"""E4, observed against PL-certified contraction along training.

Each entry of ``runs`` is a run config (an optional ``preset`` and partial [data], [model], [train] tables, see
:mod:`pyrgd.config`) with a ``label``; every run is trained by :func:`pyrgd.train` with the certificates computed
every ``track_every`` steps. At a tracked step k the PL certificate of docs/theory.md section 4.1 guarantees a
per-step decrease of at least eta mu_k (Phi_{k+1} <= (1 - eta mu_k) Phi_k, while eta is below 1/(local smoothness));
the run's own per-step decrease over the window [k, k + track_every) is 1 - (Phi_{k+T}/Phi_k)^(1/T). The figure
shows, per run, the loss with the certified envelope prod (1 - eta mu_k), and both decreases; the findings give the
median of their ratio (how many times faster GD contracts than certified) and the number of windows where the loss
rose (there the certificate's step-size condition cannot have held).

Outputs: E4.csv (per tracked step of every run: loss, mu, certified and observed decrease), E4_history.csv (every
step: loss, factor, envelope), E4.png.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ..errors import PyrgdError
from ._common import Param, check_params, save_figure, write_csv

SPEC = {
    "runs": Param("table_list", "the runs: tables with label, and preset and/or data/model/train tables"),
    "track_every": Param("int", "steps between two certificate evaluations", lo=1),
}
_RUN_KEYS = ("label", "preset", "data", "model", "train")


def check(params) -> dict:
    p = check_params("E4", SPEC, params)
    for i, r in enumerate(p["runs"]):
        for k in r:
            if k not in _RUN_KEYS:
                raise PyrgdError(f"E4.params.runs[{i}].{k}: unknown key; a run has {', '.join(_RUN_KEYS)}")
        if not isinstance(r.get("label"), str) or not r["label"]:
            raise PyrgdError(f"E4.params.runs[{i}].label: expected a non-empty string")
        run_config(p, r, f"E4.params.runs[{i}]")  # validates the config
    return p


def run_config(p, r, where="run") -> dict:
    from ..config import resolve_config

    try:
        cfg = resolve_config(preset=r.get("preset"), file_cfg={t: r[t] for t in ("data", "model", "train") if t in r})
    except PyrgdError as e:
        raise PyrgdError(f"{where}: {e}") from None
    cfg["train"]["track_every"] = p["track_every"]
    return cfg


def run(p, out, progress=False) -> dict:
    from ..config import build
    from ..train import train

    tracked, history, summaries = [], [], []
    for r in p["runs"]:
        cfg = run_config(p, r)
        net, X, Y, kw = build(cfg)
        res = train(net, X, Y, progress=progress, **kw)
        if res.status == "interrupted":
            raise KeyboardInterrupt
        h, c = res.history, res.certificates
        loss = h["loss"]
        for k in range(len(loss)):
            history.append({"run": r["label"], "step": h["step"][k], "loss": loss[k], "factor": h["factor"][k],
                            "envelope": h["envelope"][k]})
        T = p["track_every"]
        ratios = []
        for i, k in enumerate(c.get("step", [])):
            k2 = min(k + T, len(loss) - 1)
            obs = 1.0 - (loss[k2] / loss[k]) ** (1.0 / (k2 - k)) if k2 > k and loss[k] > 0 else float("nan")
            cert = res.lr * c["mu"][i] if math.isfinite(c["mu"][i]) else float("nan")
            ratio = obs / cert if cert > 0 and math.isfinite(obs) else float("nan")
            if math.isfinite(ratio):
                ratios.append(ratio)
            tracked.append({"run": r["label"], "step": k, "loss": loss[k], "lr": res.lr, "mu": c["mu"][i],
                            "sigma_min_F1": c["sigma_min_F1"][i], "certified_factor": c["certified_factor"][i],
                            "certified_decrease": cert, "observed_decrease": obs, "ratio": ratio})
        summaries.append({"run": r["label"], "widths": list(net.widths), "activation": str(net.activation),
                          "status": res.status, "steps": res.summary["steps"], "lr": res.lr,
                          "relative_loss": res.summary["relative_loss"],
                          "median_observed_factor": res.summary["median_factor"],
                          "median_certified_factor": _median(c.get("certified_factor", [])),
                          "median_observed_over_certified": float(np.median(ratios)) if ratios else None,
                          "min_observed_over_certified": float(np.min(ratios)) if ratios else None,
                          "windows_where_loss_rose": sum(1 for t in tracked if t["run"] == r["label"]
                                                         and math.isfinite(t["observed_decrease"])
                                                         and t["observed_decrease"] <= 0)})
    files = {"csv": os.path.join(out, "E4.csv"), "csv_history": os.path.join(out, "E4_history.csv"),
             "figure": os.path.join(out, "E4.png")}
    write_csv(files["csv"], tracked)
    write_csv(files["csv_history"], history)
    _plot(files["figure"], p, summaries, tracked, history)
    return {**files, "findings": {"runs": summaries}}


def _median(v):
    v = [x for x in v if x is not None and math.isfinite(x)]
    return float(np.median(v)) if v else None


def _plot(path, p, summaries, tracked, history):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(summaries)
    fig = Figure(figsize=(6 * n, 6.4), layout="constrained")
    FigureCanvasAgg(fig)
    axs = np.array(fig.subplots(2, n, squeeze=False, sharex="col"))
    for j, s in enumerate(summaries):
        ax, ax2 = axs[0, j], axs[1, j]
        h = [r for r in history if r["run"] == s["run"]]
        t = [r for r in tracked if r["run"] == s["run"]]
        st = np.array([r["step"] for r in h])
        ax.plot(st, [r["loss"] for r in h], color="C0", lw=1.5, label="loss $\\Phi_k$")
        env = np.array([r["envelope"] for r in h], dtype=float)
        if np.isfinite(env).any():
            ax.plot(st, env, "--", color="C3", lw=1.2, label="PL-certified envelope $\\Phi_0\\prod(1-\\eta\\mu_k)$")
        ax.set_yscale("log")
        ax.set_ylabel("loss")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
        ax.set_title(f"{s['run']}\n{s['activation']}, {s['status']} after {s['steps']} steps", fontsize=9)
        ts = [r["step"] for r in t]
        obs = np.array([r["observed_decrease"] for r in t], dtype=float)
        cer = np.array([r["certified_decrease"] for r in t], dtype=float)
        rose = np.isfinite(obs) & (obs <= 0)
        ax2.plot(ts, np.where(rose | ~np.isfinite(obs), np.nan, obs), "-", color="C0", lw=1.2,
                 label=f"observed $1-(\\Phi_{{k+T}}/\\Phi_k)^{{1/T}}$, T = {p['track_every']}")
        if rose.any():  # windows where the loss rose: no decrease to draw on a log scale
            lo = np.nanmin(np.where(obs > 0, obs, np.nan)) if (obs > 0).any() else 1e-12
            ax2.plot(np.array(ts)[rose], np.full(rose.sum(), lo), "|", color="C1", ms=8,
                     label=f"the loss rose over the window ({rose.sum()} of {len(ts)})")
        keep = np.isfinite(cer) & (cer > 0)
        ax2.plot(np.array(ts)[keep], cer[keep], "o", ms=3, color="C3", label="certified $\\eta\\mu_k$")
        ax2.set_yscale("log")
        ax2.set_xlabel("step k")
        ax2.set_ylabel("decrease of the loss per step")
        ax2.grid(True, which="major", alpha=0.3)
        ratio = s["median_observed_over_certified"]
        ax2.set_title("median observed / certified: " + (f"{ratio:.3g}" if ratio else "n/a"), fontsize=9)
        ax2.legend(fontsize=8)
    save_figure(fig, path)
