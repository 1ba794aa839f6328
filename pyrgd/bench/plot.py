"""The figure of a benchmark run: where the fused step stands between its baselines, the targets and the roofline.

One panel per problem with a speed-up target (B1, B2, B1d; G1 on the GPU): seconds per step of every candidate
(bars, ranked: the fastest on top; the compiled peers in orange), the fused time each speed-up target asks for
(baseline s / threshold, dotted; for a "best peer" target the faster of torch.compile and JAX jit) and the roofline
floor, the fused step's flops at the FMA peak measured in the same run (dashed: no implementation of the fused
algorithm can be faster here), with the fused step's share of that peak in the panel's title. One panel for the width sweep B4 (fused seconds per neuron against n1, timed one size after the other and
interleaved, with the +-15% band around the smallest of the timing the target uses) when it ran.

    python -m pyrgd.bench.plot RESULT.json OUT.png     # a committed result, drawn again
    pyrgd bench --plot OUT.png                         # drawn at the end of a run
"""
from __future__ import annotations

import json
import sys

from .candidates import PEERS
from .report import TARGETS


def _speed_panels(result):
    names = []
    for t in TARGETS:
        if (t["device"] == result.get("device", "cpu") and t["kind"] in ("speedup", "best_peer")
                and t["problem"] not in names):
            names.append(t["problem"])
    probs = {p["name"]: p for p in result.get("problems", [])}
    return [probs[n] for n in names if n in probs]


def plot_result(result: dict, path: str) -> list[str]:
    """Draw the figure of ``result`` (a ``pyrgd bench`` result dict) into ``path``; returns the panel titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speed = _speed_panels(result)
    sweep = [p for p in result.get("problems", []) if p.get("group") == "B4"
             and p["candidates"].get("fused", {}).get("seconds")]
    n = len(speed) + (1 if len(sweep) >= 2 else 0)
    if n == 0:
        raise ValueError("nothing to plot: the result has no problem with a speed-up target nor a B4 sweep")
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 3.8), squeeze=False)
    titles = []
    for ax, p in zip(axes[0], speed):
        rows = sorted(((c, r["seconds"]) for c, r in p["candidates"].items()
                       if r.get("status") == "ok" and r.get("seconds")), key=lambda cs: cs[1])  # the ranking
        labels = [c for c, _ in rows]
        ax.barh(range(len(rows)), [s for _, s in rows],
                color=["C0" if c == "fused" else "C1" if c in PEERS else "C7" for c in labels])
        ax.set_yticks(range(len(rows)), labels)
        ax.invert_yaxis()
        secs = dict(rows)
        colors = iter(("C3", "C4", "C5", "C6", "C8"))
        for t in TARGETS:
            if t.get("problem") == p["name"] and t["kind"] == "speedup" and t["candidate"] in secs:
                need = secs[t["candidate"]] / t["threshold"]
                ax.axvline(need, color=next(colors), ls=":", lw=1.5,
                           label=f"fused time for {t['threshold']:g}x {t['candidate']}")
            if t.get("problem") == p["name"] and t["kind"] == "best_peer":
                peers = [c for c in t["candidates"] if c in secs]
                if peers:
                    best = min(peers, key=secs.get)
                    ax.axvline(secs[best] / t["threshold"], color=next(colors), ls=":", lw=1.5,
                               label=f"fused time for {t['threshold']:g}x the best peer ({best})")
        if p.get("fused_flops") and p.get("peak_gflops"):
            floor = p["fused_flops"] / (p["peak_gflops"] * 1e9)
            ax.axvline(floor, color="k", ls="--", lw=1.2, label="roofline floor (fused flops at FMA peak)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xlabel("seconds per GD step")
        title = f"{p['name']}: N={p['N']} d={p['d']} widths={p['widths']}\n{p['activation']}"
        if p.get("dtype") and p["dtype"] != "float32":
            title += f", {p['dtype']}"
        if p.get("fused_pct_peak") is not None:
            title += f"; fused at {p['fused_pct_peak']:.3g}% of peak"
        ax.set_title(title, fontsize=8)
        titles.append(p["name"])
    if len(sweep) >= 2:
        ax = axes[0][-1]
        n1 = [p["widths"][0] for p in sweep]
        per = [p["candidates"]["fused"]["seconds"] / p["widths"][0] * 1e6 for p in sweep]
        inter = (result.get("interleaved") or {}).get("B4")
        iper = ([inter["seconds"][str(n)] / n * 1e6 for n in n1]
                if inter and all(str(n) in inter["seconds"] for n in n1) else None)
        lo = min(iper or per)  # the band around the timing the target uses
        ax.fill_between([min(n1), max(n1)], lo, 1.15 * lo, color="C2", alpha=0.15, label="within 15% of the least")
        ax.plot(n1, per, "o-" if iper is None else "o:", color="C0",
                label="fused" if iper is None else "fused, one size after the other")
        if iper is not None:
            ax.plot(n1, iper, "s-", color="C1", label=f"fused, interleaved ({inter['rounds']} rounds; the target)")
            per = per + iper
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.4 * max(per))
        ax.set_xlabel("n1")
        ax.set_ylabel("microseconds per neuron per step")
        ax.set_title("B4: time per neuron against the width", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
        titles.append("B4")
    m = result.get("machine", {})
    fig.suptitle(f"pyrgd bench {result.get('date', '')} on {m.get('cpu_model') or m.get('gpu_name') or '?'}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return titles


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m pyrgd.bench.plot RESULT.json OUT.png", file=sys.stderr)
        return 2
    try:
        with open(argv[0]) as f:
            result = json.load(f)
        plot_result(result, argv[1])
    except (OSError, ValueError, KeyError) as e:
        print(f"pyrgd.bench.plot: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
