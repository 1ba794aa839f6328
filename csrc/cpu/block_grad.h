// pyrgd CPU backend: the gradient of one block of the wide layer's neurons for a given upstream gradient G, the body
// shared by `step` (wide_kernels.cpp: the gradient, then the update) and `wide_grad` (wide_grad_kernels.cpp: the
// gradient written out), so that both take the same products in the same order (wide_grad's dW1, dW2 are the bits
// that step applies).
#ifndef PYRGD_CPU_BLOCK_GRAD_H
#define PYRGD_CPU_BLOCK_GRAD_H

#include <pyrgd/runtime.h>
#include <pyrgd/wide.h>

#include "kernel_util.h"
#include "tile_ops.h"

#include <algorithm>
#include <cstddef>
#include <stdexcept>

namespace pyrgd {
namespace cpu {

// A thread's scratch for block_gradient, in elements of T: ZS and PD (R x kBlock: Z then S, P then D), W2[T, :]^T
// (n2 x kBlock), dW2[T, :]^T (n2 x kBlock) and dW1[:, T] (d x kBlock). R = min(kRowChunk, N).
struct BlockGradScratch {
  std::size_t R, szZ, szW2T, szG1, per_thread;
  BlockGradScratch(const WideShape& s) {
    R = std::min(kRowChunk, s.N);
    szZ = util::checked_mul(R, kBlock);
    szW2T = util::checked_mul(s.n2, kBlock);
    szG1 = util::checked_mul(s.d, kBlock);
    per_thread = 2 * szZ + 2 * szW2T + szG1;
    if (per_thread < szZ || per_thread < szG1) throw std::length_error("pyrgd._cpu: buffer size overflows size_t");
  }
  // The parts of the thread's scratch starting at `base`.
  template <class T>
  void parts(T* base, T*& ZS, T*& PD, T*& W2T, T*& gW2T, T*& gW1) const {
    ZS = base;
    PD = ZS + szZ;
    W2T = PD + szZ;
    gW2T = W2T + szW2T;
    gW1 = gW2T + szW2T;
  }
};

// The gradient of the block of neurons [t0, t0 + nb) (nb <= kBlock) of Z_2 = a1 sigma(X W1) W2 for the upstream
// gradient G = dPhi/dZ_2 (N, n2): gW1 (d x kBlock, row stride kBlock) receives dPhi/dW1[:, T] and gW2T (n2 x kBlock)
// dPhi/dW2[T, :]^T; W2T receives W2[T, :]^T. Summed over chunks of sc.R rows in order, each element one FMA chain per
// chunk: P = G W2[T, :]^T, Z = X W1[:, T], S = a1 sigma(Z), D = (a1 P) sigma'(Z), dW2^T += G^T S, dW1 += X^T D.
// Shapes and conventions of pyrgd/wide.h; ZS, PD, W2T, gW2T, gW1 from BlockGradScratch::parts (columns past nb of
// ZS and PD are read by no product; they must hold finite values: zero-fill the scratch once).
template <class T>
inline void block_gradient(const WideShape& s, const BlockGradScratch& sc, const TileOps<T>& ops, int act,
                           const T* X, const T* W1, const T* W2, const T* G, T gamma, T a1, std::size_t t0,
                           std::size_t nb, T* ZS, T* PD, T* W2T, T* gW2T, T* gW1) {
  const std::size_t N = s.N, d = s.d, n1 = s.n1, n2 = s.n2;
  const T* const W2blk = W2 + t0 * n2;
  for (std::size_t b = 0; b < nb; ++b)
    for (std::size_t c = 0; c < n2; ++c) W2T[c * kBlock + b] = W2blk[b * n2 + c];
  std::fill(gW1, gW1 + sc.szG1, T(0));
  std::fill(gW2T, gW2T + sc.szW2T, T(0));
  for (std::size_t r0 = 0; r0 < N; r0 += sc.R) {
    const std::size_t rows = std::min(sc.R, N - r0);
    const T* Xr = X + r0 * d;
    const T* Gr = G + r0 * n2;
    ops.gemm_nn(rows, nb, n2, Gr, n2, W2T, kBlock, PD, kBlock, false);  // P = G W2[T, :]^T
    // Z = X W1[:, T], then S = a1 sigma(Z), D = (a1 P) sigma'(Z) row block by row block
    ops.gemm_nn_act(rows, nb, d, Xr, d, W1 + t0, n1, ZS, kBlock, act, gamma, a1, PD, 0);
    ops.gemm_tn(n2, nb, rows, Gr, n2, ZS, kBlock, gW2T, kBlock, true);  // dW2[T, :]^T += G^T S
    ops.gemm_tn(d, nb, rows, Xr, d, PD, kBlock, gW1, kBlock, true);     // dW1[:, T] += X^T D
  }
}

}  // namespace cpu
}  // namespace pyrgd

#endif  // PYRGD_CPU_BLOCK_GRAD_H
