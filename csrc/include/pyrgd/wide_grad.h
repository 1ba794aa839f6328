// pyrgd/wide_grad.h -- the gradients of the wide first layer on the CPU given the upstream gradient, nothing applied:
// what an autograd system (PyTorch, JAX) calls for the layer's backward pass.
//
// Part of pyrgd's C++ API (pyrgd/kernels.h); implemented in csrc/cpu/wide_grad_kernels.cpp. Namespace pyrgd::cpu.
// Conventions as in pyrgd/wide.h: dense row-major arrays of one floating type T (float or double), owned by the
// caller and passed as raw pointers, every dimension >= 1; X (N, d), W1 (d, n1), W2 (n1, n2), G (N, n2); `act` a
// code of pyrgd/activations.h, `gamma` its slope, `a1` the layer's multiplier.
#ifndef PYRGD_WIDE_GRAD_H
#define PYRGD_WIDE_GRAD_H

#include <cstddef>

#include "pyrgd/runtime.h"
#include "pyrgd/wide.h"

namespace pyrgd {
namespace cpu {

// With Z = X W1, S = a1 sigma(Z) and D = a1 (G W2^T) (.) sigma'(Z) (N, n1; never stored whole), given G = dPhi/dH
// for H = S W2:
//   dW1 = X^T D (d, n1),  dW2 = S^T G (n1, n2),  and, when dX is not null, dX = D W1^T (N, d).
//   Out: dW1, dW2, dX written (their previous content is ignored); they must not overlap the inputs or each other.
// How it runs: (1) parallel over blocks of kBlock neurons, as step of pyrgd/wide.h (the same products in the same
// order: dW1 and dW2 are bit for bit the gradients step applies); (2) with dX, parallel over tiles of rows as
// forward: per tile and block T, Z and P = G W2[T, :]^T again, D, then dX[rows] += D W1[:, T]^T, summed over the
// kBlock neurons of a block, then the blocks of a group of kSuperBlocks, then the groups (X W1 is thus computed
// twice with dX). Memory: per-thread buffers of a few rows and of one block's weights and gradients (they do not
// grow with n1); nothing N x n1.
// Precision: every product accumulated in T; sums over samples by chunks of kRowChunk rows, then over chunks.
// Determinism: bit-identical for any number of threads (every output element is computed by one thread, in an
// order fixed by the shapes).
// Errors: an unknown `act` is std::invalid_argument (before anything is written); std::length_error when a work
// buffer's size overflows size_t; std::bad_alloc.
template <class T>
void wide_grad(const WideShape& s, const T* X, const T* W1, const T* W2, const T* G, int act, T gamma, T a1, T* dW1,
               T* dW2, T* dX);

extern template void wide_grad<float>(const WideShape&, const float*, const float*, const float*, const float*, int,
                                      float, float, float*, float*, float*);
extern template void wide_grad<double>(const WideShape&, const double*, const double*, const double*, const double*,
                                       int, double, double, double*, double*, double*);

}  // namespace cpu
}  // namespace pyrgd

#endif  // PYRGD_WIDE_GRAD_H
