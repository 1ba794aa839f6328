"""E1, width thresholds of two-layer ReLU networks (LeCun init): where GD converges against where Nguyen 2021,
Theorem 2.2 certifies it.

For every N the data (X, Y) are fixed (``data_seed``) and the network is F_2 = relu(X W_1) W_2 with
(W_1)_ij ~ N(0, 1/d), (W_2)_j ~ N(0, 1/n_1) (Nguyen 2021, Sec. 3.2, whose corollary needs n_1 of order N^2).

- **GD threshold** (measured): n_1 runs over N * n1_min_over_N * n1_factor^k (rounded, up to n1_max_over_N * N);
  at each width GD is run from every seed in ``seeds`` (:func:`pyrgd.sweep.run_cell`: step size ``lr``, at most
  ``steps`` steps, converged when the loss falls to ``rel_tol`` of its start); a width stops at its first seed that
  does not converge. The threshold is the smallest width where every seed converged. With ``strict_rel_tol`` > 0 a
  second, stricter threshold is measured from the same runs: each run then trains until its loss falls to
  ``strict_rel_tol`` of its start (or the budget ends) and counts as converged at ``rel_tol`` when its loss at the
  end is at most ``rel_tol`` of its start; the search goes on up the grid until every seed reaches
  ``strict_rel_tol``, and a width stops at its first seed that misses ``rel_tol`` (or misses ``strict_rel_tol``
  once the ``rel_tol`` threshold is known).
- **Certified threshold** (computed, not measured): the smallest n_1 at which the three initial conditions of
  Theorem 2.2 (docs/theory.md section 4.2, C_l = C) hold. The conditions need widths (1e8 and more) far beyond
  what can be built here, so the threshold is computed from the large-width values of the quantities the
  conditions use [derived: docs/theory.md section 4.2, "Large-width values"]:
  alpha_0^2 = lambda_min(F_1 F_1^T) -> n_1 lambda_*, lambda_* = lambda_min(E_w[relu(Xw) relu(Xw)^T]), w ~ N(0, I/d)
  (the law of large numbers over the n_1 neurons; lambda_* exactly, by the arc-cosine closed form);
  ||W_1||_2 -> sqrt(n_1/d) + 1 and ||W_2||_2 -> 1 + sqrt(n_2/n_1) (the edges of the spectra of Gaussian matrices);
  Phi_0 -> (n_2 tr G + ||Y||_F^2) / 2 (its mean: F_2 is Gaussian given W_1, with covariance ~ G, independent of Y).
  Each condition's margin lhs/rhs increases with n_1; the threshold is where the last one reaches 1. For large n_1
  the binding condition initW gives n_1 ~ (16 ||X||_F sqrt(2 Phi_0) / (sqrt(d) lambda_*))^2, of order N^2 / lambda_*^2:
  the paper's N^2 when lambda_* stays bounded, faster when lambda_* falls with N (a fixed d).
- **Exact margins**: the margins of real LeCun nets at the widths ``exact_n1`` (n_1 >= N), computed by
  :func:`pyrgd.theory.nguyen2021_certificate`, beside the predicted ones, to show where the prediction is reached.
- **Infinite-width reference** (computed): GD on the net linearized at an infinitely wide initialization
  (:class:`LazyLimit`). There the NTK is n_1 G (G the lambda_* Gram), so with GD's step eta / n_1 the residual
  evolves as r_k = (I - eta G)^k r_0 and, averaged over the initial outputs F_2(0) ~ N(0, G) independent of Y, the
  relative loss is l(k) = sum_i (1 - eta g_i)^(2k) c_i / sum_i c_i with c_i = |u_i^T Y|^2 + n_2 g_i (g_i, u_i the
  eigenpairs of G) [derived: docs/theory.md section 5, "GD in the infinite-width limit"]. Per N: the steps it needs to
  reach rel_tol and strict_rel_tol at lr = "auto"'s rule (eta = 0.5 / g_max) and its loss at the step budget; per
  GD run: l(k) at the run's own step size and step count, so that each run is compared with an infinitely wide
  net trained as long. Where even this limit needs more steps than the budget, a net in the lazy regime cannot
  converge within it, and the measured threshold then measures the budget as much as the width.

Outputs: E1.csv (per N: both thresholds, lambda_*, the infinite-width steps), E1_gd.csv (every GD run, with the
infinite-width loss after as many steps), E1_margins.csv (exact and predicted margins), E1.png (left: thresholds
against N with fitted slopes; middle: margins against n_1; right: every GD run's loss at its end against n_1 / N,
beside the infinite-width net's loss after the budget).
"""
from __future__ import annotations

import math
import os

import numpy as np

from ..errors import PyrgdError
from ._common import Param, check_params, fit_loglog, progress_bar, save_figure, write_csv

SPEC = {
    "N": Param("int_list", "sample sizes", lo=1),
    "d": Param("int", "input dimension", lo=1),
    "inputs": Param("str", "synthetic inputs: gaussian or sphere"),
    "targets": Param("str", "synthetic targets: gaussian or teacher"),
    "data_seed": Param("int", "seed of the data", lo=0),
    "seeds": Param("int_list", "seeds of the initial weights for GD", lo=0),
    "steps": Param("int", "GD step budget", lo=1),
    "rel_tol": Param("float", "GD converged when loss <= rel_tol * initial loss", lo=0.0),
    "strict_rel_tol": Param("float", "a second, stricter tolerance (0: none)", lo=0.0),
    "lr": Param("raw", "GD step size: 'auto' or a number"),
    "track_every": Param("int", "steps between certificate evaluations during GD", lo=1),
    "n1_min_over_N": Param("float", "smallest width of the GD search, as a multiple of N", lo=0.0),
    "n1_factor": Param("float", "ratio of two successive widths of the GD search", lo=1.0),
    "n1_max_over_N": Param("float", "largest width of the GD search, as a multiple of N", lo=0.0),
    "C": Param("float", "Nguyen 2021's constants C_l (the paper's applications use 1)", lo=0.0),
    "exact_n1": Param("int_list", "widths of the real nets whose exact margins are computed", lo=1),
    "exact_seeds": Param("int_list", "seeds of those nets", lo=0),
    "threads": Param("raw", "CPU threads of each GD run: a positive integer, or 'auto' (1 below N n_1 = 2^22, "
                            "every core above)"),
}
#: with threads = "auto", GD runs with N n_1 below this use one thread (their steps are too short to share)
AUTO_THREADS_SIZE = 2 ** 22
CONDITIONS = ("initW", "initF", "initS")


def check(params) -> dict:
    from ..config import resolve_config

    p = check_params("E1", SPEC, params)
    try:
        resolve_config(overrides={"data": {"inputs": p["inputs"], "targets": p["targets"], "d": p["d"]},
                                  "train": {"lr": p["lr"], "steps": p["steps"], "rel_tol": p["rel_tol"]}})
    except PyrgdError as e:
        raise PyrgdError(f"E1.params: {e}") from None
    if p["n1_factor"] <= 1.0:
        raise PyrgdError(f"E1.params.n1_factor: expected a number > 1, got {p['n1_factor']!r}")
    for k in ("C", "n1_min_over_N"):
        if p[k] <= 0:
            raise PyrgdError(f"E1.params.{k}: expected a positive number, got {p[k]!r}")
    if p["strict_rel_tol"] >= p["rel_tol"] and p["strict_rel_tol"] != 0:
        raise PyrgdError(f"E1.params.strict_rel_tol: expected 0 or below rel_tol = {p['rel_tol']:g}, got "
                         f"{p['strict_rel_tol']!r}")
    th = p["threads"]
    if th != "auto" and not (isinstance(th, int) and not isinstance(th, bool) and th >= 1):
        raise PyrgdError(f"E1.params.threads: expected a positive integer or 'auto', got {th!r}")
    if p["n1_max_over_N"] < p["n1_min_over_N"]:
        raise PyrgdError(f"E1.params.n1_max_over_N: expected at least n1_min_over_N = {p['n1_min_over_N']:g}")
    return p


def make_data(p, N):
    from ..data import synthetic

    return synthetic(N, p["d"], 1, inputs=p["inputs"], targets=p["targets"], seed=p["data_seed"])


def gd_config(p, N, n1, seed) -> dict:
    from ..config import resolve_config

    return resolve_config(overrides={
        "data": {"source": "synthetic", "N": N, "d": p["d"], "n_out": 1, "inputs": p["inputs"],
                 "targets": p["targets"], "seed": p["data_seed"]},
        "model": {"widths": [n1, 1], "activation": "relu", "init": "lecun", "seed": seed, "dtype": "float64"},
        "train": {"lr": p["lr"], "steps": p["steps"], "rel_tol": p["strict_rel_tol"] or p["rel_tol"], "tol": 0.0,
                  "track_every": p["track_every"], "threads": gd_threads(p, N, n1)}})


def gd_threads(p, N, n1):
    """Threads of one GD run (the config's train.threads): p["threads"], or with "auto" 1 for small steps (fastest)
    and 0 (the machine's default: every core) for N n_1 >= AUTO_THREADS_SIZE."""
    if p["threads"] != "auto":
        return p["threads"]
    return 1 if N * n1 < AUTO_THREADS_SIZE else 0


# --------------------------------------------------------------------------------------------- Theorem 2.2
def theorem22_conditions(alpha, norms, C, norm_X, loss_0) -> dict:
    """{name: (lhs, rhs, margin)} of Theorem 2.2's three initial conditions for given quantities
    [paper: Nguyen 2021, Thm 2.2; docs/theory.md section 4.2]: alpha = alpha_0, norms = (||W_1||_2, ..., ||W_L||_2),
    C = C_l (a float), norm_X = ||X||_F, loss_0 = Phi_0, all Python floats. The same formulas as
    :func:`pyrgd.theory.nguyen2021_certificate` (a test checks that they agree), here as a function of the quantities
    so that they can be evaluated at their predicted large-width values."""
    lbar = [n + C for n in norms]
    p_all = math.prod(lbar)
    p_hid = math.prod(lbar[:-1])
    r = math.sqrt(2.0 * loss_0)
    s_hid = sum(p_hid ** 2 / lb ** 2 for lb in lbar[:-1])
    pairs = {
        "initW": (alpha ** 2, 16 * norm_X * max(p_all / (lb * C) for lb in lbar) * r),
        "initF": (alpha ** 3, 32 * norm_X ** 2 * lbar[-1] * s_hid * r),
        "initS": (alpha ** 2, 16 * norm_X ** 2 * lbar[-1] ** 2 * s_hid),
    }
    return {k: (a, b, a / b if b > 0 else math.inf) for k, (a, b) in pairs.items()}


class Predictor:
    """The large-width values of Theorem 2.2's quantities for a two-layer ReLU net with LeCun init on (X, Y)
    (see the module docstring) and the conditions evaluated at them."""

    def __init__(self, X, Y, C=1.0):
        from ..theory import lambda_star

        self.N, self.d = X.shape
        self.n2 = Y.shape[1]
        ls = lambda_star(X, "relu", w_var=1.0 / self.d)
        self.lambda_star = ls.value
        self.gram = ls.gram
        self.trace_G = float(np.trace(ls.gram))
        self.norm_X = float(np.linalg.norm(X))
        self.norm_Y2 = float((Y.astype(np.float64) ** 2).sum())
        self.C = C

    def quantities(self, n1):
        alpha = math.sqrt(max(n1 * self.lambda_star, 0.0))
        norms = (math.sqrt(n1 / self.d) + 1.0, 1.0 + math.sqrt(self.n2 / n1))
        loss_0 = 0.5 * (self.n2 * self.trace_G + self.norm_Y2)
        return alpha, norms, loss_0

    def conditions(self, n1):
        alpha, norms, loss_0 = self.quantities(n1)
        return theorem22_conditions(alpha, norms, self.C, self.norm_X, loss_0)

    def min_margin(self, n1):
        return min(c[2] for c in self.conditions(n1).values())

    def threshold(self, n1_max=1e40):
        """The smallest n_1 (an integer) at which every predicted margin is >= 1; inf if none below n1_max."""
        if self.lambda_star <= 0:
            return math.inf
        k, n1 = 0, 1.0
        while self.min_margin(n1) < 1.0:  # geometric scan, then bisection inside the bracket
            k += 1
            n1 = 2.0 ** (k / 4)
            if n1 > n1_max:
                return math.inf
        if k == 0:
            return 1.0
        lo, hi = math.floor(2.0 ** ((k - 1) / 4)), math.ceil(n1)  # margin(lo) < 1 <= margin(hi), integers
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if self.min_margin(mid) >= 1.0 else (mid, hi)
        return float(hi)


class LazyLimit:
    """GD on the two-layer ReLU net with LeCun init, linearized at an infinitely wide initialization (see the module
    docstring; [derived: docs/theory.md section 5, "GD in the infinite-width limit"]).

    gram: G (N, N) float64, the lambda_* Gram (:attr:`Predictor.gram`); Y: (N, n_2) targets. The relative losses are
    averages over the random initial outputs F_2(0) ~ N(0, G) per column, independent of Y.
    """

    def __init__(self, gram, Y):
        g, U = np.linalg.eigh(np.asarray(gram, dtype=np.float64))
        self.g = np.clip(g, 0.0, None)  # eigenvalues of G, ascending (rounding can leave tiny negatives)
        self.U = U
        Y = np.asarray(Y, dtype=np.float64).reshape(len(g), -1)
        self.weights = ((U.T @ Y) ** 2).sum(axis=1) + Y.shape[1] * self.g  # c_i = |u_i^T Y|^2 + n_2 g_i
        self.auto_step = 0.5 / self.g[-1]  # lr = "auto"'s rule on the limit's kernel: 0.5 / g_max
        self.condition = self.g[-1] / self.g[0] if self.g[0] > 0 else math.inf

    def relative_loss(self, k, step=None, residual=None) -> float:
        """Phi_k / Phi_0 after k steps of size step / n_1 (step: eta n_1; None: the auto step 0.5 / g_max).
        residual: None for the average over the initial outputs, or one net's r_0 = F_2(0) - Y (N, n_2)."""
        h = self.auto_step if step is None else float(step)
        c = self.weights
        if residual is not None:
            r0 = np.asarray(residual, dtype=np.float64).reshape(len(self.g), -1)
            c = ((self.U.T @ r0) ** 2).sum(axis=1)
        q = np.abs(1.0 - h * self.g) ** (2 * int(k))
        return float(q @ c / c.sum())

    def steps_to(self, rel_tol, step=None, k_max=10 ** 12):
        """The fewest steps k with relative_loss(k) <= rel_tol (None if not within k_max, or if the step diverges)."""
        h = self.auto_step if step is None else float(step)
        if rel_tol >= 1.0:
            return 0
        if h * self.g[-1] >= 2.0 or (self.g[0] <= 0 and self.weights[0] > 0):
            return None
        hi = 1
        while self.relative_loss(hi, h) > rel_tol:  # every factor |1 - h g_i| < 1: monotone in k
            hi *= 2
            if hi > k_max:
                return None
        lo = hi // 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.relative_loss(mid, h) > rel_tol else (lo, mid)
        return hi if self.relative_loss(lo, h) > rel_tol else lo


# --------------------------------------------------------------------------------------------- the run
def gd_widths(p, N):
    out, x = [], p["n1_min_over_N"] * N
    while x <= p["n1_max_over_N"] * N * (1 + 1e-12):
        n1 = max(1, int(round(x)))
        if n1 not in out:
            out.append(n1)
        x *= p["n1_factor"]
    return out


def _gd_search(p, N, bar, gd_rows, lazy) -> tuple:
    """(threshold at rel_tol, threshold at strict_rel_tol or None): the GD search of the module docstring at N;
    every GD run is appended to gd_rows, with the infinite-width net's relative loss (``lazy``, a
    :class:`LazyLimit`) after as many steps of the same size (eta n_1)."""
    from ..sweep import run_cell

    strict = p["strict_rel_tol"] > 0
    gd_thr = strict_thr = None
    budget = len(gd_widths(p, N)) * len(p["seeds"])  # the most runs this N can take
    for n1 in gd_widths(p, N):
        ok = ok_strict = True
        for i, seed in enumerate(p["seeds"]):
            bar.set_postfix_str(f"N={N} n1={n1} seed={seed}")
            r = run_cell(gd_config(p, N, n1, seed), C=p["C"])
            if r.pop("_stopped"):  # Ctrl-C or SIGTERM
                raise KeyboardInterrupt
            rel = r["relative_loss"]
            r["converged_strict"] = bool(r["converged"]) if strict else None
            if strict:  # the run trained to strict_rel_tol; rel_tol is judged on its loss at the end
                r["converged"] = bool(r["converged"]) or (rel is not None and rel <= p["rel_tol"])
            if r.get("lr") is not None and r.get("steps") is not None:
                r["lazy_relative_loss"] = lazy.relative_loss(r["steps"], r["lr"] * n1)
                r["faster_than_lazy"] = bool(rel is not None and rel <= r["lazy_relative_loss"])
            gd_rows.append({"N": N, "n1": n1, "seed": seed, **r})
            bar.update(1)
            budget -= 1
            ok = ok and r["converged"]
            ok_strict = ok_strict and bool(r["converged_strict"])
            if not ok or (strict and gd_thr is not None and not ok_strict):
                budget -= len(p["seeds"]) - i - 1
                break
        if ok and gd_thr is None:
            gd_thr = n1
        if strict and ok and ok_strict:
            strict_thr = n1
        if gd_thr is not None and (not strict or strict_thr is not None):
            break
    bar.total -= budget  # the runs this N did not need
    bar.refresh()
    return gd_thr, strict_thr


def run(p, out, progress=False) -> dict:
    from ..model import PyramidalNet
    from ..theory import nguyen2021_certificate

    gd_rows, margin_rows, rows, preds = [], [], [], {}
    total = sum(len(gd_widths(p, N)) * len(p["seeds"]) for N in p["N"])
    bar = progress_bar(progress, total, "E1 GD", unit="run")
    try:
        for N in p["N"]:
            X, Y = make_data(p, N)
            pred = Predictor(X, Y, p["C"])
            lazy = LazyLimit(pred.gram, Y)
            preds[N] = pred
            gd_thr, strict_thr = _gd_search(p, N, bar, gd_rows, lazy)
            for n1 in [m for m in p["exact_n1"] if m >= N]:
                pc = pred.conditions(n1)
                for seed in p["exact_seeds"]:
                    net = PyramidalNet(p["d"], [n1, 1], activation="relu", init="lecun", seed=seed)
                    c = nguyen2021_certificate(net, X, Y, C=p["C"])
                    row = {"N": N, "n1": n1, "seed": seed, "alpha_0": c.alpha_0, "loss_0": c.loss_0}
                    for k in CONDITIONS:
                        row[f"margin_{k}"] = c.conditions[k].margin
                        row[f"predicted_margin_{k}"] = pc[k][2]
                    row["margin_min"] = min(c.conditions[k].margin for k in CONDITIONS)
                    row["predicted_margin_min"] = min(pc[k][2] for k in CONDITIONS)
                    margin_rows.append(row)
            cert_thr = pred.threshold()
            binding = min(pred.conditions(cert_thr).items(), key=lambda kv: kv[1][2])[0] \
                if math.isfinite(cert_thr) else None
            rows.append({"N": N, "gd_threshold": gd_thr, "gd_threshold_over_N": gd_thr / N if gd_thr else None,
                         "gd_threshold_strict": strict_thr,
                         "certified_threshold": cert_thr, "certified_over_N2": cert_thr / N ** 2,
                         "lambda_star": pred.lambda_star, "last_condition": binding,
                         "ratio_certified_to_gd": cert_thr / gd_thr if gd_thr else None,
                         "lazy_steps": lazy.steps_to(p["rel_tol"]),
                         "lazy_steps_strict": lazy.steps_to(p["strict_rel_tol"]) if p["strict_rel_tol"] > 0 else None,
                         "lazy_relative_loss_at_budget": lazy.relative_loss(p["steps"]),
                         "lazy_condition": lazy.condition})
    finally:
        bar.close()

    files = {"csv": os.path.join(out, "E1.csv"), "csv_gd": os.path.join(out, "E1_gd.csv"),
             "csv_margins": os.path.join(out, "E1_margins.csv"), "figure": os.path.join(out, "E1.png")}
    write_csv(files["csv"], rows)
    write_csv(files["csv_gd"], gd_rows)
    if margin_rows:
        write_csv(files["csv_margins"], margin_rows)
    Ns = [r["N"] for r in rows]
    s_gd, _ = fit_loglog(Ns, [r["gd_threshold"] or np.nan for r in rows])
    s_c, _ = fit_loglog(Ns, [r["certified_threshold"] for r in rows])
    s_cl, _ = fit_loglog(Ns, [r["certified_threshold"] * r["lambda_star"] ** 2 for r in rows])
    s_st, _ = fit_loglog(Ns, [r["gd_threshold_strict"] or np.nan for r in rows])
    findings = {"slope_gd_threshold": s_gd, "slope_certified_threshold": s_c,
                "slope_gd_threshold_strict": s_st if p["strict_rel_tol"] > 0 else None,
                "slope_certified_times_lambda_star_sq": s_cl,
                "thresholds": {str(r["N"]): {"gd": r["gd_threshold"], "gd_strict": r["gd_threshold_strict"],
                                             "certified": r["certified_threshold"],
                                             "lambda_star": r["lambda_star"],
                                             "lazy_steps": r["lazy_steps"],
                                             "lazy_steps_strict": r["lazy_steps_strict"],
                                             "lazy_relative_loss_at_budget": r["lazy_relative_loss_at_budget"]}
                               for r in rows},
                "runs_faster_than_lazy": sum(bool(g.get("faster_than_lazy")) for g in gd_rows),
                "runs": len(gd_rows),
                "measured": "gd, gd_strict (GD runs)",
                "computed": "certified (from the large-width limits); lazy_* (GD on the infinite-width linearized net)",
                "tolerance": f"loss <= {p['rel_tol']:g} of the initial loss within {p['steps']} steps, every seed "
                             f"of {p['seeds']}",
                "strict_tolerance": (f"loss <= {p['strict_rel_tol']:g} of the initial loss within {p['steps']} steps"
                                     if p["strict_rel_tol"] > 0 else None)}
    _plot(files["figure"], p, rows, margin_rows, gd_rows, findings, preds)
    return {**files, "findings": findings}


def _plot(path, p, rows, margin_rows, gd_rows, f, preds):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(18, 6.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax, ax2, ax3 = fig.subplots(1, 3)
    Ns = np.array([r["N"] for r in rows], dtype=float)
    gd = np.array([r["gd_threshold"] or np.nan for r in rows], dtype=float)
    ct = np.array([r["certified_threshold"] for r in rows], dtype=float)
    ax.plot(Ns, ct, "s-", color="C3",
            label=f"Thm 2.2 certifies (computed), slope {f['slope_certified_threshold']:.2f}")
    ax.plot(Ns, gd, "o-", color="C0", label=f"GD reaches {p['rel_tol']:g} (measured, every seed), slope "
                                            f"{f['slope_gd_threshold']:.2f}")
    if p["strict_rel_tol"] > 0:
        st = np.array([r["gd_threshold_strict"] or np.nan for r in rows], dtype=float)
        ax.plot(Ns, st, "D-", color="C2", ms=4, label=f"GD reaches {p['strict_rel_tol']:g} (measured), slope "
                                                      f"{f['slope_gd_threshold_strict']:.2f}")
        miss = [i for i, r in enumerate(rows) if r["gd_threshold_strict"] is None]
        if miss:
            ax.plot(Ns[miss], p["n1_max_over_N"] * Ns[miss], "^", color="C2", mfc="none", ms=7,
                    label=f"GD reaches {p['strict_rel_tol']:g}: at no width up to {p['n1_max_over_N']:g} N")
    none = [i for i, r in enumerate(rows) if r["gd_threshold"] is None]
    if none:
        ax.plot(Ns[none], p["n1_max_over_N"] * Ns[none], "v", color="C0", mfc="none", ms=7,
                label=f"GD reaches {p['rel_tol']:g}: at no width up to {p['n1_max_over_N']:g} N")
    ax.plot(Ns, Ns, ":", color="0.5", label="$n_1 = N$")
    lam = np.array([r["lambda_star"] for r in rows], dtype=float)
    if len(Ns) and np.isfinite(ct).all() and (lam > 0).all():
        ax.plot(Ns, ct * (lam / lam[0]) ** 2, "--", color="C3", alpha=0.5, lw=1.2,
                label=f"the same with $\\lambda_*$ held at its N = {int(Ns[0])} value, slope "
                      f"{f['slope_certified_times_lambda_star_sq']:.2f}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("N (samples)")
    ax.set_ylabel("width $n_1$")
    ax.set_title(f"two-layer ReLU, LeCun init, d = {p['d']}, {p['inputs']} inputs; GD measured: loss $\\leq$ tol "
                 f"of start\nwithin {p['steps']} steps for all of {len(p['seeds'])} seeds; Thm 2.2 computed from "
                 f"large-width limits", fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7.5, loc="center right")

    grid = np.logspace(0, np.log10(max(np.nanmax(ct) * 4, 10.0)) if np.isfinite(ct).any() else 12, 200)
    for k, r in enumerate(rows):
        pred = preds[r["N"]]
        g = grid[grid >= r["N"]]
        ax2.plot(g, [pred.min_margin(x) for x in g], "-", color=f"C{k % 10}", lw=1.2,
                 label=f"N = {r['N']}: predicted")
        pts = [m for m in margin_rows if m["N"] == r["N"]]
        if pts:
            ax2.plot([m["n1"] for m in pts], [max(m["margin_min"], 1e-30) for m in pts], "o", ms=4,
                     color=f"C{k % 10}", mfc="none", label=f"N = {r['N']}: real nets")
    ax2.axhline(1.0, color="k", lw=0.8)
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("width $n_1$")
    ax2.set_ylabel("smallest margin lhs/rhs of Thm 2.2's conditions")
    ax2.set_title("certified where the margin reaches 1 (lines: computed; circles: real nets)", fontsize=9)
    ax2.grid(True, which="major", alpha=0.3)
    ax2.legend(fontsize=7, ncol=2)

    _plot_lazy(ax3, p, rows, gd_rows)
    save_figure(fig, path)


def _plot_lazy(ax, p, rows, gd_rows):
    """Every GD run's relative loss at its end against n_1 / N (seed 0 joined by a line; filled: reached rel_tol),
    and per N the infinite-width net's loss at the step budget (dashed), one colour per N."""
    for k, r in enumerate(rows):
        col = f"C{k % 10}"
        k_tol = "never" if r["lazy_steps"] is None else f"at k = {r['lazy_steps']:.2g}"
        at_budget = r["lazy_relative_loss_at_budget"]
        label = f"N = {r['N']}: infinite width {at_budget:.2g} at the budget, {p['rel_tol']:g} {k_tol}"
        ax.axhline(max(at_budget, 1e-300), color=col, lw=1.0, ls="--", alpha=0.8, label=label)
        runs = [g for g in gd_rows if g["N"] == r["N"] and g.get("relative_loss") is not None]
        first = sorted((g for g in runs if g["seed"] == p["seeds"][0]), key=lambda g: g["n1"])
        ax.plot([g["n1"] / g["N"] for g in first], [max(g["relative_loss"], 1e-300) for g in first], "-", color=col,
                lw=1.0, alpha=0.7)
        for g in runs:
            hit = bool(g["converged"])
            ax.plot(g["n1"] / g["N"], max(g["relative_loss"], 1e-300), "o", ms=4, color=col,
                    mfc=col if hit else "none", alpha=0.8)
    ax.axhline(p["rel_tol"], color="k", lw=0.8, ls=":", label=f"tolerance {p['rel_tol']:g}")
    if p["strict_rel_tol"] > 0:
        ax.axhline(p["strict_rel_tol"], color="0.4", lw=0.8, ls=":", label=f"strict tolerance {p['strict_rel_tol']:g}")
    ax.axvline(1.0, color="0.5", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_ylim(max(min(p["strict_rel_tol"] or p["rel_tol"], p["rel_tol"]) / 30, 1e-12), 2.0)
    ax.set_xlabel("$n_1 / N$")
    ax.set_ylabel("relative loss $\\Phi_k / \\Phi_0$ at the end of the run")
    ax.set_title(f"GD runs (circles; filled: reached {p['rel_tol']:g}; line: seed {p['seeds'][0]}) against GD on "
                 f"the infinite-\nwidth linearized net after the budget of {p['steps']} steps (dashed; computed)",
                 fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)


def redraw(p, folder) -> str:
    """E1.png drawn again from the E1.csv, E1_gd.csv, E1_margins.csv and E1.json in ``folder`` (a finished run of
    the checked params ``p``), without running GD again; the predicted margins are recomputed from the data.
    Returns the figure's path."""
    import json

    from ..sweep import read_results

    rows = read_results(os.path.join(folder, "E1.csv"))
    gd_rows = read_results(os.path.join(folder, "E1_gd.csv"))
    path = os.path.join(folder, "E1_margins.csv")
    margin_rows = read_results(path) if os.path.exists(path) else []
    with open(os.path.join(folder, "E1.json"), encoding="utf-8") as f:
        findings = json.load(f)["findings"]
    # JSON holds a slope that could not be fitted (nan) as null
    findings = {k: (math.nan if v is None and k.startswith("slope") else v) for k, v in findings.items()}
    preds = {}
    for r in rows:
        X, Y = make_data(p, r["N"])
        preds[r["N"]] = Predictor(X, Y, p["C"])
    out = os.path.join(folder, "E1.png")
    _plot(out, p, rows, margin_rows, gd_rows, findings, preds)
    return out
