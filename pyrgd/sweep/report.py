"""The records of a sweep: results.csv and summary.csv (written atomically, read back typed), the summary over
seeds with its text table, and the plots heatmap.png and final_loss.png (PNG, 100 dpi, written atomically)."""
from __future__ import annotations

import csv
import io
import math
import numbers

import numpy as np

from .grid import _fmt_param

# --------------------------------------------------------------------------------------------- CSV
def _cell_text(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "True" if v else "False"
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        return repr(float(v))
    return str(v)


def _parse_text(s: str):
    if s == "":
        return None
    if s in ("True", "False"):
        return s == "True"
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        return s


def _write_rows(path, rows):
    from ..runio import atomic_write

    header = []
    for r in rows:
        for k in r:
            if k not in header:
                header.append(k)

    def write(f):
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for r in rows:
            w.writerow([_cell_text(r.get(k)) for k in header])

    atomic_write(path, write)


def read_results(path) -> list:
    """The rows of a results.csv (or summary.csv) as dicts of typed values (None for empty cells)."""
    from ..runio import read_csv_table

    header, body = read_csv_table(path)
    return [{k: (_parse_text(v) if k not in ("cell", "tail") else v) for k, v in zip(header, r)} for r in body]


# --------------------------------------------------------------------------------------------- summary


def _median(vals):
    v = [float(x) for x in vals if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.median(v)) if v else None


def summarize(rows: list) -> list:
    """Group result rows over seeds: one row per combination of the other parameters, with seeds (count),
    converged_fraction, median_steps_to_tol (over the converged seeds), median_relative_loss, median_final_loss,
    median_factor, certified_fraction (Theorem 2.2's initial conditions hold: GD is certified for every step size
    below its eta_max), certified_at_lr_fraction (they hold and the cell's own lr is below eta_max: the run that
    was made is certified), median_lr, median_eta_max (Theorem 2.2's step-size bound), median_sigma_min_F1,
    median_mu_0."""
    param_keys = ["N", "n1", "n1_over_N", "tail", "L", "activation", "init"]
    for r in rows:
        for k in r:
            if "." in k and k not in param_keys:
                param_keys.append(k)
    groups: dict = {}
    for r in rows:
        key = tuple(_fmt_param(r.get(k)) for k in param_keys)
        groups.setdefault(key, []).append(r)
    out = []
    for _key, rs in groups.items():
        g = {k: rs[0].get(k) for k in param_keys}
        n = len(rs)
        conv = [r for r in rs if r.get("converged")]
        g.update({
            "seeds": n,
            "converged_fraction": len(conv) / n,
            "median_steps_to_tol": _median([r.get("steps_to_tol") for r in conv]),
            "median_relative_loss": _median([r.get("relative_loss") for r in rs]),
            "median_final_loss": _median([r.get("final_loss") for r in rs]),
            "median_factor": _median([r.get("median_factor") for r in rs]),
            "certified_fraction": sum(1 for r in rs if r.get("nguyen_conditions_hold")) / n,
            "certified_at_lr_fraction": sum(1 for r in rs if r.get("nguyen_holds")) / n,
            "median_lr": _median([r.get("lr") for r in rs]),
            "median_eta_max": _median([r.get("nguyen_eta_max") for r in rs]),
            "median_sigma_min_F1": _median([r.get("sigma_min_F1") for r in rs]),
            "median_mu_0": _median([r.get("mu_0") for r in rs]),
        })
        out.append(g)
    return out


def format_summary(summary: list) -> str:
    """The summary rows as a text table."""
    if not summary:
        return "(no finished cells)"
    extra = [k for k in summary[0] if "." in k]
    cols = ["N", "n1", "n1_over_N", "tail", "activation", "init"] + extra + \
        ["seeds", "converged_fraction", "median_steps_to_tol", "median_relative_loss", "certified_fraction",
         "certified_at_lr_fraction"]
    heads = {"n1_over_N": "n1/N", "converged_fraction": "converged", "median_steps_to_tol": "steps (median)",
             "median_relative_loss": "rel. loss (median)", "certified_fraction": "certified",
             "certified_at_lr_fraction": "at lr"}

    def fmt(k, v):
        if v is None:
            return "-"
        if k in ("converged_fraction", "certified_fraction", "certified_at_lr_fraction"):
            return f"{v:.2f}"
        if k == "median_relative_loss":
            return f"{v:.2e}"
        if k == "median_steps_to_tol":
            return f"{v:g}"
        if k == "n1_over_N":
            return f"{v:.4g}"
        return str(v)

    table = [[heads.get(k, k) for k in cols]] + [[fmt(k, r.get(k)) for k in cols] for r in summary]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in table)


# --------------------------------------------------------------------------------------------- plots
def _panels(summary):
    """Group summary rows by everything except N and n1: {label: rows}."""
    keys = ["tail", "activation", "init"] + [k for k in (summary[0] if summary else {}) if "." in k]
    panels: dict = {}
    for r in summary:
        label = ", ".join(f"{k}={r.get(k)}" for k in keys)
        panels.setdefault(label, []).append(r)
    return panels


def _save(fig, path):
    from ..runio import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write(path, lambda f: f.write(buf.getvalue()), mode="wb")


def _ratio_label(r):
    return f"{r:.3g}"


def certified_outline(cert) -> list:
    """The boundary of the certified region of a heat map: ``cert`` is a boolean (rows, cols) mask (row i = the
    i-th N, column j = the j-th n_1/N, cell (i, j) drawn as the unit square centred at x = j, y = i); returns the
    unit edges ([x0, x1], [y0, y1]) that separate a certified cell from an uncertified one or from the map's
    border."""
    cert = np.asarray(cert, dtype=bool)
    n_i, n_j = cert.shape
    segs = []
    for i in range(n_i):
        for j in range(n_j):
            if not cert[i, j]:
                continue
            for di, dj, seg in ((-1, 0, ([j - .5, j + .5], [i - .5, i - .5])),
                                (1, 0, ([j - .5, j + .5], [i + .5, i + .5])),
                                (0, -1, ([j - .5, j - .5], [i - .5, i + .5])),
                                (0, 1, ([j + .5, j + .5], [i - .5, i + .5]))):
                ii, jj = i + di, j + dj
                if not (0 <= ii < n_i and 0 <= jj < n_j) or not cert[ii, jj]:
                    segs.append(seg)
    return segs


def _span(v):
    lo, hi = min(v), max(v)
    return f"{lo:.1e}" if lo == hi else f"{lo:.1e}..{hi:.1e}"


def plot_heatmap(path, summary: list, rel_tol=None) -> None:
    """heatmap.png: median steps to tolerance over (N, n_1/N), one panel per other combination, with the certified
    region outlined: dashed around the cells where Theorem 2.2's three initial conditions hold for every seed (GD
    is certified for any step size eta < eta_max), solid around those where, in addition, the lr the cells trained
    with is below eta_max for every seed (the runs shown are themselves certified). The panel's title gives the
    range of eta_max and of lr over the dashed cells: eta_max is often many orders of magnitude below a step size
    at which GD gets anywhere."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    panels = _panels(summary)
    n = len(panels)
    ncol = min(n, 2)
    nrow = math.ceil(n / ncol)
    fig = Figure(figsize=(6.2 * ncol, 4.4 * nrow), layout="constrained")
    FigureCanvasAgg(fig)
    axs = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
    all_steps = [r["median_steps_to_tol"] for r in summary if r.get("median_steps_to_tol")]
    norm = LogNorm(vmin=max(1.0, min(all_steps)), vmax=max(max(all_steps), 2.0)) if all_steps else None
    im = None
    for ax, (label, rows) in zip(axs, panels.items()):
        Ns = sorted({r["N"] for r in rows})
        ratios = sorted({round(r["n1_over_N"], 12) for r in rows})
        A = np.full((len(Ns), len(ratios)), np.nan)
        cert = np.zeros_like(A, dtype=bool)
        cert_lr = np.zeros_like(A, dtype=bool)
        eta_max, lrs = [], []
        for r in rows:
            i, j = Ns.index(r["N"]), ratios.index(round(r["n1_over_N"], 12))
            if r["converged_fraction"] >= 0.5 and r.get("median_steps_to_tol") is not None:
                A[i, j] = max(r["median_steps_to_tol"], 1.0)
            cert[i, j] = r["certified_fraction"] >= 1.0
            cert_lr[i, j] = r.get("certified_at_lr_fraction", 0.0) >= 1.0
            if cert[i, j]:
                eta_max += [r["median_eta_max"]] if r.get("median_eta_max") is not None else []
                lrs += [r["median_lr"]] if r.get("median_lr") is not None else []
            txt = "no" if np.isnan(A[i, j]) else f"{A[i, j]:.0f}"
            if 0 < r["converged_fraction"] < 1:
                txt += f"\n({r['converged_fraction']:.2f})"
            dark = norm is not None and not np.isnan(A[i, j]) and norm(A[i, j]) < 0.45
            ax.text(j, i, txt, ha="center", va="center", fontsize=7, color="w" if dark else "0.1")
        ax.imshow(np.ones_like(A), cmap="Greys", vmin=0, vmax=5, aspect="auto", origin="lower")  # 'no' cells grey
        im = ax.imshow(np.ma.masked_invalid(A), cmap="viridis", norm=norm, aspect="auto", origin="lower")
        for seg in certified_outline(cert):  # the conditions hold: certified for eta < eta_max
            ax.plot(*seg, color="k", lw=2.0, ls=(0, (3, 2)))
        for seg in certified_outline(cert_lr):  # and the lr used is below eta_max: the runs are certified
            ax.plot(*seg, color="k", lw=3.0)
        ax.set_xticks(range(len(ratios)), [_ratio_label(r) for r in ratios])
        ax.set_yticks(range(len(Ns)), [str(N) for N in Ns])
        ax.set_xlabel("$n_1 / N$")
        ax.set_ylabel("N")
        if not cert.any():
            note = "no cell certified by Thm 2.2"
        else:
            note = "dashed: Thm 2.2's conditions hold for every seed (certified for eta < eta_max)"
            if eta_max and lrs:
                note += f"\neta_max {_span(eta_max)}, lr used {_span(lrs)}"
            note += ("\nsolid: the lr used is below eta_max as well" if cert_lr.any() else
                     "; no run certified at its own lr")
        ax.set_title(f"{label}\n{note}", fontsize=9)
    for ax in axs[n:]:
        ax.set_visible(False)
    if im is not None and all_steps:
        fig.colorbar(im, ax=list(axs[:n]), label="median steps to tolerance"
                     + (f" (rel. loss {rel_tol:g})" if rel_tol else ""))
    fig.suptitle("GD: median steps to tolerance over the seeds\n('no': under half of the seeds converged; "
                 "(f): the fraction that did)", fontsize=9)
    _save(fig, path)


def plot_final_loss(path, summary: list, rel_tol=None) -> None:
    """final_loss.png: median relative final loss against n_1/N, one line per N, one panel per other combination."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    panels = _panels(summary)
    n = len(panels)
    ncol = min(n, 2)
    nrow = math.ceil(n / ncol)
    fig = Figure(figsize=(6.2 * ncol, 4.2 * nrow), layout="constrained")
    FigureCanvasAgg(fig)
    axs = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
    for ax, (label, rows) in zip(axs, panels.items()):
        for k, N in enumerate(sorted({r["N"] for r in rows})):
            pts = sorted((r["n1_over_N"], r["median_relative_loss"]) for r in rows
                         if r["N"] == N and r.get("median_relative_loss"))
            pts = [(x, y) for x, y in pts if y > 0]
            if pts:
                ax.plot(*zip(*pts), "o-", color=f"C{k % 10}", label=f"N = {N}")
        if rel_tol:
            ax.axhline(rel_tol, color="0.4", ls="--", lw=1, label=f"tolerance {rel_tol:g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ratios = sorted({r["n1_over_N"] for r in rows})
        if len(ratios) <= 12:
            ax.set_xticks(ratios, [_ratio_label(x) for x in ratios])
            ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("$n_1 / N$")
        ax.set_ylabel("final loss / initial loss (median over seeds)")
        ax.grid(True, which="major", alpha=0.3)
        ax.set_title(label, fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    for ax in axs[n:]:
        ax.set_visible(False)
    _save(fig, path)
