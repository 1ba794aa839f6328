// emu.h -- run the CUDA kernels of csrc/cuda on the CPU, for tests on machines without a GPU.
//
// tests/_cuda_emu.py compiles a kernel source (the text the backend hands to cupy.RawModule) as host C++ with this
// header in front. Each CUDA thread of a block is a fiber (ucontext) of one OS thread: a fiber runs until its next
// __syncthreads() or its end, then the next fiber runs, and the block moves past a barrier when every thread has
// reached it. Blocks run one after another. What this checks that a NumPy emulation cannot: the kernels' own index
// arithmetic, bounds, tile loops and barriers, on the host loops' real launches. What it cannot check: speed,
// warp-level behaviour (the kernels use none), NVRTC's dialect (tests/test_nvrtc_compile.py compiles it) and
// the GPU's rounding (contraction into FMA): results are compared with a tolerance, never bit for bit with a GPU.
//
// Checks made on every launch (an error fails the launch with a message, the outputs are then undefined):
//   - every live thread of a block reaches the same number of barriers (a __syncthreads() some threads skip, or one
//     reached after others exited, is undefined behaviour in CUDA);
//   - static shared memory at most 48 KiB, dynamic shared memory at most the function's opt-in (48 KiB unless
//     max_dynamic_shared_size_bytes was raised) and static + dynamic at most 227 KiB (sm_90);
//   - every shared array starts each block filled with 0xFF bytes (NaN as float and double), so a read before the
//     block wrote it shows in the results; the fibers' order (ascending, descending or shuffled per barrier
//     interval, and the blocks likewise) is a launch argument, so two orders giving different bits reveal a
//     shared-memory race, or a block that reads what another block writes.
// The source is transformed before compiling (tests/_cuda_emu.py): `__shared__ T a[n];` becomes
// `T* const a = ::emu::static_shared<T>(n);` and `extern __shared__ T a[];` becomes ::emu::dynamic_shared<T>().
#ifndef PYRGD_CUDA_EMU_H
#define PYRGD_CUDA_EMU_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define PYRGD_EMU_ASAN 1
#endif

#include <cstddef>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

namespace emu {

constexpr size_t kStaticSharedLimit = 48 * 1024;
constexpr size_t kDefaultDynamicLimit = 48 * 1024;
constexpr size_t kBlockSharedLimit = 227 * 1024;  // sm_90: the most shared memory one block may opt in to
constexpr size_t kStackBytes = 256 * 1024;

struct Fiber {
  ucontext_t ctx;
  char* stack = nullptr;
  int state = 0;            // 0 runnable, 1 waiting at a barrier, 2 exited
  unsigned long barriers = 0;
  size_t shared_index = 0;  // how many static shared arrays this thread has declared so far
  uint3 tid{0, 0, 0};
};

struct SharedArray {
  unsigned char* ptr;
  size_t bytes;
};

struct State {
  ucontext_t scheduler;
  std::vector<Fiber> fibers;
  Fiber* current = nullptr;
  uint3 thread_idx{0, 0, 0}, block_idx{0, 0, 0};
  dim3 block_dim{1, 1, 1}, grid_dim{1, 1, 1};
  std::vector<SharedArray> statics;  // the block's static shared arrays, in declaration order
  size_t static_bytes = 0;
  unsigned char* dynamic = nullptr;
  size_t dynamic_bytes = 0;
  void (*invoke)(void**) = nullptr;
  void** args = nullptr;
  std::string error;
  unsigned long rng = 0;
  const void* scheduler_stack = nullptr;  // AddressSanitizer's fiber annotations: the scheduler's stack
  size_t scheduler_stack_bytes = 0;
};

inline State g;

inline void fail(const std::string& what) {
  if (g.error.empty()) g.error = what;
}

// Switches between the scheduler and a fiber, annotated for AddressSanitizer where it is on (it must know which
// stack is live, or it reports the other one's frames).
inline void to_scheduler(Fiber* f, bool exiting) {
#ifdef PYRGD_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(exiting ? nullptr : &fake, g.scheduler_stack, g.scheduler_stack_bytes);
  if (exiting) return;  // the fiber returns; uc_link resumes the scheduler
  swapcontext(&f->ctx, &g.scheduler);
  __sanitizer_finish_switch_fiber(fake, &g.scheduler_stack, &g.scheduler_stack_bytes);
#else
  if (!exiting) swapcontext(&f->ctx, &g.scheduler);
#endif
}

inline void to_fiber(Fiber* f) {
#ifdef PYRGD_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f->stack, kStackBytes);
  swapcontext(&g.scheduler, &f->ctx);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  swapcontext(&g.scheduler, &f->ctx);
#endif
}

inline void syncthreads() {
  Fiber* f = g.current;
  f->state = 1;
  ++f->barriers;
  to_scheduler(f, false);
}

// The i-th static shared array of the kernel: made by the first thread that declares it in the launch, shared by
// the block's threads, refilled with 0xFF bytes at the start of every block.
template <class T>
T* static_shared(long long count) {
  Fiber* f = g.current;
  const size_t bytes = (size_t)count * sizeof(T);
  const size_t i = f->shared_index++;
  if (i == g.statics.size()) {
    unsigned char* p = static_cast<unsigned char*>(aligned_alloc(16, (bytes + 15) / 16 * 16 + 16));
    memset(p, 0xFF, bytes);
    g.statics.push_back({p, bytes});
    g.static_bytes += bytes;
    if (g.static_bytes > kStaticSharedLimit)
      fail("static shared memory of " + std::to_string(g.static_bytes) + " bytes exceeds the 48 KiB limit");
  } else if (g.statics[i].bytes != bytes) {
    fail("threads of one block declared shared array " + std::to_string(i) + " with different sizes");
  }
  return reinterpret_cast<T*>(g.statics[i].ptr);
}

template <class T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(g.dynamic);
}

extern "C" inline void fiber_entry() {
#ifdef PYRGD_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g.scheduler_stack, &g.scheduler_stack_bytes);
#endif
  g.invoke(g.args);
  g.current->state = 2;
  to_scheduler(g.current, true);  // uc_link returns to the scheduler
}

}  // namespace emu

#define threadIdx (::emu::g.thread_idx)
#define blockIdx (::emu::g.block_idx)
#define blockDim (::emu::g.block_dim)
#define gridDim (::emu::g.grid_dim)
#define __syncthreads() ::emu::syncthreads()

namespace emu {

// seq = 0 .. n - 1 in `order`: 0 ascending, 1 descending, 2 shuffled (Fisher-Yates on the launch's generator).
inline void arrange(std::vector<size_t>& seq, int order) {
  const size_t n = seq.size();
  for (size_t i = 0; i < n; ++i) seq[i] = order == 1 ? n - 1 - i : i;
  if (order != 2) return;
  for (size_t i = n; i > 1; --i) {
    g.rng = g.rng * 6364136223846793005UL + 1442695040888963407UL;
    std::swap(seq[i - 1], seq[(g.rng >> 33) % i]);
  }
}

// Runs one launch. order: 0 ascending thread and block index, 1 descending, 2 shuffled (threads anew in every
// barrier interval; seeded by `seed`). Returns "" or what went wrong.
inline std::string launch(void (*invoke)(void**), void** args, dim3 grid, dim3 block, size_t dynamic_bytes,
                          size_t dynamic_limit, int order, unsigned long seed) {
  g.error.clear();
  g.invoke = invoke;
  g.args = args;
  g.grid_dim = grid;
  g.block_dim = block;
  g.rng = seed * 6364136223846793005UL + 1442695040888963407UL;
  const size_t nthreads = (size_t)block.x * block.y * block.z;
  if (nthreads == 0 || nthreads > 1024 || block.z > 64)
    return "invalid block of " + std::to_string(block.x) + " x " + std::to_string(block.y) + " x " +
           std::to_string(block.z) + " threads";
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 || grid.x > 2147483647u)
    return "invalid grid of " + std::to_string(grid.x) + " x " + std::to_string(grid.y) + " x " +
           std::to_string(grid.z) + " blocks";
  if (dynamic_bytes > dynamic_limit)
    return "dynamic shared memory of " + std::to_string(dynamic_bytes) + " bytes exceeds the function's limit of " +
           std::to_string(dynamic_limit) + " bytes (raise max_dynamic_shared_size_bytes)";
  std::unique_ptr<unsigned char, decltype(&free)> dyn(
      static_cast<unsigned char*>(aligned_alloc(16, (dynamic_bytes + 15) / 16 * 16 + 16)), &free);
  g.dynamic = dyn.get();
  g.dynamic_bytes = dynamic_bytes;
  static std::vector<char*> stacks;
  while (stacks.size() < nthreads) stacks.push_back(static_cast<char*>(malloc(kStackBytes)));
  g.fibers.assign(nthreads, Fiber());
  std::vector<size_t> sequence(nthreads);
  // blocks in the launch's order too (ascending, descending or shuffled), so that a block that depends on
  // another block having run first shows as results that depend on the order
  const size_t nblocks = (size_t)grid.x * grid.y * grid.z;
  std::vector<size_t> blocks(nblocks);
  arrange(blocks, order);
  for (size_t lb : blocks) {
    if (!g.error.empty()) break;
    const unsigned bx = (unsigned)(lb % grid.x), by = (unsigned)((lb / grid.x) % grid.y),
                   bz = (unsigned)(lb / grid.x / grid.y);
    g.block_idx = uint3{bx, by, bz};
    for (auto& s : g.statics) memset(s.ptr, 0xFF, s.bytes);
    memset(g.dynamic, 0xFF, dynamic_bytes);
    for (size_t t = 0; t < nthreads; ++t) {
      Fiber& f = g.fibers[t];
      f = Fiber();
      f.stack = stacks[t];
      f.tid = uint3{(unsigned)(t % block.x), (unsigned)((t / block.x) % block.y), (unsigned)(t / block.x / block.y)};
#ifdef PYRGD_EMU_ASAN
      ASAN_UNPOISON_MEMORY_REGION(f.stack, kStackBytes);  // frames left by the previous block's fiber
#endif
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack;
      f.ctx.uc_stack.ss_size = kStackBytes;
      f.ctx.uc_link = &g.scheduler;
      makecontext(&f.ctx, (void (*)())fiber_entry, 0);
    }
    for (;;) {
      arrange(sequence, order);
      for (size_t t : sequence) {
        Fiber& f = g.fibers[t];
        if (f.state != 0) continue;
        g.current = &f;
        g.thread_idx = f.tid;
        to_fiber(&f);
      }
      size_t waiting = 0, exited = 0;
      unsigned long lo = ~0UL, hi = 0;
      for (auto& f : g.fibers) {
        if (f.state == 1) {
          ++waiting;
          lo = f.barriers < lo ? f.barriers : lo;
          hi = f.barriers > hi ? f.barriers : hi;
        } else {
          ++exited;
        }
      }
      if (waiting == 0) break;
      if (exited > 0 || lo != hi) {
        fail("block (" + std::to_string(bx) + ", " + std::to_string(by) + ", " + std::to_string(bz) +
             "): __syncthreads() reached by " + std::to_string(waiting) + " threads while " +
             std::to_string(exited) + " had exited or were at another barrier (barrier counts " +
             std::to_string(lo) + " .. " + std::to_string(hi) + ")");
        break;
      }
      for (auto& f : g.fibers) f.state = 0;
    }
    if (g.error.empty() && g.static_bytes + dynamic_bytes > kBlockSharedLimit)
      fail("static + dynamic shared memory of " + std::to_string(g.static_bytes + dynamic_bytes) +
           " bytes exceeds the 227 KiB a block may use");
  }
  for (auto& s : g.statics) free(s.ptr);
  g.statics.clear();
  g.static_bytes = 0;
  g.dynamic = nullptr;
  return g.error;
}

// Type codes of kernel parameters, checked against the arguments the host passes: "i4" int, "i8" long long, "u4"
// unsigned, "f4" float, "f8" double, "*" + code for a pointer.
template <class T>
struct Code {
  static std::string get() {
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_pointer_v<U>) {
      return "*" + Code<std::remove_pointer_t<U>>::get();
    } else if constexpr (std::is_same_v<U, float4>) {
      return "v16";
    } else if constexpr (std::is_floating_point_v<U>) {
      return "f" + std::to_string(sizeof(U));
    } else if constexpr (std::is_integral_v<U> && std::is_signed_v<U>) {
      return "i" + std::to_string(sizeof(U));
    } else if constexpr (std::is_integral_v<U>) {
      return "u" + std::to_string(sizeof(U));
    } else {
      return "?";
    }
  }
};

template <class... A, size_t... I>
void call_with(void (*k)(A...), void** args, std::index_sequence<I...>) {
  k(*static_cast<std::remove_reference_t<A>*>(args[I])...);
}

template <class... A>
void call(void (*k)(A...), void** args) {
  call_with(k, args, std::index_sequence_for<A...>{});
}

template <class... A>
struct Entry {
  static std::string signature() {
    std::string s;
    ((s += Code<A>::get() + " "), ...);
    return s;
  }
};

template <class... A>
std::string signature_of(void (*)(A...)) {
  return Entry<A...>::signature();
}

}  // namespace emu

#endif  // PYRGD_CUDA_EMU_H
