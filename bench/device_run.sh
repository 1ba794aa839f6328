#!/usr/bin/env bash
# One call on the lent GPU machine: build pyrgd there, run the GPU benchmark, the GPU tests, the sanitizers and the
# quickstart on the cuda backend. Logs and JSON under $OUT (at most 8 files come back).
set -uo pipefail
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
OUT=${OUT:-/tmp/pyrgd_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv > "$OUT/nvidia-smi.txt" 2>&1
python3 setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
# a non-editable install elsewhere: the CUDA sources must travel as package data
python3 -m pip install -q --no-build-isolation --no-deps --target /tmp/inst . > "$OUT/install.log" 2>&1 && \
  (cd /tmp && PYTHONPATH=/tmp/inst:${PYTHONPATH:-} python3 -c "
import pyrgd, cupy as cp, numpy as np
from pyrgd import ops
from pyrgd.backends import cuda
X = cp.asarray(np.random.default_rng(0).standard_normal((300, 20))); W1 = cp.asarray(np.random.default_rng(1).standard_normal((20, 500))); W2 = cp.ones((500, 3))
H = ops.wide_forward(X, W1, W2, activation='tanh')
print('installed package at', pyrgd.__file__, 'sources', cuda.source_dirs(), 'H finite', bool(cp.isfinite(H).all()))
") >> "$OUT/install.log" 2>&1
tail -2 "$OUT/install.log"
python3 -m pyrgd info
echo "=== GPU benchmark"; timeout 300 python3 bench/gpu_bench.py --problems "${PROBLEMS:-G1,G2}" --out "$OUT/gpu_bench.json" 2>"$OUT/gpu_bench.err"; tail -3 "$OUT/gpu_bench.err"
echo "=== quickstart on cuda"; python3 -m pyrgd train --preset quickstart --backend cuda --no-progress --out /tmp/qs_cuda | tail -7
# GPU ranks: need an MPI launcher; carry the mpich wheel (and mpi4py, if the image's cannot load libmpi) in .whl/
# (pip download mpich mpi4py --only-binary :all: -d .whl). The launched ranks import pyrgd from this tree.
if ls .whl/mpich-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --ignore-installed --prefix /tmp/mpi .whl/mpich-*.whl >> "$OUT/install.log" 2>&1
  export PATH=/tmp/mpi/bin:$PATH LD_LIBRARY_PATH=/tmp/mpi/lib:${LD_LIBRARY_PATH:-}
fi
echo "=== GPU ranks"; PYTHONPATH=$PWD:${PYTHONPATH:-} timeout 300 python3 -m pytest -q -p no:cacheprovider -rs \
  tests/test_mpi_cuda.py > "$OUT/mpi_cuda.log" 2>&1; tail -4 "$OUT/mpi_cuda.log"
echo "=== tests"; timeout 240 python3 -m pytest -q -p no:cacheprovider tests > "$OUT/pytest.log" 2>&1; tail -4 "$OUT/pytest.log"
echo "=== sanitizers"; timeout 200 python3 bench/gpu_validate.py --out /tmp/pyrgd_validate --pytest-args "-q" 2>&1 | tail -12
