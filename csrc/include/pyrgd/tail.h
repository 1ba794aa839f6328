// pyrgd/tail.h -- the pyramidal tail of the network (layers 2..L, docs/theory.md section 1) on the CPU: its loss and
// gradients from the wide layer's output, streamed over chunks of rows.
//
// Part of pyrgd's C++ API (pyrgd/kernels.h); implemented in csrc/cpu/tail_kernels.cpp. Namespace pyrgd::cpu.
// Conventions as in pyrgd/wide.h: dense row-major arrays of one floating type T (float or double), owned by the
// caller and passed as raw pointers, every dimension >= 1; `act` a code of pyrgd/activations.h, `gamma` its slope.
#ifndef PYRGD_TAIL_H
#define PYRGD_TAIL_H

#include <cstddef>

#include "pyrgd/runtime.h"

namespace pyrgd {
namespace cpu {

// The chunks of kRowChunk rows are summed in at most this many groups of consecutive chunks (see tail()).
constexpr std::size_t kTailChunks = 64;

// The tail from H = Z_2: per chunk of rows the forward F_l = a_l sigma(Z_l), Z_{l+1} = F_l W_{l+1} up to F_L,
// D_L = F_L - Y, then backwards dPhi/dW_l += F_{l-1}^T D_l and D_{l-1} = a_{l-1} (D_l W_l^T) (.) sigma'(Z_{l-1})
// down to D_2 = G = dPhi/dZ_2. Returns Phi = 1/2 ||F_L - Y||_F^2 (accumulated in double).
//   Shapes: N rows; nt = L - 2 tail weights (nt = 0, L = 2: G = H - Y and no gradient); dims = [n_2, ..., n_L]
//   (nt + 1 values); W[j] = W_{j+3} (dims[j], dims[j+1]) and mult[j] = a_{j+2} (nt values each); H (N, n_2),
//   Y (N, n_L).
//   Out: G (N, n_2) and grads[j] = dPhi/dW_{j+3} (dims[j], dims[j+1]), written (their previous content is ignored).
//   G must not overlap H, Y or W; grads must not overlap anything.
//   Memory: nothing of N rows is allocated besides the caller's G: the chunks' activations live in per-thread
//   buffers of a few rows, and the partial gradients of the kTailChunks groups in double.
//   Errors: an unknown `act` is std::invalid_argument (before anything is written); std::length_error /
//   std::bad_alloc for the work buffers.
//   Determinism: the rows are cut into chunks of kRowChunk rows, and the chunks into at most kTailChunks groups of
//   consecutive chunks, by N alone; a chunk's gradient is one FMA chain over its rows (in T), added in double to its
//   group's sum in chunk order, and the groups' sums (gradients and losses) are added in group order: the same bits
//   for any number of threads.
template <class T>
double tail(std::size_t N, std::size_t nt, const std::size_t* dims, const T* H, const T* Y, const T* const* W,
            const T* mult, int act, T gamma, T* G, T* const* grads);

extern template double tail<float>(std::size_t, std::size_t, const std::size_t*, const float*, const float*,
                                   const float* const*, const float*, int, float, float*, float* const*);
extern template double tail<double>(std::size_t, std::size_t, const std::size_t*, const double*, const double*,
                                    const double* const*, const double*, int, double, double*, double* const*);

}  // namespace cpu
}  // namespace pyrgd

#endif  // PYRGD_TAIL_H
