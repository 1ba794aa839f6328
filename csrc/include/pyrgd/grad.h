// pyrgd/grad.h -- the loss and every gradient of the whole network (wide layer and tail) on the CPU in one pass over
// panels of rows, what a training step calls; the size of its workspace and of its panels; the weight update.
//
// Part of pyrgd's C++ API (pyrgd/kernels.h); implemented in csrc/cpu/grad_kernels.cpp. Namespace pyrgd::cpu.
// Conventions as in pyrgd/wide.h: dense row-major arrays of one floating type T (float or double), owned by the
// caller and passed as raw pointers, every dimension >= 1; X (N, d), W_1 (d, n1), W_2 (n1, n2); `act` a code of
// pyrgd/activations.h, `gamma` its slope.
#ifndef PYRGD_GRAD_H
#define PYRGD_GRAD_H

#include <cstddef>

#include "pyrgd/runtime.h"
#include "pyrgd/wide.h"

namespace pyrgd {
namespace cpu {

// The panel of network_grad (S and D of its rows, or S alone for ReLU, and the lanes' Z_2): at most kGradPanelBytes,
// kGradPanelTarget aimed at, kGradPanelRowsMin..kGradPanelRowsMax rows in steps of kGradPanelRowsStep.
constexpr std::size_t kGradPanelBytes = std::size_t(16) << 20;
constexpr std::size_t kGradPanelTarget = std::size_t(4) << 20;
constexpr std::size_t kGradPanelRowsMin = 96, kGradPanelRowsMax = 240;
constexpr std::size_t kGradPanelRowsStep = 48;  // whole 6-row register tiles and 16-row tail sub-chunks

// The loss Phi = 1/2 ||F_L - Y||_F^2 (returned, accumulated in double) and every gradient dPhi/dW_l at the current
// weights, in one pass over panels of R rows: per panel, Z_1 of the kept neurons, S = a1 sigma(Z_1) and
// a1 sigma'(Z_1) kept for the panel, Z_2 = S W_2, the tail on those rows (pyrgd/tail.h), then the panel's share of
// every gradient. Each product of the wide layer is done once (step of pyrgd/wide.h computes Z_1 = X W_1 twice),
// at the price of R x n1 values of S and sigma' per panel, W_2^T and the gradients held until the last panel.
//   Shapes: s = (N, d, n1, n2); nt = L - 2 tail weights; tdims = [n_2, ..., n_L] (nt + 1 values); X (N, d),
//   Y (N, n_L), W1 (d, n1), W2 (n1, n2), Wt[j] = W_{j+3} (tdims[j], tdims[j+1]); mult = [a_1, ..., a_{L-1}]
//   (nt + 1 values).
//   Out: gW1 (d, n1), gW2 (n1, n2), gWt[j] (tdims[j], tdims[j+1]) receive dPhi/dW_l (their previous content is
//   ignored; they must not overlap the inputs or each other); grad_sq (L = nt + 2 values) receives
//   ||dPhi/dW_l||_F^2 (in double).
//   panel_rows: R, or 0 for grad_panel_rows(N, the kept neurons in whole blocks, n2, sizeof(T), act); at most N.
//   kept: the panels hold S and sigma' of the first min(kept, n1) neurons, rounded up to whole blocks of kBlock; the
//   others are recomputed (X W_1 twice for them, as in step; G and their part of Z_2 for all N rows, two N x n2
//   arrays of the workspace). kept >= n1: every neuron kept.
//   Memory: work, when not null, is the caller's workspace of work_elems elements of T, at any alignment, at least
//   grad_workspace_elems(...) for the same arguments, sharing no memory with the other arrays; its content on entry
//   is ignored and on return is undefined. work == nullptr: the kernel allocates the same amount itself, once per
//   call. Besides it, only per-thread buffers of a few rows and the tail's gradients are allocated; never N x n1
//   values unless a panel of that size is asked for.
//   Errors: an unknown `act`, or a workspace smaller than needed, is std::invalid_argument (before anything is
//   written); std::length_error when the work arrays' size overflows; std::bad_alloc.
//   Determinism: bit-identical for any number of threads (the panels and lanes are fixed by the shapes, R and kept;
//   see grad_kernels.cpp).
template <class T>
double network_grad(const WideShape& s, std::size_t nt, const std::size_t* tdims, const T* X, const T* Y,
                    const T* W1, const T* W2, const T* const* Wt, const T* mult, int act, T gamma, T* gW1, T* gW2,
                    T* const* gWt, double* grad_sq, std::size_t panel_rows, std::size_t kept, T* work,
                    std::size_t work_elems);

// The elements of T that network_grad's `work` must hold for these shapes, activation, itemsize = sizeof(T),
// panel_rows and kept: W_2^T, W_1 and its gradient by blocks, the panel, the lanes' Z_2, G and, with recomputed
// neurons, their Z_2 of all rows, plus slack to align them to 64 bytes. A caller that keeps the workspace from step
// to step saves their allocation (page faults and the clearing of fresh pages) on every call.
// Pure; std::length_error when the size overflows size_t.
std::size_t grad_workspace_elems(const WideShape& s, int act, std::size_t itemsize, std::size_t panel_rows,
                                 std::size_t kept);

// R of network_grad for N rows, n1 kept neurons, n2 and itemsize bytes per value: the largest multiple of
// kGradPanelRowsStep rows whose panel (S and D, or S alone when `act` is ReLU's code, and the lanes' Z_2) fits in
// kGradPanelTarget, clamped to [kGradPanelRowsMin, kGradPanelRowsMax] (every panel runs the kept neurons' blocks of
// W_1, W_2, W_2^T and both gradients through the cache once: more rows amortize that traffic, the tail and two
// barriers, and fewer rows make the products' inner dimension short), then cut to what fits in kGradPanelBytes (a
// multiple of 48 rows, or of 16 below 48); where not even 16 rows fit there (a very wide layer), as many rows as
// fit, at least 1; at most N. The panel is thus at most max(kGradPanelBytes, one row), never N x n1 unless N is that
// small. `act` is only compared with ReLU's code (any other value: the panel holds S and D). Pure, never throws.
std::size_t grad_panel_rows(std::size_t N, std::size_t n1, std::size_t n2, std::size_t itemsize, int act);

// W[e] -= lr G[e] for e < count (the product rounded, then the difference: the bits of NumPy's W -= lr * G), in
// parallel over chunks. W and G (count values each, the caller's) must not overlap. Never throws.
template <class T>
void sgd_update(std::size_t count, T* W, const T* G, T lr);

extern template double network_grad<float>(const WideShape&, std::size_t, const std::size_t*, const float*,
                                            const float*, const float*, const float*, const float* const*,
                                            const float*, int, float, float*, float*, float* const*, double*,
                                            std::size_t, std::size_t, float*, std::size_t);
extern template double network_grad<double>(const WideShape&, std::size_t, const std::size_t*, const double*,
                                             const double*, const double*, const double*, const double* const*,
                                             const double*, int, double, double*, double*, double* const*, double*,
                                             std::size_t, std::size_t, double*, std::size_t);
extern template void sgd_update<float>(std::size_t, float*, const float*, float);
extern template void sgd_update<double>(std::size_t, double*, const double*, double);

}  // namespace cpu
}  // namespace pyrgd

#endif  // PYRGD_GRAD_H
