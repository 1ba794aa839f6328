"""The CUDA emulator of tests/_cuda_emu.py finds what it claims to find: barriers, shared memory poisoned per block,
races made visible by the thread order, blocks that depend on other blocks made visible by the block order,
divergent barriers, argument types, writes past an array, shared-memory limits, and device arrays that behave as
CuPy's. Each check runs on a small kernel written for it (the backend's kernels: tests/test_cuda_emulated.py and
the GPU tests under ``pytest --cuda-emulator``)."""
import numpy as np
import pytest

import _cuda_emu as E

SOURCE = r"""
// block b reverses x[b * n .. b * n + n) into y; with_barrier = 0 leaves out the barrier (a race)
extern "C" __global__ void reverse(const float* x, float* y, int n, int with_barrier) {
  __shared__ float s[256];
  const int t = (int)threadIdx.x;
  const long long base = (long long)blockIdx.x * n;
  if (t < n) s[t] = x[base + t];
  if (with_barrier) __syncthreads();
  if (t < n) y[base + t] = s[n - 1 - t];
}

// threads at or above `live` return before the barrier
extern "C" __global__ void divergent(float* y, int live) {
  if ((int)threadIdx.x >= live) return;
  __syncthreads();
  y[threadIdx.x] = 1.0f;
}

// y[t] = the shared word t, never written
extern "C" __global__ void unwritten(double* y) {
  __shared__ double s[64];
  y[threadIdx.x] = s[threadIdx.x];
}

// y[t + shift] = t
extern "C" __global__ void shifted(float* y, int shift) { y[(int)threadIdx.x + shift] = (float)threadIdx.x; }

// the first float of `bytes` of dynamic shared memory, written and read back
extern "C" __global__ void dynamic(float* y) {
  extern __shared__ float d[];
  d[threadIdx.x] = 2.0f * threadIdx.x;
  __syncthreads();
  y[threadIdx.x] = d[blockDim.x - 1 - threadIdx.x];
}

// block b reads what block b - 1 wrote: right only if blocks ran in increasing order, which CUDA does not promise
extern "C" __global__ void chained(float* y) {
  if (threadIdx.x == 0) y[blockIdx.x] = blockIdx.x == 0 ? 1.0f : y[blockIdx.x - 1] + 1.0f;
}

// 13000 floats of static shared memory: over 48 KiB
extern "C" __global__ void too_much_static(float* y) {
  __shared__ float big[13000];
  big[threadIdx.x] = 1.0f;
  y[threadIdx.x] = big[threadIdx.x];
}
"""
NAMES = ["reverse", "divergent", "unwritten", "shifted", "dynamic", "chained", "too_much_static"]


@pytest.fixture(scope="module")
def mod():
    return E.EmuModule(SOURCE, (), NAMES)


def _reverse(mod, x, n, with_barrier, order):
    y = E.full(x.shape, -1.0, np.float32)
    with E.order(order, seed=3):
        mod.get_function("reverse")((x.size // n,), (256,), (E.asarray(x), y, np.int32(n), np.int32(with_barrier)))
    return y.get()


def test_blocks_barriers_and_shared_memory(mod):
    x = np.arange(3 * 200, dtype=np.float32)
    want = x.reshape(3, 200)[:, ::-1].ravel()
    for order in (0, 1, 2):
        assert np.array_equal(_reverse(mod, x, 200, True, order), want)


def test_a_missing_barrier_shows_as_results_that_depend_on_the_thread_order(mod):
    x = np.arange(3 * 200, dtype=np.float32)
    want = x.reshape(3, 200)[:, ::-1].ravel()
    ascending, descending = _reverse(mod, x, 200, False, 0), _reverse(mod, x, 200, False, 1)
    assert not np.array_equal(ascending, descending)
    assert not np.array_equal(ascending, want)  # threads read words of s not yet written: NaN


def test_a_block_that_needs_another_to_have_run_shows_in_the_block_order(mod):
    runs = []
    for order in (0, 1, 2):
        y = E.zeros(50, np.float32)
        with E.order(order, seed=1):
            mod.get_function("chained")((50,), (32,), (y,))
        runs.append(y.get())
    assert np.array_equal(runs[0], np.arange(1, 51, dtype=np.float32))
    assert not np.array_equal(runs[1], runs[0]) and not np.array_equal(runs[2], runs[0])


def test_shared_memory_starts_each_block_as_nan(mod):
    y = E.zeros(64, np.float64)
    mod.get_function("unwritten")((2,), (64,), (y,))
    assert np.isnan(y.get()).all()


def test_a_barrier_some_threads_skip_is_an_error(mod):
    y = E.zeros(256, np.float32)
    with pytest.raises(E.EmuError, match=r"__syncthreads\(\) reached by 100 threads while 156"):
        mod.get_function("divergent")((1,), (256,), (y, np.int32(100)))
    mod.get_function("divergent")((1,), (256,), (y, np.int32(256)))  # every thread: fine
    assert (y.get() == 1.0).all()


def test_argument_types_are_checked_against_the_signature(mod):
    x, y = E.zeros(256, np.float32), E.zeros(256, np.float32)
    f = mod.get_function("reverse")
    with pytest.raises(E.EmuError, match="argument 2 is i8, the kernel's parameter is i4"):
        f((1,), (256,), (x, y, np.int64(256), np.int32(1)))
    with pytest.raises(E.EmuError, match=r"argument 1 is \*f8, the kernel's parameter is \*f4"):
        f((1,), (256,), (x, E.zeros(256, np.float64), np.int32(256), np.int32(1)))
    with pytest.raises(E.EmuError, match="argument 0 is a host"):
        f((1,), (256,), (np.zeros(256, np.float32), y, np.int32(256), np.int32(1)))
    with pytest.raises(E.EmuError, match="argument 2 is i8"):  # a Python int is passed as 64 bits, as CuPy does
        f((1,), (256,), (x, y, 256, np.int32(1)))
    with pytest.raises(E.EmuError, match="3 arguments given, the kernel takes 4"):
        f((1,), (256,), (x, y, np.int32(256)))


def test_a_write_past_an_array_is_an_error(mod):
    f = mod.get_function("shifted")
    y = E.zeros(40, np.float32)
    f((1,), (32,), (y, np.int32(8)))  # elements 8 .. 39: inside
    assert np.array_equal(y.get()[8:], np.arange(32, dtype=np.float32))
    with pytest.raises(E.EmuError, match="wrote outside the buffer of argument 0"):
        f((1,), (32,), (E.zeros(40, np.float32), np.int32(9)))


def test_shared_memory_limits(mod):
    f = mod.get_function("dynamic")
    y = E.zeros(128, np.float32)
    f((1,), (128,), (y,), shared_mem=512)
    assert np.array_equal(y.get(), 2.0 * np.arange(127, -1, -1, dtype=np.float32))
    with pytest.raises(E.EmuError, match="raise max_dynamic_shared_size_bytes"):
        f((1,), (128,), (y,), shared_mem=100 * 1024)
    f.max_dynamic_shared_size_bytes = 100 * 1024
    f((1,), (128,), (y,), shared_mem=100 * 1024)  # opted in
    f.max_dynamic_shared_size_bytes = 300 * 1024
    with pytest.raises(E.EmuError, match="227 KiB"):
        f((1,), (128,), (y,), shared_mem=230 * 1024)
    with pytest.raises(E.EmuError, match="static shared memory of 52000 bytes exceeds the 48 KiB"):
        mod.get_function("too_much_static")((1,), (32,), (y,))


def test_launch_shapes_the_gpu_refuses(mod):
    y = E.zeros(256, np.float32)
    f = mod.get_function("shifted")
    with pytest.raises(E.EmuError, match="invalid block"):
        f((1,), (2048,), (y, np.int32(0)))
    with pytest.raises(E.EmuError, match="invalid grid"):
        f((1, 70000), (1,), (y, np.int32(0)))


def test_a_source_the_emulator_cannot_rewrite_is_refused():
    with pytest.raises(E.EmuError, match="cannot rewrite"):
        E.transform_source("__global__ void k() { __shared__ float a[2], b[2]; }")


def test_device_arrays_behave_like_cupys_not_numpys():
    """What makes the GPU tests on the emulator meaningful: a device array is not a numpy.ndarray, does not turn
    into one implicitly, refuses host operands, and NumPy functions on it give device arrays."""
    a = E.asarray(np.arange(6.0).reshape(2, 3))
    assert not isinstance(a, np.ndarray) and type(a).__module__.startswith("cupy")
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(a)
    with pytest.raises(TypeError, match="host"):
        a + np.ones((2, 3))
    s = (a * 2).sum(axis=0)
    assert isinstance(s, E.EmuArray) and np.array_equal(s.get(), [6.0, 10.0, 14.0])
    assert isinstance(np.linalg.norm(a), E.EmuArray) and isinstance(a.T @ a, E.EmuArray)
    assert float(a[1, 2]) == 5.0 and a.get().base is None  # get() is a host copy


def test_memory_pool_holds_freed_blocks_until_freed():
    cp = E.make_cupy()
    pool = cp.get_default_memory_pool()
    pool.free_all_blocks()
    base = pool.total_bytes()
    a = cp.empty((1000,), np.float64)
    assert pool.total_bytes() == base + 8192  # 8000 bytes in 512-byte units
    del a
    assert pool.total_bytes() == base + 8192 and pool.free_bytes() >= 8192
    pool.free_all_blocks()
    assert pool.total_bytes() == base
