// pyrgd/wide.h -- the fused operations of the wide first layer on the CPU (docs/theory.md section 2): forward,
// one gradient-descent step, the Gram matrix of the layer's features, and the activation elementwise.
//
// Part of pyrgd's C++ API (pyrgd/kernels.h); implemented in csrc/cpu/wide_kernels.cpp. Namespace pyrgd::cpu.
//
// Conventions of every function here:
//   Arrays: dense, row-major (C order), of one floating type T (float or double: both are instantiated), in the
//     notation  X (N, d), W1 (d, n1), W2 (n1, n2), G, B2, H (N, n2), K (N, N);  every dimension >= 1.
//   Memory: the caller owns every array and passes raw pointers; nothing is checked about them (sizes, alignment,
//     overlap): the contract of each function says what may and may not alias. The kernels allocate only their own
//     work buffers (small: they do not grow with n1, except gram's second-level sums), free them before returning,
//     and never allocate inside a parallel region. Nothing of size N x n1 (nor a d x n1 gradient) is ever
//     allocated: every operation streams over blocks of kBlock neurons.
//   Activation: `act` is a code of pyrgd/activations.h, `gamma` its slope (leaky_relu, smooth_leaky_relu; ignored
//     by the others), `a1` the layer's multiplier: the features are F = a1 sigma(X W1).
//   Errors: an unknown `act` is std::invalid_argument (before anything is written); a work buffer whose size
//     overflows size_t is std::length_error; a failed allocation is std::bad_alloc. Nothing else is reported.
//
// How they run: the products are register-tiled, the activation loops vectorized, on tiles of rows x kBlock neurons
// that stay in the L2 cache (csrc/cpu/tile_ops.h), compiled for several instruction sets and chosen at run time
// (get_isa, pyrgd/runtime.h).
//   forward: parallel over tiles of rows; per tile and block of neurons T: Z = X W1[:, T], S = a1 sigma(Z),
//            H += S W2[T, :].
//   step:    (1) parallel over blocks of neurons; per block, over chunks of kRowChunk rows: Z = X W1[:, T],
//            P = G W2[T, :]^T, S = a1 sigma(Z), D = (a1 P) sigma'(Z), then dW2[T, :]^T += G^T S and
//            dW1[:, T] += X^T D; then the block is updated. (2) with H_next, the forward of the updated weights (a
//            second parallel pass over rows: no per-thread N x n2 partial sums).
//   gram:    per panel of neurons, F^T of the panel (parallel over rows), then a rank update of the lower triangle of
//            K (parallel over stripes of rows); see wide_kernels.cpp.
//
// Precision: every product is accumulated in T, in levels so that no running sum is long:
//   sums over neurons (forward, H_next, gram): over the kBlock neurons of a block, then over the kSuperBlocks blocks
//     of a group (1024 neurons), then over groups;
//   sums over samples (gradients): over a chunk of kRowChunk rows, then over chunks.
// The squared gradient norms are accumulated in double (per block, then over blocks in block order).
//
// Determinism (same inputs, same bits, run after run): every output element is computed by one thread in an order
// fixed by the shapes alone (one FMA chain per product element, csrc/cpu/tile_ops.h), so forward, gram, activation
// and all of step's outputs (W1, W2, the gradient norms and H_next) are bit-identical for ANY number of threads.
// They are also identical between the AVX2 and AVX-512 kernels; the generic (baseline) kernels, on x86-64 a multiply
// and an add rounded separately, differ from them in the last bits; tanh/erf come from the C library. (This assumes
// the same binary: compiler flags can change the bits, never the order of the sums; the build uses
// -ffp-contract=off so that the compiler fuses nothing on its own.)
#ifndef PYRGD_WIDE_H
#define PYRGD_WIDE_H

#include <cstddef>

#include "pyrgd/runtime.h"

namespace pyrgd {
namespace cpu {

constexpr std::size_t kForwardRows = 256;  // largest row tile of forward (any size gives the same bits)
constexpr std::size_t kGramPanelElems = std::size_t(1) << 20;  // gram: neurons x samples of F per panel

struct WideShape {
  std::size_t N, d, n1, n2;  // samples, input dimension, width of the wide layer, width of the next layer
};

// H = a1 sigma(X W1) W2.
//   In: X (N, d), W1 (d, n1), W2 (n1, n2). Out: H (N, n2), written (its previous content is ignored); H must not
//   overlap X, W1 or W2.
template <class T>
void forward(const WideShape& s, const T* X, const T* W1, const T* W2, int act, T gamma, T a1, T* H);

// One GD step of the wide layer given G = dPhi/dH (N, n2): W1 -= lr dPhi/dW1, W2 -= lr dPhi/dW2, in place, block by
// block, with dPhi/dW1 = X^T ((a1 G W2^T) (.) sigma'(X W1)) and dPhi/dW2 = (a1 sigma(X W1))^T G.
//   In: X (N, d), G (N, n2). In and out: W1 (d, n1), W2 (n1, n2). Out: *grad_sq_w1, *grad_sq_w2, the squared
//   Frobenius norms of the two gradients at the weights before the update (accumulated in double); H_next (N, n2),
//   when not null, a1 sigma(X W1') W2' with the updated weights (a second pass, after every block is updated and G
//   is no longer read: H_next may be G itself; it must not overlap X, W1, W2).
//   X and G must not overlap W1 or W2; W1 and W2 must not overlap each other.
template <class T>
void step(const WideShape& s, const T* X, T* W1, T* W2, const T* G, T lr, int act, T gamma, T a1, T* H_next,
          double* grad_sq_w1, double* grad_sq_w2);

// K = F F^T with F = a1 sigma(X W1) (N, n1) when B2 is null, else F = a1 (B2 W2^T) (.) sigma'(X W1) (the layer-1
// factor of the empirical NTK; B2 (N, n2) and W2 (n1, n2) both given; W2 is ignored when B2 is null).
//   Out: K (N, N), written (its previous content is ignored), exactly symmetric; K must not overlap the inputs.
//   Allocates one panel of F^T (at most max(kGramPanelElems, N x kBlock) elements) and, when n1 > 1024, N x N
//   values for the second level of the sums over neurons.
template <class T>
void gram(const WideShape& s, const T* X, const T* W1, const T* W2, const T* B2, int act, T gamma, T a1, T* K);

// S = sigma(Z) and/or D = sigma'(Z) elementwise over `count` elements (any count, 0 included), with the kernels'
// own activation code (the vectorized math of csrc/cpu/vec_math.h, instruction set get_isa()), in parallel over
// chunks of a few thousand elements; no buffer beyond the outputs. S or D may be null (not computed; both null:
// nothing is done); Z may be S or D (in place), S and D must not overlap each other.
template <class T>
void activation(std::size_t count, const T* Z, int act, T gamma, T* S, T* D);

extern template void forward<float>(const WideShape&, const float*, const float*, const float*, int, float, float,
                                    float*);
extern template void forward<double>(const WideShape&, const double*, const double*, const double*, int, double,
                                     double, double*);
extern template void step<float>(const WideShape&, const float*, float*, float*, const float*, float, int, float,
                                 float, float*, double*, double*);
extern template void step<double>(const WideShape&, const double*, double*, double*, const double*, double, int,
                                  double, double, double*, double*, double*);
extern template void gram<float>(const WideShape&, const float*, const float*, const float*, const float*, int, float,
                                 float, float*);
extern template void gram<double>(const WideShape&, const double*, const double*, const double*, const double*, int,
                                  double, double, double*);
extern template void activation<float>(std::size_t, const float*, int, float, float*, float*);
extern template void activation<double>(std::size_t, const double*, int, double, double*, double*);

}  // namespace cpu
}  // namespace pyrgd

#endif  // PYRGD_WIDE_H
