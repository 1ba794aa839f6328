"""The one-pass gradient of the whole network on the CPU (pyrgd._cpu.network_grad, pyrgd.backends.cpu.network_grad),
the in-place update (sgd_update) and the cpu backend's step engines (rows and neurons), which pyrgd.train and the
benchmark run.

Agreement with an independent float64 NumPy oracle (the textbook forward and backward with the whole N x n1
matrices): relative Frobenius error <= 1e-12 (float64) and <= 1e-5 (float32) for the loss, every gradient and the
squared gradient norms, over every activation, depths L = 2..5, awkward shapes (N = 1; N not a multiple of the
panel rows; n1 below, not a multiple of, and far above the block of 64 neurons, so that lanes hold several blocks)
and every instruction set this CPU has. Determinism: the same bits for 1, 2 and 3 threads. Robustness: bad input
raises an error that names the argument, and nothing is written.
"""
from __future__ import annotations

import numpy as np
import pytest

from pyrgd.activations import parse_activation, sigma_and_derivative
from pyrgd.errors import PyrgdError

_cpu = pytest.importorskip("pyrgd._cpu", reason="the C++ extension pyrgd._cpu is not built")
from pyrgd.backends import cpu  # noqa: E402  (after the skip: needs the extension)
from pyrgd import ops  # noqa: E402

ACTIVATIONS = ["relu", "leaky_relu(0.1)", "smooth_leaky_relu(0.3)", "softplus", "tanh", "erf", "identity"]
DTYPES = [np.float64, np.float32]
TOL = {np.float64: 1e-12, np.float32: 1e-5}

# (N, [d, n1, n2, ..., nL], multipliers a_1..a_{L-1})
CASES = [
    (1, [3, 5, 2], [1.0]),
    (7, [2, 40, 3, 1], [0.8, 1.3]),
    (65, [5, 130, 9, 4], [1.0, 0.7]),
    (150, [4, 2100, 6, 5, 2], [0.05, 1.1, 0.9]),
    (203, [9, 77, 33, 12, 8, 3], [0.6, 1.0, 1.4, 0.8]),
]
CASE_IDS = [f"N{c[0]}-L{len(c[1]) - 1}-n1_{c[1][1]}" for c in CASES]


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    nb = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / (nb if nb > 0 else 1.0))


def oracle(X, Y, W, act, mult):
    """Loss and gradients in float64 with the whole N x n_l matrices (written independently of the kernels)."""
    X, Y, W = X.astype(np.float64), Y.astype(np.float64), [w.astype(np.float64) for w in W]
    L = len(W)
    F, Fs, dSs = X, [X], []
    for l in range(L - 1):
        S, dS = sigma_and_derivative(act, F @ W[l])
        F = mult[l] * S
        Fs.append(F)
        dSs.append(mult[l] * dS)
    D = F @ W[L - 1] - Y
    loss = 0.5 * float((D * D).sum())
    grads = [None] * L
    for l in range(L - 1, -1, -1):
        grads[l] = Fs[l].T @ D
        if l > 0:
            D = (D @ W[l].T) * dSs[l - 1]
    return loss, grads


def make(N, dims, dtype, act, seed=0):
    """X, Y, W; for relu/leaky_relu the first layer is redrawn until no pre-activation lies within 1e-3 of the kink
    (rounding differences, ~1e-7, must not flip sigma')."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, dims[0]))
    Y = rng.standard_normal((N, dims[-1]))
    W = [rng.standard_normal((a, b)) / np.sqrt(a) for a, b in zip(dims, dims[1:])]
    if act.name in ("relu", "leaky_relu"):
        for _ in range(500):
            bad = np.abs(X @ W[0]).min(axis=0) < 1e-3
            if not bad.any():
                break
            W[0][:, bad] = rng.standard_normal((dims[0], int(bad.sum()))) / np.sqrt(dims[0])
    return (X.astype(dtype), Y.astype(dtype), [w.astype(dtype) for w in W])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("spec", ACTIVATIONS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_network_grad_matches_oracle(case, spec, dtype):
    N, dims, mult = case
    act = parse_activation(spec)
    X, Y, W = make(N, dims, dtype, act)
    Wc = [w.copy() for w in W]
    loss_ref, g_ref = oracle(X, Y, W, act, mult)
    loss, grads, sq = cpu.network_grad(X, Y, W, act, mult)
    assert isinstance(loss, float) and abs(loss - loss_ref) <= TOL[dtype] * loss_ref
    assert len(grads) == len(W) == len(sq)
    for g, gr, s, w in zip(grads, g_ref, sq, W):
        assert g.dtype == dtype and g.shape == w.shape and g.flags.c_contiguous
        assert rel_err(g, gr) <= TOL[dtype]
        assert abs(s - float((gr * gr).sum())) <= 4 * TOL[dtype] * float((gr * gr).sum())
    assert all(np.array_equal(a, b) for a, b in zip(W, Wc))  # nothing written into the inputs


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
def test_every_isa_and_panel_size_matches_oracle(isa, dtype):
    """Every instruction set, and panels of 1, 5, 16, 64 rows and the automatic choice (N = 203 is a multiple of
    none of them): the same gradients within the tolerance."""
    N, dims, mult = CASES[-1]
    act = parse_activation("smooth_leaky_relu(0.2)")
    X, Y, W = make(N, dims, dtype, act, seed=3)
    loss_ref, g_ref = oracle(X, Y, W, act, mult)
    for rows in (0, 1, 5, 16, 64):
        loss, grads, _ = cpu.network_grad(X, Y, W, act, mult, panel_rows=rows)
        assert abs(loss - loss_ref) <= TOL[dtype] * loss_ref, rows
        assert all(rel_err(g, gr) <= TOL[dtype] for g, gr in zip(grads, g_ref)), rows


def _panel_bytes(n1, n2, itemsize, rows, arrays=2):
    """The bytes of network_grad's panel (S and D of every block of 64 neurons, or S alone: arrays=1, and the lanes'
    Z_2) for ``rows`` rows, as csrc/cpu/grad_kernels.cpp's grad_panel_rows counts them."""
    nblocks = -(-n1 // 64)
    lanes = -(-nblocks // -(-nblocks // 16))
    return (arrays * nblocks * 64 + lanes * n2) * itemsize * rows


def test_panel_rows_rule():
    """R: a panel of about 4 MiB in multiples of 48 rows, clamped to [96, 240] (more rows for a narrow layer), cut to
    the 16 MiB budget (multiples of 48, or of 16 below 48); fewer than 16 rows (at least 1) only when 16 do not fit;
    never more than N."""
    budget = _cpu.GRAD_PANEL_BYTES
    assert budget == 16 << 20 and _cpu.GRAD_PANEL_ROWS_MIN == 96
    assert _cpu.grad_panel_rows(4096, 4096, 64, 4) == 96  # B1: 3.4 MiB
    assert _cpu.grad_panel_rows(4096, 16384, 64, 4) == 96  # 12.4 MiB: still within the budget
    assert _cpu.grad_panel_rows(4096, 1024, 64, 4) == 240  # narrow: the clamp, not the 4 MiB target
    assert _cpu.grad_panel_rows(4096, 2048, 64, 4) == 192  # 4 MiB / 20 KiB per row = 204 rows, down to 48s
    assert _cpu.grad_panel_rows(4096, 64, 8, 4) == 240
    assert _cpu.grad_panel_rows(20, 4096, 64, 4) == 20
    cut = _cpu.grad_panel_rows(4096, 32768, 64, 4)  # 96 rows would exceed the budget: the most 48s that fit
    assert cut == 48 and _panel_bytes(32768, 64, 4, cut) <= budget < _panel_bytes(32768, 64, 4, 96)
    for n1, n2, item in ((1024, 64, 4), (4096, 64, 8), (16384, 64, 4), (5000, 7, 8), (40000, 64, 4)):
        r = _cpu.grad_panel_rows(4096, n1, n2, item)
        assert r % 48 == 0 and 48 <= r <= 240 and _panel_bytes(n1, n2, item, r) <= budget, (n1, n2, item)
    wide = _cpu.grad_panel_rows(4096, 1 << 16, 64, 8)
    assert 1 <= wide < 16 and _panel_bytes(1 << 16, 64, 8, wide) <= budget < _panel_bytes(1 << 16, 64, 8, 16)
    assert _cpu.grad_panel_rows(4096, 1 << 24, 1, 8) == 1
    r = _cpu.grad_panel_rows(32768, 32768, 32, 4)
    assert r % 16 == 0 and 16 <= r < 96
    # ReLU's panel holds S alone: half the bytes per row, so more rows for the same target (B2: 192, not 96)
    relu, smooth = parse_activation("relu"), parse_activation("smooth_leaky_relu(0.2)")
    assert cpu.grad_panel_rows(4096, 4096, 64, 4, relu) == 192
    assert cpu.grad_panel_rows(4096, 4096, 64, 4, smooth) == cpu.grad_panel_rows(4096, 4096, 64, 4) == 96
    r = _cpu.grad_panel_rows(4096, 40000, 64, 4, relu.code)
    assert r == 96 and _panel_bytes(40000, 64, 4, r, arrays=1) <= budget < _panel_bytes(40000, 64, 4, r)
    with pytest.raises(ValueError, match="grad_panel_rows"):
        _cpu.grad_panel_rows(0, 10, 10, 4)
    with pytest.raises(ValueError, match="act_code"):
        _cpu.grad_panel_rows(10, 10, 10, 4, 99)


def test_kept_neurons_rule():
    """rows_kept: every neuron where a panel of min(N, 96) rows of all of them fits in the 16 MiB budget, else the
    largest multiple of 1024 that does; 'auto' takes the rows method where at least half the neurons are kept."""
    from pyrgd.backends.cpu import KEPT_QUANTUM, auto_method, rows_kept

    for n1 in (1024, 2048, 4096, 8192, 16384):  # B1 and all of B4
        assert rows_kept(4096, 64, n1, 64, np.float32) == n1
        assert auto_method(4096, 64, n1, 64, np.float32) == "rows"
    k = rows_kept(4096, 64, 32768, 64, np.float32)  # 96 rows of 32768 neurons: 25 MiB
    assert k == 20480 and k % KEPT_QUANTUM == 0
    assert _cpu.grad_panel_rows(4096, k, 64, 4) >= 96 > _cpu.grad_panel_rows(4096, k + KEPT_QUANTUM, 64, 4)
    assert auto_method(4096, 64, 32768, 64, np.float32) == "rows"
    assert rows_kept(4096, 64, 32768, 64, np.float64) == 10240  # twice the bytes: half the neurons
    relu = parse_activation("relu")  # S alone: twice the neurons per panel
    assert rows_kept(4096, 64, 32768, 64, np.float32, relu) == 32768
    assert rows_kept(4096, 64, 65536, 64, np.float32, relu) == 41984
    assert auto_method(4096, 64, 65536, 64, np.float32, relu) == "rows"
    assert auto_method(4096, 64, 65536, 64, np.float32) == "neurons"  # under half kept
    X, Y, W = make(8, [3, 16, 2], np.float32, parse_activation("relu"))
    assert ops.step_engine(X, Y, W, backend="reference").method == "neurons"  # the reference has no other
    # fewer rows than 96 where N is smaller: the panel's minimum is min(N, 96)
    assert rows_kept(40, 3, 20_000, 2, np.float64) == 20_000  # 40 rows: 12 MiB
    assert rows_kept(4096, 3, 20_000, 2, np.float64) == 10240  # 96 rows would be 29 MiB
    # panels of fewer rows than their minimum never run: the kept part shrinks until its panel has them
    k = rows_kept(64, 1, 1 << 22, 1, np.float64)
    assert 0 < k < 1 << 22 and _cpu.grad_panel_rows(64, k, 1, 8) >= 64
    act = parse_activation("tanh")
    X, Y, W = make(64, [2, 1 << 15, 2], np.float64, act)
    gd = GDStep(X, Y, W, act, [1.0], "cpu")
    assert gd.method == auto_method(64, 2, 1 << 15, 2, np.float64)
    assert gd.kept == (rows_kept(64, 2, 1 << 15, 2, np.float64) if gd.method == "rows" else None)


KEPT = [0, 1, 64, 100, 1024, 2047, 2100]  # none, a block, a block and a half, a lane split, all but one, all


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("spec", ["relu", "smooth_leaky_relu(0.3)", "tanh"])
def test_recomputed_neurons_match_oracle(spec, dtype):
    """kept_neurons: the panels hold the first ones (rounded up to a block), the others are recomputed; every split
    gives the oracle's loss, gradients and norms within the tolerance, and writes nothing into the inputs."""
    N, dims, mult = CASES[3]  # n1 = 2100: 33 blocks, the last one partial; N = 150 rows: several panels
    act = parse_activation(spec)
    X, Y, W = make(N, dims, dtype, act, seed=4)
    Wc = [w.copy() for w in W]
    loss_ref, g_ref = oracle(X, Y, W, act, mult)
    for kept in KEPT:
        for rows in (0, 16):
            loss, grads, sq = cpu.network_grad(X, Y, W, act, mult, panel_rows=rows, kept_neurons=kept)
            assert abs(loss - loss_ref) <= TOL[dtype] * loss_ref, (kept, rows)
            for g, gr, s in zip(grads, g_ref, sq):
                assert rel_err(g, gr) <= TOL[dtype], (kept, rows)
                assert abs(s - float((gr * gr).sum())) <= 4 * TOL[dtype] * float((gr * gr).sum()), (kept, rows)
    assert all(np.array_equal(a, b) for a, b in zip(W, Wc))


def test_recomputed_neurons_on_every_isa(isa):
    N, dims, mult = CASES[3]
    act = parse_activation("smooth_leaky_relu(0.2)")
    X, Y, W = make(N, dims, np.float32, act, seed=6)
    loss_ref, g_ref = oracle(X, Y, W, act, mult)
    for kept in (0, 1000):
        loss, grads, _ = cpu.network_grad(X, Y, W, act, mult, kept_neurons=kept)
        assert abs(loss - loss_ref) <= TOL[np.float32] * loss_ref
        assert all(rel_err(g, gr) <= TOL[np.float32] for g, gr in zip(grads, g_ref))


def test_recomputed_neurons_same_bits_for_any_thread_count(restore_threads):
    act = parse_activation("softplus")
    X, Y, W = make(300, [6, 2200, 12, 3], np.float64, act, seed=5)
    for kept in (0, 1100):
        outs = []
        for n in (1, 2, 3):
            cpu.set_num_threads(n)
            outs.append(cpu.network_grad(X, Y, W, act, [0.3, 1.2], kept_neurons=kept))
        for loss, grads, sq in outs[1:]:
            assert loss == outs[0][0] and sq == outs[0][2]
            assert all(np.array_equal(a, b) for a, b in zip(grads, outs[0][1]))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
def test_same_bits_for_any_thread_count(dtype, restore_threads):
    """Several panels and lanes of several blocks: loss, gradients and norms are bit-identical for 1, 2, 3 threads;
    given `grads` buffers receive exactly what new arrays get."""
    act = parse_activation("softplus")
    X, Y, W = make(300, [6, 2200, 12, 3], dtype, act, seed=5)
    mult = [0.3, 1.2]
    outs = []
    for n in (1, 2, 3):
        cpu.set_num_threads(n)
        outs.append(cpu.network_grad(X, Y, W, act, mult))
    for loss, grads, sq in outs[1:]:
        assert loss == outs[0][0] and sq == outs[0][2]
        assert all(np.array_equal(a, b) for a, b in zip(grads, outs[0][1]))
    bufs = [np.full_like(w, np.nan) for w in W]
    loss, grads, sq = cpu.network_grad(X, Y, W, act, mult, grads=bufs)
    assert all(g is b for g, b in zip(grads, bufs))
    assert loss == outs[0][0] and all(np.array_equal(a, b) for a, b in zip(bufs, outs[0][1]))


@pytest.mark.parametrize("spec", ["relu", "smooth_leaky_relu(0.3)"])
def test_workspace_gives_the_same_bits(spec):
    """A caller's workspace (kept from call to call, any alignment: NumPy's large arrays start 16 bytes past a cache
    line) gives exactly the bits of the kernel's own allocation, for every kept split; grad_workspace_size is the
    least size accepted."""
    act = parse_activation(spec)
    X, Y, W = make(150, [4, 2100, 6, 5, 2], np.float32, act, seed=9)
    mult = [0.05, 1.1, 0.9]
    for kept in (None, 0, 1000):
        want = cpu.network_grad(X, Y, W, act, mult, kept_neurons=kept)
        n = cpu.grad_workspace_size(150, 4, 2100, 6, act, 4, kept_neurons=kept)
        big = np.full(n + 7, np.nan, np.float32)
        for ws in (big[:n], big[1:n + 1], big[3:]):  # reused, and at three alignments
            got = cpu.network_grad(X, Y, W, act, mult, kept_neurons=kept, workspace=ws)
            assert got[0] == want[0] and got[2] == want[2]
            assert all(np.array_equal(a, b) for a, b in zip(got[1], want[1]))
        with pytest.raises(PyrgdError, match=f"workspace: expected at least {n} elements"):
            cpu.network_grad(X, Y, W, act, mult, kept_neurons=kept, workspace=big[:n - 1])


def test_workspace_is_checked():
    act = parse_activation("tanh")
    X, Y, W = make(20, [3, 70, 4, 2], np.float64, act)
    n = cpu.grad_workspace_size(20, 3, 70, 4, act, 8)
    G = [np.zeros_like(w) for w in W]
    ro = np.zeros(n)
    ro.setflags(write=False)
    shared = np.zeros(n + 400)
    Wsh = [shared[:W[0].size].reshape(W[0].shape), W[1], W[2]]
    Wsh[0][...] = W[0]
    bad = [
        (np.zeros(n, np.float32), "workspace: expected dtype float64 like X"),
        (np.zeros((n, 1)), "workspace: expected a 1-D array"),
        (np.zeros(2 * n)[::2], "workspace: expected a C-contiguous"),
        (ro, "workspace: is written but is read-only"),
        ([0.0] * n, "workspace: expected a numpy.ndarray"),
    ]
    for ws, text in bad:
        with pytest.raises(PyrgdError, match=text):
            cpu.network_grad(X, Y, W, act, [1.0, 1.0], grads=G, workspace=ws)
    with pytest.raises(PyrgdError, match="workspace, weights\\[0\\]: must not share memory"):
        cpu.network_grad(X, Y, Wsh, act, [1.0, 1.0], workspace=shared)
    with pytest.raises(PyrgdError, match="workspace, grads\\[1\\]: must not share memory"):
        cpu.network_grad(X, Y, W, act, [1.0, 1.0], grads=[G[0], shared[:280].reshape(70, 4), G[2]],
                         workspace=shared[279:])
    with pytest.raises(PyrgdError, match="kept_neurons: expected -1"):
        cpu.grad_workspace_size(20, 3, 70, 4, act, 8, kept_neurons=71)
    with pytest.raises(PyrgdError, match="grad_workspace_size: expected N, d, n1, n2 >= 1"):
        cpu.grad_workspace_size(20, 3, 70, 4, act, 2)
    # more rows per panel, more neurons kept: a larger workspace
    assert cpu.grad_workspace_size(20, 3, 70, 4, act, 8, panel_rows=20) > cpu.grad_workspace_size(
        20, 3, 70, 4, act, 8, panel_rows=5)


def test_network_grad_rejects_bad_input():
    """Every argument of the raw kernel is checked and named; a failed call writes nothing into `grads`."""
    act = parse_activation("tanh")
    X, Y, W = make(20, [3, 70, 4, 2], np.float64, act)
    G = [np.zeros_like(w) for w in W]
    m = [1.0, 1.0]
    ro = W[0].copy()
    ro.setflags(write=False)
    big = np.zeros(600)
    bad = [
        (dict(X=X.astype(np.float32)), TypeError, "W1: expected dtype float32"),
        (dict(X=np.asfortranarray(X)), ValueError, "X: expected a C-contiguous"),
        (dict(X=X[0]), ValueError, "X: expected a 2-D"),
        (dict(Y=Y[:19]), ValueError, "Y: expected shape"),
        (dict(Y=Y[:, :1]), ValueError, "Y: expected shape"),
        (dict(W=W[:1]), ValueError, "weights: expected at least two"),
        (dict(W=[W[0], W[1], W[1]]), ValueError, "weights\\[2\\] \\(W_3\\): expected shape"),
        (dict(W="W"), TypeError, "weights: expected a list"),
        (dict(m=[1.0]), ValueError, "multipliers: expected L - 1 = 2"),
        (dict(m=[1.0, float("inf")]), ValueError, "multipliers\\[1\\]: expected a finite"),
        (dict(m=[1.0, "a"]), TypeError, "multipliers\\[1\\]: expected a float"),
        (dict(G=G[:2]), ValueError, "grads: expected 3 arrays"),
        (dict(G=[G[0], G[1], np.zeros((4, 3))]), ValueError, "grads\\[2\\]: expected shape"),
        (dict(G=[G[0], G[1], G[2].astype(np.float32)]), TypeError, "grads\\[2\\]: expected dtype float64"),
        (dict(G=[ro, G[1], G[2]]), ValueError, "grads\\[0\\]: is updated in place but is read-only"),
        (dict(G=[W[0], G[1], G[2]]), ValueError, "grads\\[0\\], weights\\[0\\]: must not share memory"),
        (dict(G=[big[:210].reshape(3, 70), big[100:380].reshape(70, 4), G[2]]), ValueError,
         "grads\\[1\\], grads\\[0\\]: must not share memory"),
        (dict(G="G"), TypeError, "grads: expected None or a list"),
        (dict(act_code=42), ValueError, "act_code"),
        (dict(rows=-1), ValueError, "panel_rows"),
        (dict(kept=-2), ValueError, "kept_neurons: expected -1 \\(all\\) or 0..n1 = 70, got -2"),
        (dict(kept=71), ValueError, "kept_neurons: expected -1 \\(all\\) or 0..n1 = 70, got 71"),
    ]
    for over, exc, text in bad:
        args = dict(X=X, Y=Y, W=W, m=m, G=G, act_code=act.code, rows=0, kept=-1)
        args.update(over)
        before = [g.copy() for g in G]
        with pytest.raises(exc, match=text):
            _cpu.network_grad(args["X"], args["Y"], args["W"], args["act_code"], 0.0, args["m"], args["G"],
                              args["rows"], args["kept"])
        assert all(np.array_equal(a, b) for a, b in zip(G, before)), text
    with pytest.raises(PyrgdError, match="Y: expected shape"):  # the wrapper turns them into PyrgdError
        cpu.network_grad(X, Y[:3], W, act, m)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
def test_sgd_update_has_numpy_bits(dtype):
    rng = np.random.default_rng(1)
    W = [rng.standard_normal(s).astype(dtype) for s in ((5, 70000), (3, 4))]
    G = [rng.standard_normal(w.shape).astype(dtype) for w in W]
    want = [w.copy() for w in W]
    for w, g in zip(want, G):
        w -= 0.037 * g
    cpu.sgd_update(W, G, 0.037)
    assert all(np.array_equal(a, b) for a, b in zip(W, want))
    for args, text in (((W, G[:1], 0.1), "grads: expected 2"), ((W, G, float("nan")), "lr: expected a finite"),
                       (([W[0], W[0]], [G[0], G[0]], 0.1), "weights\\[1\\], weights\\[0\\]"),
                       ((W, [W[0], G[1]], 0.1), "weights\\[0\\], grads\\[0\\]"),
                       ((W, [G[0].T, G[1]], 0.1), "grads\\[0\\]: expected shape")):
        before = [w.copy() for w in W]
        with pytest.raises(PyrgdError, match=text):
            cpu.sgd_update(*args)
        assert all(np.array_equal(a, b) for a, b in zip(W, before))


# ---------------------------------------------------------------------------------------------- step engines
def GDStep(X, Y, W, act, mult, backend, method="auto"):
    return ops.step_engine(X, Y, W, activation=act, multipliers=mult, backend=backend, method=method)


def _train(method, backend, X, Y, W, act, mult, lr, steps):
    W = [w.copy() for w in W]
    gd = GDStep(X, Y, W, act, mult, backend, method=method)
    losses, norms = [], []
    for _ in range(steps):
        losses.append(gd.evaluate())
        norms.append(gd.update(lr))
    return losses, norms, W, gd.method


@pytest.mark.parametrize("dims", [[5, 90, 3], [5, 150, 9, 5, 2]], ids=["L2", "L4"])
def test_engine_methods_agree(dims):
    """20 steps of the rows method (cpu), the neurons method (cpu) and the reference agree to 1e-10: losses,
    gradient norms, weights; 'auto' is rows on the cpu backend and neurons on the reference."""
    act = parse_activation("smooth_leaky_relu(0.2)")
    X, Y, W = make(40, dims, np.float64, act)
    mult = [0.9, 1.2, 0.7][: len(dims) - 2]
    runs = [_train("auto", "cpu", X, Y, W, act, mult, 2e-3, 20), _train("neurons", "cpu", X, Y, W, act, mult, 2e-3, 20),
            _train("auto", "reference", X, Y, W, act, mult, 2e-3, 20)]
    assert [r[3] for r in runs] == ["rows", "neurons", "neurons"]
    a = runs[2]
    assert a[0][-1] < a[0][0]  # it trains
    for b in runs[:2]:
        assert np.allclose(a[0], b[0], rtol=1e-10, atol=0)
        assert np.allclose(a[1], b[1], rtol=1e-10, atol=0)
        for wa, wb in zip(a[2], b[2]):
            assert np.allclose(wa, wb, rtol=1e-10, atol=1e-13)


def test_rows_engine_with_recomputed_neurons_agrees(monkeypatch):
    """Where rows_kept keeps 1024 of 2100 neurons in the panels (as it would for a layer too wide for them), the rows
    method recomputes the rest; 20 steps agree with the reference to 1e-10 (losses, gradient norms, weights)."""
    import pyrgd.backends.cpu as cpu_backend

    act = parse_activation("smooth_leaky_relu(0.2)")
    X, Y, W = make(40, [5, 2100, 9, 2], np.float64, act)
    monkeypatch.setattr(cpu_backend, "rows_kept", lambda N, d, n1, n2, dtype, act=None: min(n1, 1024))
    gd = GDStep(X, Y, [w.copy() for w in W], act, [0.9, 1.2], "cpu", method="rows")
    assert gd.kept == 1024
    assert GDStep(X, Y, W, act, [0.9, 1.2], "cpu").method == "neurons"  # auto: under half kept
    a = _train("auto", "reference", X, Y, W, act, [0.9, 1.2], 2e-4, 20)
    b = _train("rows", "cpu", X, Y, W, act, [0.9, 1.2], 2e-4, 20)
    assert a[0][-1] < a[0][0]
    assert np.allclose(a[0], b[0], rtol=1e-10, atol=0) and np.allclose(a[1], b[1], rtol=1e-10, atol=0)
    for wa, wb in zip(a[2], b[2]):
        assert np.allclose(wa, wb, rtol=1e-10, atol=1e-13)


def test_step_engine_checks_its_arguments():
    act = parse_activation("relu")
    X, Y, W = make(10, [3, 20, 2], np.float64, act)
    with pytest.raises(PyrgdError, match="method: expected one of"):
        GDStep(X, Y, W, act, [1.0], "cpu", method="columns")
    with pytest.raises(PyrgdError, match="method: 'rows' needs the cpu backend, got backend 'reference'"):
        GDStep(X, Y, W, act, [1.0], "reference", method="rows")
    with pytest.raises(PyrgdError, match="Y: expected shape"):
        GDStep(X, Y[:, :1], W, act, [1.0], "cpu")
    with pytest.raises(PyrgdError, match="W\\[1\\]: expected shape"):
        GDStep(X, Y, [W[0], W[1][:5]], act, [1.0], "cpu")
    with pytest.raises(PyrgdError, match="multipliers: expected L - 1 = 1"):
        GDStep(X, Y, W, act, [1.0, 1.0], "cpu")
    bad = [w.copy() for w in W]
    bad[0][0, 0] = np.nan
    with pytest.raises(PyrgdError, match="W\\[0\\].*finite"):
        GDStep(X, Y, bad, act, [1.0], "cpu")
    gd = GDStep(X, Y, W, act, [1.0], "cpu")
    with pytest.raises(PyrgdError, match="call evaluate\\(\\) first"):
        gd.update(0.1)
    gd.evaluate()
    gd.update(0.1)
    with pytest.raises(PyrgdError, match="call evaluate\\(\\) first"):  # one update per evaluation
        gd.update(0.1)


def test_rows_step_reuses_its_buffers():
    """After the first step, a rows step allocates (tracemalloc: every NumPy array) less than a tenth of one
    N x n2 array: the gradients live in buffers kept from step to step."""
    import tracemalloc

    act = parse_activation("smooth_leaky_relu(0.2)")
    N, dims = 20000, [4, 300, 16, 8, 1]
    X, Y, W = make(N, dims, np.float64, act, seed=1)
    gd = GDStep(X, Y, W, act, [1.0, 1.0, 1.0], "cpu")
    peaks = []
    for _ in range(3):
        tracemalloc.start()
        gd.evaluate()
        gd.update(1e-6)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert gd.method == "rows"
    assert gd._work.size == cpu.grad_workspace_size(N, dims[0], dims[1], dims[2], act, 8, kept_neurons=gd.kept,
                                                    threads=cpu.get_num_threads())
    assert max(peaks[1:]) < 0.1 * N * dims[2] * 8, peaks
    assert peaks[0] >= sum(w.nbytes for w in W)  # the first step allocates the gradients: the measurement sees them


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
def test_relu_reads_its_derivative_off_sigma(dtype):
    """For ReLU the panel holds a1 relu(Z) alone and (B) reads relu' off it; leaky_relu(0) runs the general path
    that stores a1 sigma'(Z). The two give the same bits, for either sign of a1 and a layer that is not a multiple
    of the block."""
    act_relu = parse_activation("relu")
    leaky = parse_activation("leaky_relu(0.1)").code  # with slope 0 (the raw module takes it; pyrgd's API not)
    X, Y, W = make(300, [6, 2200, 12, 3], dtype, act_relu, seed=8)
    R = cpu.grad_panel_rows(300, 2200, 12, np.dtype(dtype).itemsize, act_relu)  # more rows than the general path's
    assert R > cpu.grad_panel_rows(300, 2200, 12, np.dtype(dtype).itemsize)
    for a1 in (0.7, -1.3):
        r = cpu.network_grad(X, Y, W, act_relu, [a1, 1.0])
        g = _cpu.network_grad(X, Y, W, leaky, 0.0, [a1, 1.0], panel_rows=R)
        assert r[0] == g[0] and r[2] == g[2]
        assert all(np.array_equal(a, b) for a, b in zip(r[1], g[1]))
