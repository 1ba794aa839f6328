#!/usr/bin/env bash
# The C++ extension built with AddressSanitizer + UndefinedBehaviorSanitizer, run over the tests that drive it
# (bad input, fuzzing, every ISA, the bits across threads and network_grad's schedules). A copy of the source in a temporary folder, so that the
# normal build is untouched. Any sanitizer report fails the run (halt_on_error / abort_on_error).
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r setup.py pyproject.toml README.md LICENSE MANIFEST.in csrc pyrgd tests "$work"/
mkdir "$work/bench" && cp bench/gpu_sanitize_case.py "$work/bench/"  # run on the emulated kernels below
find "$work/pyrgd" -name "_cpu*.so" -delete
cd "$work"
# what pyproject.toml's [build-system] asks for, here where setup.py runs outside pip's isolated build
python -c "import pybind11" 2>/dev/null || pip install -q "pybind11>=2.12"
python -c "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 77)" \
    || pip install -q "setuptools>=77"
san="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
# CXXFLAGS: recent setuptools compile C++ with it (CFLAGS alone left the kernels uninstrumented)
CFLAGS="$san -g" CXXFLAGS="$san -g" LDFLAGS="$san" python setup.py -q build_ext --inplace >/dev/null
instrumented="$(objdump -d pyrgd/_cpu*.so | grep -c "__asan_report" || true)"  # (grep -q would cut the pipe)
if [ "$instrumented" -eq 0 ]; then
    echo "sanitize.sh: the extension was built without ASan instrumentation" >&2
    exit 1
fi
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1" UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export PYTHONMALLOC=malloc
# (test_no_n_by_n1_allocation sets an address-space limit, which ASan's shadow memory cannot live under)
python -m pytest -q -p no:cacheprovider -m "not slow" tests/test_cpu_backend.py tests/test_network_grad.py \
    tests/test_properties.py tests/test_engine.py tests/test_activations.py tests/test_wide_grad.py \
    tests/test_grad_schedule.py tests/test_grad_shard.py \
    --deselect tests/test_cpu_backend.py::test_no_n_by_n1_allocation
# the CUDA kernels on the CPU emulator (tests/_cuda_emu.py), built with the same sanitizers: an access past an array
# or a shared-memory buffer, or an integer overflow in the kernels' index arithmetic, fails here. The GPU tests of one
# activation (every kernel, every shape of test_cuda_backend.py) and wide_grad's row blocks.
PYRGD_CUDA_EMU_SANITIZE=1 python -m pytest -q -p no:cacheprovider --cuda-emulator tests/test_cuda_emulated.py \
    tests/test_cuda_backend.py tests/test_wide_grad_cuda.py -k "smooth_leaky_relu or wide_grad or emulated"
