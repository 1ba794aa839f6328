// pyrgd CPU backend: the gradients of the wide layer given the upstream gradient (pyrgd/wide_grad.h), with the tile
// operations of tile_ops.h (the instruction set chosen at run time, as in wide_kernels.cpp). No buffer is allocated
// inside a parallel region; per-thread buffers (none grows with n1): pass 1, 2 kRowChunk x kBlock + (d + 2 n2) x
// kBlock; pass 2 (dX), 2 R x kBlock + (n2 + d) x kBlock + R x d with R <= kForwardRows rows.
#include <pyrgd/activations.h>
#include <pyrgd/runtime.h>
#include <pyrgd/wide.h>
#include <pyrgd/wide_grad.h>

#include "block_grad.h"
#include "kernel_util.h"
#include "tile_ops.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace pyrgd {
namespace cpu {

namespace {

using std::size_t;
using util::ceil_div;
using util::checked_mul;
using util::idx;
using util::thread_id;

template <class T>
inline void zero(T* p, size_t n) {
  std::fill(p, p + n, T(0));
}

// W2[t0 : t0 + nb, :]^T into Wt (n2 x kBlock).
template <class T>
inline void transpose_w2(const T* W2, size_t n2, size_t t0, size_t nb, T* Wt) {
  const T* blk = W2 + t0 * n2;
  for (size_t b = 0; b < nb; ++b)
    for (size_t c = 0; c < n2; ++c) Wt[c * kBlock + b] = blk[b * n2 + c];
}

// Pass 1: parallel over blocks of neurons; per block block_gradient (block_grad.h: the body step_tiles of
// wide_kernels.cpp runs too, so these are the bits step applies), then the block's gradients are written out.
template <class T>
void weight_grads(const WideShape& s, const TileOps<T>& ops, int act, const T* X, const T* W1, const T* W2,
                  const T* G, T gamma, T a1, T* dW1, T* dW2) {
  const size_t d = s.d, n1 = s.n1, n2 = s.n2;
  const size_t nblocks = ceil_div(n1, kBlock);
  const int P = int(std::max<size_t>(1, std::min<size_t>(size_t(get_num_threads()), nblocks)));
  const BlockGradScratch sc(s);  // per thread: ZS, PD, W2[T, :]^T, dW2[T, :]^T, dW1[:, T] (block_grad.h)
  util::AlignedBuffer<T> buf(checked_mul(size_t(P), sc.per_thread));  // zeros: the padding columns stay finite
  T* const base = buf.data();

#pragma omp parallel num_threads(P)
  {
    T *ZS, *PD, *W2T, *gW2T, *gW1;
    sc.parts(base + size_t(thread_id()) * sc.per_thread, ZS, PD, W2T, gW2T, gW1);
#pragma omp for schedule(dynamic, 1)
    for (idx bi = 0; bi < idx(nblocks); ++bi) {
      const size_t t0 = size_t(bi) * kBlock, nb = std::min(kBlock, n1 - t0);
      block_gradient<T>(s, sc, ops, act, X, W1, W2, G, gamma, a1, t0, nb, ZS, PD, W2T, gW2T, gW1);
      for (size_t k = 0; k < d; ++k) std::copy(gW1 + k * kBlock, gW1 + k * kBlock + nb, dW1 + k * n1 + t0);
      T* const out2 = dW2 + t0 * n2;
      for (size_t b = 0; b < nb; ++b)
        for (size_t c = 0; c < n2; ++c) out2[b * n2 + c] = gW2T[c * kBlock + b];
    }
  }
}

// Pass 2: dX = D W1^T, parallel over tiles of R rows (R from N and the thread count; it changes no summation
// order). Per tile and block T: P = G W2[T, :]^T, Z = X W1[:, T], D = (a1 P) sigma'(Z), dXg += D W1[:, T]^T (one FMA
// chain over the block's neurons); dXg is added into dX[rows] after every group of kSuperBlocks blocks, in order.
// Per thread: ZS, PD (R x kBlock), W2[T, :]^T (n2 x kBlock), W1[:, T]^T (kBlock x d), dXg (R x d).
template <class T>
void input_grad(const WideShape& s, const TileOps<T>& ops, int act, const T* X, const T* W1, const T* W2, const T* G,
                T gamma, T a1, T* dX) {
  const size_t N = s.N, d = s.d, n1 = s.n1, n2 = s.n2;
  const int P0 = get_num_threads();
  size_t R = ceil_div(N, size_t(P0) * 8);
  R = std::min<size_t>(kForwardRows, std::max<size_t>(16, ceil_div(R, 16) * 16));
  R = std::min(R, N);
  const size_t ntiles = ceil_div(N, R);
  const int P = int(std::max<size_t>(1, std::min<size_t>(size_t(P0), ntiles)));
  const size_t nblocks = ceil_div(n1, kBlock);
  const size_t szZ = checked_mul(R, kBlock), szW2T = checked_mul(n2, kBlock), szW1T = checked_mul(kBlock, d),
               szX = checked_mul(R, d);
  const size_t per_thread = 2 * szZ + szW2T + szW1T + szX;
  if (per_thread < szW1T || per_thread < szW2T || per_thread < szX)
    throw std::length_error("pyrgd._cpu: buffer size overflows size_t");
  util::AlignedBuffer<T> buf(checked_mul(size_t(P), per_thread));  // zeros: the padding columns stay finite
  T* const base = buf.data();

#pragma omp parallel num_threads(P)
  {
    T* ZS = base + size_t(thread_id()) * per_thread;
    T* PD = ZS + szZ;
    T* W2T = PD + szZ;
    T* W1T = W2T + szW2T;
    T* dXg = W1T + szW1T;
#pragma omp for schedule(dynamic, 1)
    for (idx tile = 0; tile < idx(ntiles); ++tile) {
      const size_t r0 = size_t(tile) * R, rows = std::min(R, N - r0);
      const T* Xr = X + r0 * d;
      const T* Gr = G + r0 * n2;
      T* dXt = dX + r0 * d;
      zero(dXt, rows * d);
      for (size_t sb = 0; sb < nblocks; sb += kSuperBlocks) {
        const size_t se = std::min(nblocks, sb + kSuperBlocks);
        zero(dXg, rows * d);
        for (size_t blk = sb; blk < se; ++blk) {
          const size_t t0 = blk * kBlock, nb = std::min(kBlock, n1 - t0);
          transpose_w2(W2, n2, t0, nb, W2T);
          for (size_t k = 0; k < d; ++k)
            for (size_t b = 0; b < nb; ++b) W1T[b * d + k] = W1[k * n1 + t0 + b];
          ops.gemm_nn(rows, nb, n2, Gr, n2, W2T, kBlock, PD, kBlock, false);  // P = G W2[T, :]^T
          ops.gemm_nn_act(rows, nb, d, Xr, d, W1 + t0, n1, ZS, kBlock, act, gamma, a1, PD, 0);  // D in PD
          ops.gemm_nn(rows, d, nb, PD, kBlock, W1T, d, dXg, d, true);  // dXg += D W1[:, T]^T
        }
        ops.add_into(rows * d, dXt, dXg);
      }
    }
  }
}

}  // namespace

template <class T>
void wide_grad(const WideShape& s, const T* X, const T* W1, const T* W2, const T* G, int act, T gamma, T a1, T* dW1,
               T* dW2, T* dX) {
  if (!is_activation_code(act))
    throw std::invalid_argument("act_code: unknown activation code " + std::to_string(act));
  const TileOps<T>& ops = active_tile_ops<T>();
  weight_grads<T>(s, ops, act, X, W1, W2, G, gamma, a1, dW1, dW2);
  if (dX) input_grad<T>(s, ops, act, X, W1, W2, G, gamma, a1, dX);
}

template void wide_grad<float>(const WideShape&, const float*, const float*, const float*, const float*, int, float,
                               float, float*, float*, float*);
template void wide_grad<double>(const WideShape&, const double*, const double*, const double*, const double*, int,
                                double, double, double*, double*, double*);

}  // namespace cpu
}  // namespace pyrgd
