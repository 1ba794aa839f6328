// pyrgd CPU backend: the fused operations of the wide first layer (THEORY.md section 2) and of the whole network.
// forward, step and gram stream over blocks of neurons so that nothing of size N x n1 (nor a d x n1 gradient) is
// ever allocated; network_grad (grad_kernels.cpp), what a training run calls, streams over panels of rows instead,
// with every neuron of the panel at once (R x n1 values, never N x n1) and the gradients held to the end.
//
// Plain C++17 + OpenMP, no Python: usable from C++ without the pybind11 module (csrc/cpu/module.cpp binds it).
// All matrices are dense, C-contiguous (row-major), of one floating type T (float or double), in the notation
//     X (N, d), W1 (d, n1), W2 (n1, n2), G, B2, H (N, n2), K (N, N).
// The activation is chosen at run time by its integer code (csrc/include/pyrgd/activations.h); inside, every
// kernel is a template on the activation struct.
//
// The kernels are built from register-tiled products and vectorized activation loops on tiles of kRowChunk rows x
// kBlock neurons that stay in the L2 cache (tile_ops.h), compiled for several instruction sets and chosen at run
// time (AVX-512, AVX2+FMA, the baseline; see get_isa/set_isa).
//   forward: parallel over tiles of rows; per tile and block of neurons T: Z = X W1[:, T], S = a1 sigma(Z),
//            H += S W2[T, :].
//   step:    (1) parallel over blocks of neurons; per block, over chunks of kRowChunk rows: Z = X W1[:, T],
//            P = G W2[T, :]^T, S = a1 sigma(Z), D = (a1 P) sigma'(Z), then dW2[T, :]^T += G^T S and
//            dW1[:, T] += X^T D; then the block is updated. (2) with next_forward, H_next = forward of the updated
//            weights (a second parallel pass over rows: no per-thread N x n2 partial sums).
//   gram:    per panel of neurons, F^T of the panel (parallel over rows), then a rank update of the lower triangle of
//            K (parallel over stripes of rows); see wide_kernels.cpp.
//
// Precision: every product is accumulated in T, in levels so that no running sum is long:
//   sums over neurons (forward, H_next): over the kBlock neurons of a block, then over the kSuperBlocks blocks of a
//     group (1024 neurons), then over groups;
//   sums over samples (gradients): over a chunk of kRowChunk rows, then over chunks.
// The squared gradient norms are accumulated in double (per block, then over blocks in block order).
//
// Determinism (same inputs, same bits, run after run), and what it depends on: every output element is computed
// by one thread in an order fixed by the shapes alone (tile_ops.h: one FMA chain per product element), so forward,
// gram, and all of step's outputs (W1, W2, the gradient norms and H_next) are bit-identical for ANY number of threads.
// They are also identical between the AVX2 and AVX-512 kernels; the generic (baseline) kernels, on x86-64 a multiply
// and an add rounded separately, differ from them in the last bits; tanh/erf come from the C library. (This assumes
// the same binary: compiler flags can change the bits, never the order of the sums; the build uses
// -ffp-contract=off so that the compiler fuses nothing on its own.)
#ifndef PYRGD_CPU_WIDE_KERNELS_H
#define PYRGD_CPU_WIDE_KERNELS_H

#include <cstddef>

namespace pyrgd {
namespace cpu {

constexpr std::size_t kBlock = 64;        // neurons per block (the streaming unit)
constexpr std::size_t kSuperBlocks = 16;  // blocks per group (1024 neurons): the second-level sums over neurons
constexpr std::size_t kRowChunk = 256;    // rows (samples) per first-level partial sum over samples
constexpr std::size_t kForwardRows = 256; // largest row tile of forward (any size gives the same bits)
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

// Instruction set of the kernels: 0 generic (the platform's baseline), 1 AVX2+FMA, 2 AVX-512.
// best_isa(): the best one this build and this CPU support. get_isa(): the one in use: best_isa(), or the one set
// by set_isa(i) (i = -1: back to the best; an unsupported i is std::invalid_argument), or at the first call the
// environment variable PYRGD_CPU_ISA (generic, avx2, avx512; capped at best_isa()). Process-wide.
int best_isa();
int get_isa();
void set_isa(int isa);
const char* isa_name(int isa);

// H = a1 sigma(X W1) W2.  H (N, n2) is written (its previous content is ignored).
template <class T>
void forward(const WideShape& s, const T* X, const T* W1, const T* W2, int act, T gamma, T a1, T* H);

// One GD step given G = dPhi/dH (N, n2): W1 -= lr dPhi/dW1, W2 -= lr dPhi/dW2, in place, block by block.
// grad_sq_w1/grad_sq_w2 receive the squared Frobenius norms of the gradients at the weights before the update.
// H_next (N, n2), when not null, receives a1 sigma(X W1') W2' with the updated weights (a second pass, after every
// block is updated and G is no longer read: H_next may be G itself; it must not overlap X, W1, W2).
// X, G must not overlap W1, W2 (the caller checks).
template <class T>
void step(const WideShape& s, const T* X, T* W1, T* W2, const T* G, T lr, int act, T gamma, T a1, T* H_next,
          double* grad_sq_w1, double* grad_sq_w2);

// K (N, N) = F F^T with F = a1 sigma(X W1) when B2 is null, else F = a1 (B2 W2^T) (.) sigma'(X W1)
// (B2 (N, n2) and W2 both given). K is written (its previous content is ignored).
template <class T>
void gram(const WideShape& s, const T* X, const T* W1, const T* W2, const T* B2, int act, T gamma, T a1, T* K);

// S = sigma(Z) and/or D = sigma'(Z) elementwise over `count` elements (S or D may be null: not computed), with the
// kernels' own activation code (the vectorized math of vec_math.h, instruction set get_isa()), in parallel over
// chunks of a few thousand elements; no buffer beyond the outputs. Z may be S or D (in place).
template <class T>
void activation(std::size_t count, const T* Z, int act, T gamma, T* S, T* D);

// The pyramidal tail (layers 2..L, THEORY.md section 1) from H = Z_2, streamed over chunks of rows: per chunk the
// forward F_l = a_l sigma(Z_l), Z_{l+1} = F_l W_{l+1} up to F_L, D_L = F_L - Y, then backwards
// dPhi/dW_l += F_{l-1}^T D_l and D_{l-1} = a_{l-1} (D_l W_l^T) (.) sigma'(Z_{l-1}) down to D_2 = G, written into G.
// Nothing of N rows is allocated besides G (the chunks' activations live in per-thread buffers of a few rows).
//   nt = L - 2 tail weights; dims = [n_2, ..., n_L] (nt + 1 values); W[j] = W_{j+3} (dims[j], dims[j+1]);
//   mult[j] = a_{j+2} (nt values); grads[j] receives dPhi/dW_{j+3}; H, G (N, n_2), Y (N, n_L). With nt = 0
//   (L = 2): G = H - Y. Returns Phi = 1/2 ||F_L - Y||_F^2 (accumulated in double).
// Deterministic: the rows are cut into chunks of kRowChunk rows, and the chunks into at most kTailChunks groups of
// consecutive chunks, by N alone; a chunk's gradient is one FMA chain over its rows (in T), added in double to its
// group's sum in chunk order, and the groups' sums (gradients and losses) are added in group order: the same bits
// for any number of threads. G must not overlap H, Y or W (the caller checks).
constexpr std::size_t kTailChunks = 64;

template <class T>
double tail(std::size_t N, std::size_t nt, const std::size_t* dims, const T* H, const T* Y, const T* const* W,
            const T* mult, int act, T gamma, T* G, T* const* grads);

// The loss and every gradient of the network at the current weights, in one pass over panels of R rows
// (grad_kernels.cpp): per panel, Z_1 of all neurons, S = a1 sigma(Z_1) and a1 sigma'(Z_1) kept for the panel,
// Z_2 = S W_2, the tail on those rows, then the panel's share of every gradient. Each product of the wide layer is
// done once per step (the step above does Z_1 = X W_1 twice), at the price of R x n1 values of S and sigma' per
// panel, W_2^T and the gradients held until the last panel.
//   nt = L - 2 tail weights; tdims = [n_2, ..., n_L]; Wt[j] = W_{j+3}; mult = [a_1, ..., a_{L-1}] (nt + 1 values);
//   Y (N, n_L). gW1 (d, n1), gW2 (n1, n2), gWt[j] (tdims[j], tdims[j+1]) receive dPhi/dW_l (their previous content
//   is ignored; they must not overlap the inputs or each other). grad_sq (L values) receives ||dPhi/dW_l||_F^2
//   (in double). Returns Phi = 1/2 ||F_L - Y||_F^2 (accumulated in double).
//   panel_rows: R, or 0 for grad_panel_rows(N, kept, n2, sizeof(T)).
//   kept: the panels hold S and sigma' of the first min(kept, n1) neurons, rounded up to whole blocks of kBlock;
//   the others are recomputed (X W_1 twice for them, as in step; G and their part of Z_2 for all N rows, two N x n2
//   arrays). kept >= n1: every neuron kept.
// Bit-identical for any number of threads (the panels and lanes are fixed by the shapes and kept; see
// grad_kernels.cpp).
constexpr std::size_t kGradPanelBytes = std::size_t(16) << 20;  // S, D and the lanes' Z_2 of one panel, at most
constexpr std::size_t kGradPanelTarget = std::size_t(4) << 20;  // the panel size aimed at
constexpr std::size_t kGradPanelRowsMin = 96, kGradPanelRowsMax = 240;
constexpr std::size_t kGradPanelRowsStep = 48;  // whole 6-row register tiles and 16-row tail sub-chunks
// R of network_grad: the largest multiple of 48 rows whose panel (S and D, or S alone for ReLU, `act` an
// activations.h code, and the lanes' Z_2) fits in kGradPanelTarget, clamped to
// [kGradPanelRowsMin, kGradPanelRowsMax] (every panel runs the kept neurons' blocks of W_1, W_2, W_2^T and both
// gradients through the cache once: more rows amortize that traffic, the tail and two barriers, and fewer than 96
// make the products' inner dimension short; measured on the benchmark's B4, 96 rows instead of 64 took 3 to 5% off
// every width), then cut to what fits in kGradPanelBytes (a multiple of 48 rows, or of 16 below 48); where not even
// 16 rows fit there (a very wide layer), as many rows as fit, at least 1; at most N. The panel is thus at most
// max(kGradPanelBytes, one row), never N x n1 unless N is that small. pyrgd.gdstep.rows_kept keeps fewer neurons
// in the panels where a panel of kGradPanelRowsMin rows of all of them would not fit.
std::size_t grad_panel_rows(std::size_t N, std::size_t n1, std::size_t n2, std::size_t itemsize, int act);

template <class T>
double network_grad(const WideShape& s, std::size_t nt, const std::size_t* tdims, const T* X, const T* Y,
                    const T* W1, const T* W2, const T* const* Wt, const T* mult, int act, T gamma, T* gW1, T* gW2,
                    T* const* gWt, double* grad_sq, std::size_t panel_rows, std::size_t kept, T* work,
                    std::size_t work_elems);

// The elements of T network_grad's `work` must hold for these shapes, activation, panel_rows and kept (work =
// nullptr: network_grad allocates them itself, once per call). W_2^T, W_1 and its gradient by blocks, the panel,
// the lanes' Z_2, G and, with recomputed neurons, their Z_2 of all rows: a caller that keeps it from step to step
// saves their allocation (page faults and the kernel's clearing of fresh pages) on every call.
std::size_t grad_workspace_elems(const WideShape& s, int act, std::size_t itemsize, std::size_t panel_rows,
                                 std::size_t kept);

extern template double network_grad<float>(const WideShape&, std::size_t, const std::size_t*, const float*,
                                            const float*, const float*, const float*, const float* const*,
                                            const float*, int, float, float*, float*, float* const*, double*,
                                            std::size_t, std::size_t, float*, std::size_t);
extern template double network_grad<double>(const WideShape&, std::size_t, const std::size_t*, const double*,
                                             const double*, const double*, const double*, const double* const*,
                                             const double*, int, double, double*, double*, double* const*, double*,
                                             std::size_t, std::size_t, double*, std::size_t);

// W[e] -= lr G[e] for e < count (the product rounded, then the difference: the bits of NumPy's W -= lr * G), in
// parallel over chunks. W and G must not overlap.
template <class T>
void sgd_update(std::size_t count, T* W, const T* G, T lr);
extern template void sgd_update<float>(std::size_t, float*, const float*, float);
extern template void sgd_update<double>(std::size_t, double*, const double*, double);

// The floating-point roof of this machine for T: GFLOP/s of independent FMA chains on registers (kernels of
// get_isa()), on get_num_threads() threads at once, for about `seconds` of wall time.
template <class T>
double fma_peak_gflops(double seconds);

extern template double fma_peak_gflops<float>(double);
extern template double fma_peak_gflops<double>(double);
extern template double tail<float>(std::size_t, std::size_t, const std::size_t*, const float*, const float*,
                                   const float* const*, const float*, int, float, float*, float* const*);
extern template double tail<double>(std::size_t, std::size_t, const std::size_t*, const double*, const double*,
                                    const double* const*, const double*, int, double, double*, double* const*);
extern template void activation<float>(std::size_t, const float*, int, float, float*, float*);
extern template void activation<double>(std::size_t, const double*, int, double, double*, double*);
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
