// pyrgd CPU backend: small helpers shared by the kernel files (wide_kernels.cpp, tail_kernels.cpp,
// grad_kernels.cpp).
#ifndef PYRGD_CPU_KERNEL_UTIL_H
#define PYRGD_CPU_KERNEL_UTIL_H

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>

#include <sched.h>
#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pyrgd {
namespace cpu {
namespace util {

using idx = std::ptrdiff_t;  // OpenMP loop index (signed: OpenMP 2.0 compilers accept only signed loops)

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Threads of the current parallel region (1 outside one).
inline int team_size() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// A barrier for the threads of one parallel region that waits by spinning, then by spinning with sched_yield(): the
// panels' barriers of network_grad (several per panel, a hundred per step). libgomp's barrier spins, then sleeps:
// on a quiet machine (a VM here) sleeping at once made two threads no faster than one (a sleeping thread's wake-up
// costs more than the barrier's usual imbalance), and beside a busy process a long spin held a core that the
// preempted partner needed (two threads 2 to 4x slower than one). A thread that yields gives its core to whatever
// else is runnable there (the partner it waits for, or another process) and, on a quiet machine, returns at once.
// (A futex sleep after the spin, tried instead of the yield, measured slightly slower beside a busy process.)
// Sense by generation: wait() returns once each of the team's threads has called it; the writes before it are
// visible after it (acquire/release).
class PanelBarrier {
 public:
  // the team's size, set by one thread while no thread waits (e.g. in an omp single, whose barrier publishes it)
  void set_size(unsigned n) { n_ = n; }
  void wait() {
    if (n_ <= 1) return;
    const unsigned gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_) {
      count_.store(0, std::memory_order_relaxed);
      gen_.fetch_add(1, std::memory_order_release);
      return;
    }
    for (unsigned i = 0; gen_.load(std::memory_order_acquire) == gen; ++i) {
      if (i < kSpins) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
      } else {
        sched_yield();
      }
    }
  }

 private:
  static constexpr unsigned kSpins = 2000;  // pause instructions before yielding: about 0.05 to 0.3 ms
  unsigned n_ = 1;
  std::atomic<unsigned> count_{0};
  std::atomic<unsigned> gen_{0};
};

// The CPUs the calling thread may run on (its affinity mask), for CpuPin; empty where unknown (not Linux).
class CpuSet {
 public:
  CpuSet() {
#ifdef __linux__
    CPU_ZERO(&set_);
    if (sched_getaffinity(0, sizeof(set_), &set_) == 0)
      for (int c = 0; c < CPU_SETSIZE; ++c)
        if (CPU_ISSET(c, &set_)) cpus_[n_ < kMax ? n_++ : n_] = c;
#endif
  }
  int count() const { return n_; }
  int cpu(int i) const { return cpus_[i]; }

 private:
  static constexpr int kMax = 1024;
  int n_ = 0;
  int cpus_[kMax + 1] = {};
#ifdef __linux__
  cpu_set_t set_;
#endif
};

// Pins the calling thread to one CPU for its lifetime, then gives it back its previous affinity mask: what a team
// that uses every CPU it may run on does for the length of one kernel call (network_grad's row groups), so that the
// scheduler cannot put two of its threads on one CPU while another process has a CPU to itself (seen here: a third
// of the time, which left two threads no faster than one). Does nothing where the call fails or off Linux.
class CpuPin {
 public:
  explicit CpuPin(int cpu) {
#ifdef __linux__
    if (cpu < 0 || cpu >= CPU_SETSIZE || sched_getaffinity(0, sizeof(old_), &old_) != 0) return;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    pinned_ = sched_setaffinity(0, sizeof(one), &one) == 0;
#else
    (void)cpu;
#endif
  }
  ~CpuPin() {
#ifdef __linux__
    if (pinned_) sched_setaffinity(0, sizeof(old_), &old_);
#endif
  }
  CpuPin(const CpuPin&) = delete;
  CpuPin& operator=(const CpuPin&) = delete;

 private:
  bool pinned_ = false;
#ifdef __linux__
  cpu_set_t old_;
#endif
};

// a * b * c, or std::length_error (ValueError in Python) when it does not fit in size_t (buffer sizes).
inline std::size_t checked_mul(std::size_t a, std::size_t b, std::size_t c = 1) {
  const std::size_t mx = std::numeric_limits<std::size_t>::max();
  if (a != 0 && b > mx / a) throw std::length_error("pyrgd._cpu: buffer size overflows size_t");
  const std::size_t ab = a * b;
  if (ab != 0 && c > mx / ab) throw std::length_error("pyrgd._cpu: buffer size overflows size_t");
  return ab * c;
}

inline std::size_t ceil_div(std::size_t a, std::size_t b) { return (a + b - 1) / b; }

// n elements of a trivial type T starting on a cache line (64 bytes), zero-filled unless `zero` is false: the
// kernels' work buffers. (std::vector and new[] give 16-byte alignment, and a vector of a tile that straddles two
// cache lines costs two accesses.)
template <class T>
class AlignedBuffer {
 public:
  static constexpr std::size_t kAlign = 64;
  // Buffers of at least this many bytes are mapped from the kernel and unmapped when freed: glibc keeps a freed block
  // below its dynamic mmap threshold (which grows up to 32 MiB after a large free) in its heap, so that a call's
  // workspace of tens of MiB, allocated and freed call after call (lr="auto"'s gradient products), stayed in the
  // resident memory beside the engine's own (L1's peak: 93 MiB over a 50 MiB plan).
  static constexpr std::size_t kMapBytes = std::size_t(1) << 20;
  explicit AlignedBuffer(std::size_t n, bool zero = true) : n_(n) {
    const std::size_t bytes = checked_mul(std::max<std::size_t>(n, 1), sizeof(T));
#if defined(__unix__) || defined(__APPLE__)
    if (bytes >= kMapBytes) {
      void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) throw std::bad_alloc();
      p_ = static_cast<T*>(p);  // page-aligned and zero-filled
      mapped_ = bytes;
      return;
    }
#endif
    p_ = static_cast<T*>(::operator new[](bytes, std::align_val_t(kAlign)));
    if (zero && n) std::memset(static_cast<void*>(p_), 0, n * sizeof(T));
  }
  ~AlignedBuffer() {
#if defined(__unix__) || defined(__APPLE__)
    if (mapped_) {
      munmap(static_cast<void*>(p_), mapped_);
      return;
    }
#endif
    ::operator delete[](p_, std::align_val_t(kAlign));
  }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  T* data() { return p_; }
  const T* data() const { return p_; }
  std::size_t size() const { return n_; }

 private:
  std::size_t n_;
  std::size_t mapped_ = 0;  // bytes mapped (0: from operator new)
  T* p_ = nullptr;
};

}  // namespace util
}  // namespace cpu
}  // namespace pyrgd

#endif  // PYRGD_CPU_KERNEL_UTIL_H
