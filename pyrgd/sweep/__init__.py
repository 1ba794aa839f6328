"""Parameter sweeps: train a grid of networks, record the certificates at initialization and what GD did.

A grid file is a run config (the [data], [model] and [train] tables of :mod:`pyrgd.config`, all optional) plus a
[grid] table of lists; every combination of the lists is one *cell*::

    [grid]
    N = [64, 128, 256]               # data.N
    n1_over_N = [0.5, 1, 2, 4]       # n_1 = round(ratio * N); or n1 = [...] (absolute), not both
    activation = ["relu"]            # model.activation
    init = ["lecun"]                 # model.init
    tail = [[1], [16, 1]]            # [n_2, ..., n_L]; or depth = [2, 3]: the last L-1 widths of model.widths
    seed = [0, 1, 2]                 # model.seed (the initialization; the data keep data.seed); alias: seeds
    "model.beta" = [1.0, 4.0]        # any other config key, as "table.key"

    [data]
    inputs = "gaussian"
    [train]
    steps = 2000
    rel_tol = 1e-3

Each cell builds its data and network (seeded), computes at initialization sigma_min(F_1), the PL constant mu_0
(docs/theory.md section 4.1) and Nguyen 2021 Theorem 2.2's verdict and margins (docs/theory.md section 4.2) at
the step size it trains with, then trains with :func:`pyrgd.train` (``progress=False``) under the [train] table's
step budget and tolerances.
``lr = "auto"`` is resolved once per cell, by train's own rule, before training.

The output folder holds ``results.csv`` (one row per finished cell, rewritten atomically after every cell),
``summary.csv`` (grouped over seeds: fraction converged, median steps to tolerance, ...), ``heatmap.png`` (median
steps to tolerance over (N, n_1/N); outlined dashed: the cells where Theorem 2.2's three initial conditions hold
for every seed, i.e. GD is certified for any step size below the theorem's eta_max; solid: where the cells' own lr
is below eta_max as well),
``final_loss.png`` (relative final loss against n_1/N), ``grid.toml`` (the grid as run) and ``sweep.json``.
A sweep that is run again into the same folder with ``resume=True`` skips the cells already in results.csv (a
cell is keyed by its parameters); its base configuration must be unchanged (lists of the grid may grow).

The package's modules, one job each: :mod:`.grid` reads, checks and expands the grid; :mod:`.runner` runs a cell
and the grid's cells (resume, refusal of another base config, progress); :mod:`.report` writes and reads the CSV
files, summarizes over seeds and draws the plots.
"""
from __future__ import annotations

from .grid import GRID_KEYS, Grid, cell_config, cell_id, load_grid, parse_grid  # noqa: F401  (cell_id: public too)
# _write_rows: used by pyrgd.experiments
from .report import (_write_rows, certified_outline, format_summary, plot_final_loss, plot_heatmap,  # noqa: F401
                     read_results, summarize)
from .runner import RESULT_COLUMNS, run_cell, run_sweep

__all__ = ["GRID_KEYS", "Grid", "load_grid", "parse_grid", "cell_config", "run_cell", "run_sweep", "summarize",
           "format_summary", "read_results", "certified_outline", "plot_heatmap", "plot_final_loss", "RESULT_COLUMNS"]
