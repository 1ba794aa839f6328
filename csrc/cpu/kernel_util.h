// pyrgd CPU backend: small helpers shared by the kernel files (wide_kernels.cpp, tail_kernels.cpp,
// grad_kernels.cpp).
#ifndef PYRGD_CPU_KERNEL_UTIL_H
#define PYRGD_CPU_KERNEL_UTIL_H

#include <cstddef>
#include <limits>
#include <stdexcept>

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

// a * b * c, or std::length_error (ValueError in Python) when it does not fit in size_t (buffer sizes).
inline std::size_t checked_mul(std::size_t a, std::size_t b, std::size_t c = 1) {
  const std::size_t mx = std::numeric_limits<std::size_t>::max();
  if (a != 0 && b > mx / a) throw std::length_error("pyrgd._cpu: buffer size overflows size_t");
  const std::size_t ab = a * b;
  if (ab != 0 && c > mx / ab) throw std::length_error("pyrgd._cpu: buffer size overflows size_t");
  return ab * c;
}

inline std::size_t ceil_div(std::size_t a, std::size_t b) { return (a + b - 1) / b; }

}  // namespace util
}  // namespace cpu
}  // namespace pyrgd

#endif  // PYRGD_CPU_KERNEL_UTIL_H
