"""GPU ranks (pyrgd.distributed.ShardedEngine on CuPy arrays): `mpiexec -n P` with the cuda backend, one GPU per
rank or several ranks on one GPU. Skips without mpi4py, CuPy or a CUDA device (written on a machine without a GPU;
bench/device_run.sh runs it on one).

Every number of GPU ranks must give the same bits (the chain adds the groups' parts on the host in group order),
close to one process's cuda engine; a checkpoint of a 2-rank GPU run resumes on 1 rank to the same bits."""
from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

import pyrgd
from test_mpi import PROBLEM, _launch, _same_bits, _script, _weights

cp = pytest.importorskip("cupy")
try:
    _devices = cp.cuda.runtime.getDeviceCount()
except Exception:  # no driver
    _devices = 0
if _devices == 0:
    pytest.skip("no CUDA device", allow_module_level=True)

pytestmark = pytest.mark.gpu
#: put before each rank's script: the CPU emulator's install under `pytest --cuda-emulator` (tests/_cuda_emu.py)
_PRELUDE = getattr(cp, "emulator_prelude", "")

TRAIN_GPU = """
    import sys
    import cupy
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    net, X, Y = make()
    steps, out, folder, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    stop = (lambda rec: rec["step"] >= 9) if mode == "stop" else None  # stopped after 10 steps
    r = pyrgd.train(net, X, Y, lr=8e-5, steps=steps, progress=False, comm=comm, backend="cuda", track_every=0,
                    out=folder, checkpoint_every=5, callback=stop, resume=folder if mode == "resume" else None)
    devices = comm.gather(int(cupy.cuda.Device().id))
    if comm.Get_rank() == 0:
        np.savez(out, **{f"W{l}": w for l, w in enumerate(net.weights, start=1)},
                 loss=np.array(r.history["loss"]), engine=r.summary["distributed"]["engine"],
                 backend=r.summary["backend"], devices=np.array(devices), status=r.status)
"""


def _run(mpiexec, tmp_path, n, steps, name, mode="run", folder=None):
    script = _script(tmp_path, TRAIN_GPU)
    with open(script) as f:
        text = f.read()
    with open(script, "w") as f:
        f.write(_PRELUDE + text)
    out = tmp_path / f"{name}.npz"
    folder = folder or tmp_path / name
    p = _launch(mpiexec, n, [sys.executable, script, str(steps), str(out), str(folder), mode], tmp_path)
    assert p.returncode == 0, p.stderr
    return np.load(out), _weights(out)


def test_gpu_ranks_give_the_same_bits_for_any_number_of_ranks(mpiexec, tmp_path):
    net, X, Y = _one()
    ref = pyrgd.train(net, X, Y, lr=8e-5, steps=20, backend="cuda", progress=False, track_every=0)
    got = {}
    for n in (1, 2, 3):
        z, w = _run(mpiexec, tmp_path, n, 20, f"w{n}")
        assert str(z["engine"]) == "pyrgd.distributed.ShardedEngine" and str(z["backend"]) == "cuda"
        assert list(z["devices"]) == [r % _devices for r in range(n)]  # the host's ranks spread over its GPUs
        got[n] = (w, z["loss"])
    for n in (2, 3):
        assert _same_bits(got[n][0], got[1][0]), f"{n} GPU ranks"
        assert np.array_equal(got[n][1], got[1][1])
    for a, b in zip(got[1][0], net.weights):  # one process's cuda engine: the same math, another order of sums
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
    np.testing.assert_allclose(got[1][1], ref.history["loss"], rtol=1e-4)


def test_a_stopped_two_gpu_rank_run_resumes_on_one_and_two_ranks_to_the_same_bits(mpiexec, tmp_path):
    _, full = _run(mpiexec, tmp_path, 2, 20, "full")
    z, part = _run(mpiexec, tmp_path, 2, 20, "part", mode="stop")
    assert str(z["status"]) == "stopped_by_callback" and not _same_bits(part, full)
    for n in (1, 2):
        shutil.copytree(tmp_path / "part", tmp_path / f"part{n}")
        _, w = _run(mpiexec, tmp_path, n, 20, f"resumed{n}", mode="resume", folder=tmp_path / f"part{n}")
        assert _same_bits(w, full), f"resumed on {n} GPU rank(s)"


def _one():
    ns = {}
    exec(PROBLEM, ns)
    return ns["make"]()
