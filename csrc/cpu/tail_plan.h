// pyrgd CPU backend (internal): the pyramidal tail (layers 2..L) on one chunk of rows, shared by the streamed tail
// (tail_kernels.cpp, pyrgd._cpu.tail) and the one-pass gradient of the whole network (grad_kernels.cpp).
//
// A TailPlan holds what every chunk shares: the shapes, the weights and their transposes (for D_l W_l^T), the
// offsets of the per-thread buffers. run() does a chunk's forward F_l = a_l sigma(Z_l), Z_{l+1} = F_l W_{l+1} up to
// F_L, D_L = F_L - Y, and the backward dW_l = F_{l-1}^T D_l (the chunk's part, one FMA chain over its rows, in T)
// and D_{l-1} = a_{l-1} (D_l W_l^T) (.) sigma'(Z_{l-1}) down to D_2 = G of the chunk.
#ifndef PYRGD_CPU_TAIL_PLAN_H
#define PYRGD_CPU_TAIL_PLAN_H

#include <cstddef>
#include <vector>

#include "tile_ops.h"

namespace pyrgd {
namespace cpu {

template <class T>
struct TailPlan {
  // nt = L - 2 tail weights; dims = [n_2, ..., n_L] (nt + 1 values); W[j] = W_{j+3} (dims[j], dims[j+1]);
  // mult[j] = a_{j+2} (nt values); R: the most rows of one chunk. The pointers must outlive the plan.
  TailPlan(std::size_t nt, const std::size_t* dims, const T* const* W, const T* mult, std::size_t R);

  // One chunk of `rows` <= R rows: Z2 (rows, n_2) the chunk's Z_2, Yr (rows, n_L), Gr (rows, n_2) receives D_2,
  // gc (grad_size() values) the chunk's gradients [dW_3, ..., dW_L] one after the other (offset grad_offset(j)),
  // tb a buffer of thread_buffer_size() values of this thread. With nt = 0: Gr = Z2 - Yr. Gr may not overlap the
  // others. Returns the chunk's 1/2 ||F_L - Y||^2 (accumulated in double).
  double run(const TileOps<T>& ops, int act, T gamma, std::size_t rows, const T* Z2, const T* Yr, T* Gr, T* gc,
             T* tb) const;

  std::size_t grad_size() const { return gsz; }
  std::size_t grad_offset(std::size_t j) const { return goff[j]; }
  std::size_t grad_count(std::size_t j) const { return dims[j] * dims[j + 1]; }
  std::size_t thread_buffer_size() const { return per_thread; }

  std::size_t nt, R, n2, nL, maxd = 0, gsz = 0, per_thread = 0;
  const std::size_t* dims;
  const T* const* W;
  const T* mult;
  std::vector<std::size_t> goff, zoff;
  std::vector<T> WT;  // W_l^T (dims[j+1], dims[j]) at goff[j]
};

extern template struct TailPlan<float>;
extern template struct TailPlan<double>;

}  // namespace cpu
}  // namespace pyrgd

#endif  // PYRGD_CPU_TAIL_PLAN_H
