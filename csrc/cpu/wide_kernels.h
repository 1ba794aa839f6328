// pyrgd CPU backend: the three fused operations of the wide first layer (THEORY.md section 2), streamed over
// blocks of neurons so that nothing of size N x n1 (nor a d x n1 gradient) is ever allocated.
//
// Plain C++17 + OpenMP, no Python: usable from C++ without the pybind11 module (csrc/cpu/module.cpp binds it).
// All matrices are dense, C-contiguous (row-major), of one floating type T (float or double), in the notation
//     X (N, d), W1 (d, n1), W2 (n1, n2), G, B2, H (N, n2), K (N, N).
// The activation is chosen at run time by its integer code (csrc/include/pyrgd/activations.h); inside, every
// kernel is a template on the activation struct.
//
// Precision: every product is accumulated in T, in two levels so that no running sum is long:
//   sums over neurons: per group of kSuperBlocks blocks (1024 neurons), then over groups (for step's H_next:
//     over the groups of each thread's share of blocks, then over threads);
//   sums over samples: per chunk of kRowChunk rows, then over chunks.
// The squared gradient norms are accumulated in double (per block, then over blocks in block order).
//
// Determinism (same inputs, same bits, run after run), and what it depends on:
//   forward   parallel over row tiles, each thread owning its rows of H; the summation order of every element is
//             fixed by the shapes alone -> bit-identical for ANY number of threads.
//   gram      sequential over neurons (a panel of whole blocks at a time, its width set by N alone), each rank
//             update parallel over rows of K (lower triangle, mirrored at the end, so K is exactly symmetric)
//             -> bit-identical for any number of threads.
//   step      parallel over neuron blocks (static partition: thread t of P owns blocks [nb t / P, nb (t+1) / P)).
//             W1, W2 and the two gradient norms do not depend on the partition -> bit-identical for any number of
//             threads. H_next is summed per thread and the partials are added in thread order -> bit-identical
//             for a fixed number of threads; it may differ in the last bits between thread counts.
// (This assumes the same binary: compiler flags such as -march or -ffp-contract can change the bits, never the
// order of the sums.)
#ifndef PYRGD_CPU_WIDE_KERNELS_H
#define PYRGD_CPU_WIDE_KERNELS_H

#include <cstddef>

namespace pyrgd {
namespace cpu {

constexpr std::size_t kBlock = 32;        // neurons per block (the streaming unit)
constexpr std::size_t kSuperBlocks = 32;  // blocks per first-level partial sum over neurons
constexpr std::size_t kRowChunk = 256;    // rows (samples) per first-level partial sum over samples
constexpr std::size_t kForwardRows = 64;  // largest row tile of forward
constexpr std::size_t kGramPanelElems = std::size_t(1) << 20;  // gram: neurons x samples of F per panel

struct WideShape {
  std::size_t N, d, n1, n2;  // samples, input dimension, width of the wide layer, width of the next layer
};

// True when `code` names an activation of activations.h.
bool is_activation_code(int code);

// Threads used by the kernels: the value set by set_num_threads, else OpenMP's default (omp_get_max_threads()).
int get_num_threads();
// n >= 1: use n threads; n == 0: back to OpenMP's default. Process-wide (unlike omp_set_num_threads, it does not
// depend on the calling thread and does not change other libraries' OpenMP settings).
void set_num_threads(int n);
bool openmp_enabled();

// H = a1 sigma(X W1) W2.  H (N, n2) is written (its previous content is ignored).
template <class T>
void forward(const WideShape& s, const T* X, const T* W1, const T* W2, int act, T gamma, T a1, T* H);

// One GD step given G = dPhi/dH (N, n2): W1 -= lr dPhi/dW1, W2 -= lr dPhi/dW2, in place, block by block.
// grad_sq_w1/grad_sq_w2 receive the squared Frobenius norms of the gradients at the weights before the update.
// H_next (N, n2), when not null, receives a1 sigma(X W1') W2' with the updated weights, from the same sweep.
// X, G must not overlap W1, W2 (the caller checks).
template <class T>
void step(const WideShape& s, const T* X, T* W1, T* W2, const T* G, T lr, int act, T gamma, T a1, T* H_next,
          double* grad_sq_w1, double* grad_sq_w2);

// K (N, N) = F F^T with F = a1 sigma(X W1) when B2 is null, else F = a1 (B2 W2^T) (.) sigma'(X W1)
// (B2 (N, n2) and W2 both given). K is written (its previous content is ignored).
template <class T>
void gram(const WideShape& s, const T* X, const T* W1, const T* W2, const T* B2, int act, T gamma, T a1, T* K);

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

}  // namespace cpu
}  // namespace pyrgd

#endif  // PYRGD_CPU_WIDE_KERNELS_H
