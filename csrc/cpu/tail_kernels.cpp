// pyrgd CPU backend: the pyramidal tail (layers 2..L) streamed over chunks of rows; declared in pyrgd/tail.h.
//
// The tail is small next to the wide layer (its products have n_2 x n_3 inner sizes), but done with NumPy it keeps
// several N x n_l temporaries and calls a multithreaded BLAS whose spinning worker threads compete with the
// kernels' OpenMP threads for the cores. Here one pass over chunks of rows does the forward, the loss and the
// backward of a chunk while its activations stay in the cache, with the same tile operations as the wide layer.
#include <pyrgd/runtime.h>
#include <pyrgd/tail.h>

#include "kernel_util.h"
#include "tail_plan.h"
#include "tile_ops.h"

#include <algorithm>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

namespace pyrgd {
namespace cpu {

using std::size_t;
using util::ceil_div;
using util::idx;
using util::thread_id;

template <class T>
TailPlan<T>::TailPlan(size_t nt_, const size_t* dims_, const T* const* W_, const T* mult_, size_t R_)
    : nt(nt_), R(R_), n2(dims_[0]), nL(dims_[nt_]), dims(dims_), W(W_), mult(mult_), goff(nt_ + 1, 0),
      zoff(nt_ + 1, 0) {
  for (size_t j = 0; j <= nt; ++j) maxd = std::max(maxd, dims[j]);
  for (size_t j = 0; j < nt; ++j) {
    goff[j] = gsz;
    gsz += dims[j] * dims[j + 1];
  }
  WT.resize(gsz);
  for (size_t j = 0; j < nt; ++j)
    for (size_t r = 0; r < dims[j]; ++r)
      for (size_t c = 0; c < dims[j + 1]; ++c) WT[goff[j] + c * dims[j] + r] = W[j][r * dims[j + 1] + c];
  // Per thread: Z_l and F_l of every hidden tail layer, Z_L, two buffers for D_l W_l^T.
  for (size_t j = 0; j < nt; ++j) {
    zoff[j] = per_thread;
    per_thread += 2 * R * dims[j];
  }
  zoff[nt] = per_thread;
  per_thread += R * nL + 2 * R * maxd;
}

template <class T>
double TailPlan<T>::run(const TileOps<T>& ops, int act, T gamma, size_t rows, const T* Z2, const T* Yr, T* Gr, T* gc,
                        T* tb) const {
  // forward: Z_2 = the chunk's rows; F_l = a_l sigma(Z_l); Z_{l+1} = F_l W_{l+1}
  for (size_t j = 0; j < nt; ++j) {
    T* Zj = tb + zoff[j];
    T* Fj = Zj + R * dims[j];
    const size_t cnt = rows * dims[j];
    if (j == 0) std::copy(Z2, Z2 + cnt, Zj);
    std::copy(Zj, Zj + cnt, Fj);
    ops.act_value(act, cnt, Fj, gamma, mult[j]);
    T* Znext = j + 1 < nt ? tb + zoff[j + 1] : tb + zoff[nt];
    ops.gemm_nn(rows, dims[j + 1], dims[j], Fj, dims[j], W[j], dims[j + 1], Znext, dims[j + 1], false);
  }
  // D_L = F_L - Y (with L = 2, F_L = Z_2 and D_L is G itself)
  T* D = nt == 0 ? Gr : tb + zoff[nt];
  if (nt == 0) std::copy(Z2, Z2 + rows * n2, D);
  double acc = 0.0;
  for (size_t e = 0; e < rows * nL; ++e) {
    D[e] -= Yr[e];
    acc += double(D[e]) * double(D[e]);
  }
  // backward: dW_l = F_{l-1}^T D_l; D_{l-1} = a_{l-1} (D_l W_l^T) (.) sigma'(Z_{l-1})
  T* const spare[2] = {tb + zoff[nt] + R * nL, tb + zoff[nt] + R * nL + R * maxd};
  int which = 0;
  for (size_t jj = nt; jj-- > 0;) {
    T* Zj = tb + zoff[jj];
    T* Fj = Zj + R * dims[jj];
    ops.gemm_tn(dims[jj], dims[jj + 1], rows, Fj, dims[jj], D, dims[jj + 1], gc + goff[jj], dims[jj + 1], false);
    T* Dn = jj == 0 ? Gr : spare[which];
    which ^= 1;
    ops.gemm_nn(rows, dims[jj], dims[jj + 1], D, dims[jj + 1], WT.data() + goff[jj], dims[jj], Dn, dims[jj], false);
    ops.act_grad(act, rows * dims[jj], Zj, Dn, gamma, mult[jj]);
    D = Dn;
  }
  return 0.5 * acc;
}

template struct TailPlan<float>;
template struct TailPlan<double>;

template <class T>
double tail(size_t N, size_t nt, const size_t* dims, const T* H, const T* Y, const T* const* W, const T* mult,
            int act, T gamma, T* G, T* const* grads) {
  if (!is_activation_code(act)) throw std::invalid_argument("act_code: unknown activation code " + std::to_string(act));
  const TileOps<T>& ops = active_tile_ops<T>();
  // Chunks of kRowChunk rows (the first-level sums over samples, as in the wide layer's step), in at most
  // kTailChunks groups of consecutive chunks; both from N alone, so the order of every sum is fixed by N.
  const size_t R = std::min(N, kRowChunk);
  const size_t nchunks = ceil_div(N, R);
  const size_t ngroups = std::min(nchunks, kTailChunks), per_group = ceil_div(nchunks, ngroups);
  const int P = int(std::max<size_t>(1, std::min<size_t>(size_t(get_num_threads()), ngroups)));
  const TailPlan<T> plan(nt, dims, W, mult, R);
  const size_t gsz = plan.grad_size(), n2 = dims[0], nL = dims[nt];
  // per-group gradients and losses (double); per thread: the plan's buffers and one chunk's gradients (T)
  std::vector<double> part(ngroups * gsz, 0.0), lossp(ngroups, 0.0);
  const size_t per_thread = plan.thread_buffer_size() + gsz;
  util::AlignedBuffer<T> buf(size_t(P) * per_thread);
  T* const base = buf.data();
  double* const partp = part.data();
  double* const lp = lossp.data();

#pragma omp parallel num_threads(P)
  {
    T* const tb = base + size_t(thread_id()) * per_thread;
    T* const gc = tb + plan.thread_buffer_size();  // this chunk's gradients (T)
#pragma omp for schedule(dynamic, 1)
    for (idx gi = 0; gi < idx(ngroups); ++gi) {
      const size_t g = size_t(gi);
      double* const pg = partp + g * gsz;
      for (size_t c = g * per_group; c < std::min(nchunks, (g + 1) * per_group); ++c) {
        const size_t r0 = c * R, rows = std::min(R, N - r0);
        lp[g] += plan.run(ops, act, gamma, rows, H + r0 * n2, Y + r0 * nL, G + r0 * n2, gc, tb);
        for (size_t e = 0; e < gsz; ++e) pg[e] += double(gc[e]);
      }
    }
  }
  double loss = 0.0;
  for (size_t g = 0; g < ngroups; ++g) loss += lp[g];
  for (size_t j = 0; j < nt; ++j)
    for (size_t e = 0; e < plan.grad_count(j); ++e) {
      double sum = 0.0;
      for (size_t g = 0; g < ngroups; ++g) sum += partp[g * gsz + plan.grad_offset(j) + e];
      grads[j][e] = T(sum);
    }
  return loss;
}

template double tail<float>(size_t, size_t, const size_t*, const float*, const float*, const float* const*,
                            const float*, int, float, float*, float* const*);
template double tail<double>(size_t, size_t, const size_t*, const double*, const double*, const double* const*,
                             const double*, int, double, double*, double* const*);

}  // namespace cpu
}  // namespace pyrgd
