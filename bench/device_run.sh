#!/usr/bin/env bash
# One call on the lent GPU machine, about 9 minutes at most (the device tool allows 10 per call and 15 per session):
# the stages run in the order of what a short session needs most, each under its own time limit, so that the code
# never run on a GPU is tested first and the benchmark comes last.
#
#   build     the C++ extension in place, and `pyrgd info` (the GPU, CUDA, whether the kernels compile)
#   gputests  every test marked gpu (pytest -m gpu), NaN-poisoned buffers where the tests ask for them
#   ranks     tests/test_mpi_cuda.py: 1, 2 and 3 GPU ranks (carry the mpich wheel in .whl/:
#             pip download mpich --only-binary :all: -d .whl)
#   sanitize  bench/gpu_validate.py: compute-sanitizer memcheck, racecheck, synccheck, initcheck on every kernel
#   quickstart  pyrgd train --preset quickstart --backend cuda
#   bench     pyrgd bench --backend cuda (G1, G2) with its JSON and plot
#
# STAGES="gputests ranks" runs a subset; LIMIT_SCALE=2 doubles every stage's limit; TOTAL (default 550 s) is the
# whole script's deadline: a stage gets at most what is left of it, and none starts with under 15 s left. Logs and
# JSON under $OUT (at most 8 files come back): nvidia-smi.txt, build.log, gputests.log, ranks.log, sanitize.log,
# bench.json, bench.png, and summary.txt (one line per stage: status and seconds).
set -uo pipefail
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
OUT=${OUT:-/tmp/pyrgd_out}; mkdir -p "$OUT"
STAGES=${STAGES:-build gputests ranks sanitize quickstart bench}
SCALE=${LIMIT_SCALE:-1}
TOTAL=${TOTAL:-550}
SUMMARY="$OUT/summary.txt"; : > "$SUMMARY"
if ls .whl/*.whl >/dev/null 2>&1; then  # carried wheels other than MPICH's (the image has no registry)
  ls .whl/*.whl | grep -v '/mpich-' | xargs -r python3 -m pip install -q --no-index --no-deps --no-compile \
    --target /tmp/site && export PYTHONPATH=/tmp/site
fi
if ls .whl/mpich-*.whl >/dev/null 2>&1; then  # mpiexec and libmpi for the GPU ranks
  python3 -m pip install -q --no-index --no-deps --no-compile --ignore-installed --prefix /tmp/mpi .whl/mpich-*.whl \
    > /dev/null 2>&1
  export PATH=/tmp/mpi/bin:$PATH LD_LIBRARY_PATH=/tmp/mpi/lib:${LD_LIBRARY_PATH:-}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the tree under test, also for the MPI ranks
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv > "$OUT/nvidia-smi.txt" 2>&1

# stage NAME LIMIT_SECONDS COMMAND...: runs COMMAND under its limit (and the deadline), appends
# "NAME ok|FAIL(rc)|TIMEOUT|SKIPPED seconds" to the summary
stage() {
  local name=$1 limit=$(( $2 * SCALE )) left=$(( TOTAL - SECONDS )); shift 2
  case " $STAGES " in *" $name "*) ;; *) return 0 ;; esac
  if [ $left -lt 15 ]; then echo "$name SKIPPED(deadline) 0s" | tee -a "$SUMMARY"; return 0; fi
  [ $limit -gt $left ] && limit=$left
  local t0=$SECONDS rc
  echo "=== $name (limit ${limit}s)"
  timeout "$limit" bash -c '"$@"' "$name" "$@"; rc=$?  # through bash: the commands may be this script's functions
  local st=ok; [ $rc -eq 124 ] && st=TIMEOUT; [ $rc -ne 0 ] && [ $rc -ne 124 ] && st="FAIL($rc)"
  echo "$name $st $(( SECONDS - t0 ))s" | tee -a "$SUMMARY"
}

build() {  # (the package data of a non-editable install is tested on the CPU: tests/test_packaging.py)
  python3 setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; return 1; }
  python3 -m pyrgd info >> "$OUT/build.log" 2>&1
  grep -i -A3 "cuda" "$OUT/build.log" | head -8
}

pytest_to() {  # pytest_to LOG ARGS...: the run's log under $OUT, its last lines here
  local log=$1; shift
  python3 -m pytest -q -p no:cacheprovider -rs "$@" > "$OUT/$log" 2>&1; local rc=$?
  tail -4 "$OUT/$log"; return $rc
}

export OUT; export -f build pytest_to
stage build 100 build
stage gputests 200 pytest_to gputests.log -m gpu tests
stage ranks 80 pytest_to ranks.log tests/test_mpi_cuda.py
stage sanitize 120 bash -c "python3 bench/gpu_validate.py --skip-pytest --out /tmp/pyrgd_validate \
  > '$OUT/sanitize.log' 2>&1; rc=\$?; tail -14 '$OUT/sanitize.log'; exit \$rc"
stage quickstart 30 bash -c "set -o pipefail; python3 -m pyrgd train --preset quickstart --backend cuda --no-progress \
  --out /tmp/qs_cuda | tail -5"
stage bench 150 python3 -m pyrgd bench --backend cuda --no-progress --out "$OUT/bench.json" --plot "$OUT/bench.png"
echo "=== summary"; cat "$SUMMARY"
