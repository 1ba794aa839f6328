// pyrgd CPU backend: the fused wide-layer kernels declared in pyrgd/wide.h, the run-time settings of pyrgd/runtime.h
// (threads, instruction set, the activation codes) and the FMA probe of fma_probe.h.
//
// forward, step and gram are written in terms of the tile operations of tile_ops.h (register-tiled products and
// vectorized activation loops), for the instruction set chosen at run time.
// No buffer is allocated inside a parallel region: per-thread buffers are allocated up front (an allocation
// failure is a C++ exception outside OpenMP, which the binding turns into MemoryError). They are small and do not
// grow with n1: forward: kForwardRows x (kBlock + n2); step: 2 kRowChunk x kBlock + (d + 2 n2) x kBlock; gram: one
// panel of F^T (at most max(kGramPanelElems, N x kBlock) elements), 2 kForwardRows x kBlock + n2 x kBlock per thread,
// and N x N (the second level of the sums over neurons) when n1 > 1024.
#include <pyrgd/activations.h>
#include <pyrgd/runtime.h>
#include <pyrgd/wide.h>

#include "block_grad.h"
#include "fma_probe.h"
#include "kernel_util.h"
#include "tile_ops.h"

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__GNUC__) || defined(__clang__)
#define PYRGD_RESTRICT __restrict__
#elif defined(_MSC_VER)
#define PYRGD_RESTRICT __restrict
#else
#define PYRGD_RESTRICT
#endif

namespace pyrgd {
namespace cpu {

namespace {

using std::size_t;
using util::ceil_div;
using util::checked_mul;
using util::idx;
using util::thread_id;

std::atomic<int> g_num_threads{0};
// Set in the child of a fork(): OpenMP's (libgomp's) worker threads do not survive a fork, and a parallel region of
// more than one thread in the child of a parent that ran one waits for them forever. The kernels then run on one
// thread (a num_threads(1) region needs no worker); multiprocessing's "spawn" or "forkserver" children are fresh
// processes and keep their threads.
std::atomic<bool> g_forked_child{false};

#if defined(__unix__) || defined(__APPLE__)
const int g_atfork_registered = pthread_atfork(nullptr, nullptr, [] { g_forked_child.store(true); });
#endif

template <class T>
inline void zero(T* p, size_t n) {
  std::fill(p, p + n, T(0));
}

// ----------------------------------------------------------------------------------------- instruction sets
int detect_best_isa() {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2 && __builtin_cpu_supports("avx512f") && tile_ops_avx512_f32() && tile_ops_avx512_f64()) return 2;
  if (avx2 && tile_ops_avx2_f32() && tile_ops_avx2_f64()) return 1;
#endif
  return 0;
}

int cached_best_isa() {
  static const int best = detect_best_isa();
  return best;
}

// -2: not yet chosen (the first get_isa reads PYRGD_CPU_ISA); else the instruction set in use.
std::atomic<int> g_isa{-2};

int isa_from_env() {
  const int best = cached_best_isa();
  const char* v = std::getenv("PYRGD_CPU_ISA");
  if (!v) return best;
  int want = best;
  if (std::strcmp(v, "generic") == 0) want = 0;
  else if (std::strcmp(v, "avx2") == 0) want = 1;
  else if (std::strcmp(v, "avx512") == 0) want = 2;
  return std::min(want, best);
}

template <class T>
const TileOps<T>* ops_of(int isa);
template <>
const TileOps<float>* ops_of<float>(int isa) {
  return isa == 2 ? tile_ops_avx512_f32() : isa == 1 ? tile_ops_avx2_f32() : tile_ops_generic_f32();
}
template <>
const TileOps<double>* ops_of<double>(int isa) {
  return isa == 2 ? tile_ops_avx512_f64() : isa == 1 ? tile_ops_avx2_f64() : tile_ops_generic_f64();
}

// ------------------------------------------------------------------------------------------------------ forward
// Parallel over tiles of R rows (R from N and the thread count; it changes no summation order). Per tile, H[rows]
// is the sum over groups of kSuperBlocks blocks of (the sum over the group's blocks of (the block's product
// S W2[T, :], one FMA chain over its neurons)), each level in increasing order.
template <class T>
void forward_tiles(const WideShape& s, const TileOps<T>& ops, int act, const T* X, const T* W1, const T* W2, T gamma,
                   T a1, T* H) {
  const size_t N = s.N, d = s.d, n1 = s.n1, n2 = s.n2;
  const int P0 = get_num_threads();
  // About 8 tiles per thread (a slower thread, on a shared machine, then holds up the others little), a multiple
  // of 16 rows, at most kForwardRows.
  size_t R = ceil_div(N, size_t(P0) * 8);
  R = std::min<size_t>(kForwardRows, std::max<size_t>(16, ceil_div(R, 16) * 16));
  R = std::min(R, N);
  const size_t ntiles = ceil_div(N, R);
  const int P = int(std::max<size_t>(1, std::min<size_t>(size_t(P0), ntiles)));
  const size_t nblocks = ceil_div(n1, kBlock);
  const size_t szZ = checked_mul(R, kBlock), szH = checked_mul(R, n2);
  const size_t per_thread = szZ + szH;
  if (per_thread < szZ) throw std::length_error("pyrgd._cpu: buffer size overflows size_t");
  util::AlignedBuffer<T> buf(checked_mul(size_t(P), per_thread));  // zeros: the padding columns of Z stay finite
  T* const base = buf.data();

#pragma omp parallel num_threads(P)
  {
    T* Z = base + size_t(thread_id()) * per_thread;
    T* Hg = Z + szZ;
#pragma omp for schedule(dynamic, 1)
    for (idx tile = 0; tile < idx(ntiles); ++tile) {
      const size_t r0 = size_t(tile) * R, rows = std::min(R, N - r0);
      const T* Xr = X + r0 * d;
      T* Ht = H + r0 * n2;
      zero(Ht, rows * n2);
      for (size_t sb = 0; sb < nblocks; sb += kSuperBlocks) {
        const size_t se = std::min(nblocks, sb + kSuperBlocks);
        zero(Hg, rows * n2);
        for (size_t blk = sb; blk < se; ++blk) {
          const size_t t0 = blk * kBlock, nb = std::min(kBlock, n1 - t0);
          // Z = X W1[:, T], then S = a1 sigma(Z) row block by row block
          ops.gemm_nn_act(rows, nb, d, Xr, d, W1 + t0, n1, Z, kBlock, act, gamma, a1, nullptr, 0);
          ops.gemm_nn(rows, n2, nb, Z, kBlock, W2 + t0 * n2, n2, Hg, n2, true);  // Hg += S W2[T, :]
        }
        ops.add_into(rows * n2, Ht, Hg);
      }
    }
  }
}

// --------------------------------------------------------------------------------------------------------- step
// Phase 1, parallel over blocks of neurons (any schedule: a block's result does not depend on the thread): the
// gradient of the block, summed over chunks of kRowChunk rows in order, its squared norms, its update. Phase 2
// (H_next): forward_tiles with the updated weights.
template <class T>
void step_tiles(const WideShape& s, const TileOps<T>& ops, int act, const T* X, T* W1, T* W2, const T* G, T lr,
                T gamma, T a1, T* H_next, double* grad_sq_w1, double* grad_sq_w2) {
  const size_t d = s.d, n1 = s.n1, n2 = s.n2;
  const size_t nblocks = ceil_div(n1, kBlock);
  const int P = int(std::max<size_t>(1, std::min<size_t>(size_t(get_num_threads()), nblocks)));
  const BlockGradScratch sc(s);  // per thread: ZS, PD, W2[T, :]^T, dW2[T, :]^T, dW1[:, T] (block_grad.h)
  util::AlignedBuffer<T> buf(checked_mul(size_t(P), sc.per_thread));  // zeros: the padding columns stay finite
  std::vector<double> bsq1(nblocks), bsq2(nblocks);
  T* const base = buf.data();
  double* const q1 = bsq1.data();
  double* const q2 = bsq2.data();

#pragma omp parallel num_threads(P)
  {
    T *ZS, *PD, *W2T, *gW2T, *gW1;
    sc.parts(base + size_t(thread_id()) * sc.per_thread, ZS, PD, W2T, gW2T, gW1);
#pragma omp for schedule(dynamic, 1)
    for (idx bi = 0; bi < idx(nblocks); ++bi) {
      const size_t blk = size_t(bi);
      const size_t t0 = blk * kBlock, nb = std::min(kBlock, n1 - t0);
      T* const W2blk = W2 + t0 * n2;
      block_gradient<T>(s, sc, ops, act, X, W1, W2, G, gamma, a1, t0, nb, ZS, PD, W2T, gW2T, gW1);
      // Squared norms of this block's gradients, in double, then the update (it touches only W1[:, T], W2[T, :]).
      double a = 0.0, c2 = 0.0;
      for (size_t k = 0; k < d; ++k)
        for (size_t b = 0; b < nb; ++b) {
          const double g = double(gW1[k * kBlock + b]);
          a += g * g;
        }
      for (size_t b = 0; b < nb; ++b)
        for (size_t c = 0; c < n2; ++c) {
          const double g = double(gW2T[c * kBlock + b]);
          c2 += g * g;
        }
      q1[blk] = a;
      q2[blk] = c2;
      for (size_t k = 0; k < d; ++k) {
        T* PYRGD_RESTRICT w = W1 + k * n1 + t0;
        const T* PYRGD_RESTRICT g = gW1 + k * kBlock;
        for (size_t b = 0; b < nb; ++b) w[b] -= lr * g[b];
      }
      for (size_t b = 0; b < nb; ++b)
        for (size_t c = 0; c < n2; ++c) W2blk[b * n2 + c] -= lr * gW2T[c * kBlock + b];
    }
  }
  double t1 = 0.0, t2 = 0.0;
  for (size_t blk = 0; blk < nblocks; ++blk) {
    t1 += q1[blk];
    t2 += q2[blk];
  }
  *grad_sq_w1 = t1;
  *grad_sq_w2 = t2;
  if (H_next) forward_tiles<T>(s, ops, act, X, W1, W2, gamma, a1, H_next);
}

// --------------------------------------------------------------------------------------------------------- gram
// The neurons a panel of pw at a time (pw: a multiple of kBlock that divides the group of kSuperBlocks blocks, the
// largest with pw x N <= kGramPanelElems; from N alone). Per panel: (A) F^T of the panel, in parallel over tiles of
// samples, with the tile operations of forward/step; (B) the rank-pw update of the lower triangle,
// Kacc[i, j] += sum over the panel's neurons of F[i, t] F[j, t] (one FMA chain per element, then added), in
// parallel over stripes of rows (each element written by one thread). Kacc is added into K (and cleared) at the end
// of every group of kSuperBlocks blocks but the last, and at the end; then the lower triangle is mirrored (K exactly
// symmetric). The order of every sum is fixed by N and n1: bit-identical for any number of threads.
// F^T is stored by blocks of kGramCols samples: element (t, j) at FT[((j / C) pw + t) C + j % C], so that the rank
// update reads rows of C contiguous values a few to a page (rows of N values would cost a TLB miss per neuron).
constexpr size_t kGramCols = 192;   // samples per block of F^T: the columns of one product of the rank update
constexpr size_t kGramStripe = 96;  // rows of K per parallel task of the rank update (divides kGramCols)

template <class T>
void gram_tiles(const WideShape& s, const TileOps<T>& ops, int act, const T* X, const T* W1, const T* W2,
                const T* B2, T gamma, T a1, T* K) {
  const size_t N = s.N, d = s.d, n1 = s.n1, n2 = s.n2;
  const size_t group = kSuperBlocks * kBlock;  // neurons per group
  const bool backward = B2 != nullptr;
  const bool grouped = n1 > group;  // one group only: accumulate straight into K
  size_t pw = group;
  while (pw > kBlock && pw * N > kGramPanelElems) pw /= 2;
  pw = std::min(pw, ceil_div(n1, kBlock) * kBlock);
  const int P0 = get_num_threads();
  size_t R = ceil_div(N, size_t(P0) * 4);
  R = std::min<size_t>(kForwardRows, std::max<size_t>(16, ceil_div(R, 16) * 16));
  R = std::min(R, N);
  const size_t ntiles = ceil_div(N, R);
  const size_t nstripes = ceil_div(N, kGramStripe);
  const size_t ncb = ceil_div(N, kGramCols);  // blocks of samples in F^T
  const int P = int(std::max<size_t>(1, std::min<size_t>(size_t(P0), std::max(ntiles, nstripes))));

  const size_t szZ = checked_mul(R, kBlock), szW2T = backward ? checked_mul(n2, kBlock) : 0;
  const size_t per_thread = 2 * szZ + szW2T;
  util::AlignedBuffer<T> FTbuf(checked_mul(ncb * kGramCols, pw));
  util::AlignedBuffer<T> Kpbuf(grouped ? checked_mul(N, N) : 0);
  util::AlignedBuffer<T> buf(checked_mul(size_t(P), per_thread));  // zeros: the padding columns stay finite
  T* const FT = FTbuf.data();  // F^T of the panel by blocks of kGramCols samples (see above)
  T* const Kacc = grouped ? Kpbuf.data() : K;
  T* const base = buf.data();
  zero(K, N * N);

  // Kacc row i, lower triangle, added into K row i and cleared.
  auto flush_row = [=](size_t i) {
    T* PYRGD_RESTRICT krow = K + i * N;
    T* PYRGD_RESTRICT prow = Kacc + i * N;
    for (size_t j = 0; j <= i; ++j) {
      krow[j] += prow[j];
      prow[j] = T(0);
    }
  };

#pragma omp parallel num_threads(P)
  {
    T* Z = base + size_t(thread_id()) * per_thread;
    T* PD = Z + szZ;
    T* W2T = PD + szZ;
    for (size_t p0 = 0; p0 < n1; p0 += pw) {
      const size_t pn = std::min(pw, n1 - p0);  // neurons in the panel
      // (A) F^T of the panel, tile of rows by tile of rows.
#pragma omp for schedule(dynamic, 1)
      for (idx tile = 0; tile < idx(ntiles); ++tile) {
        const size_t r0 = size_t(tile) * R, rows = std::min(R, N - r0);
        for (size_t off = 0; off < pn; off += kBlock) {
          const size_t t0 = p0 + off, nb = std::min(kBlock, pn - off);
          const T* F = Z;
          if (!backward) {  // Z = X W1[:, T], then F = a1 sigma(Z) row block by row block
            ops.gemm_nn_act(rows, nb, d, X + r0 * d, d, W1 + t0, n1, Z, kBlock, act, gamma, a1, nullptr, 0);
          } else {
            for (size_t b = 0; b < nb; ++b)
              for (size_t c = 0; c < n2; ++c) W2T[c * kBlock + b] = W2[(t0 + b) * n2 + c];
            ops.gemm_nn(rows, nb, n2, B2 + r0 * n2, n2, W2T, kBlock, PD, kBlock, false);  // P = B2 W2[T, :]^T
            // Z = X W1[:, T], then F = (a1 P) sigma'(Z) row block by row block
            ops.gemm_nn_act(rows, nb, d, X + r0 * d, d, W1 + t0, n1, Z, kBlock, act, gamma, a1, PD, 0);
            F = PD;
          }
          for (size_t b = 0; b < nb; ++b)
            for (size_t i = 0; i < rows; ++i) {
              const size_t j = r0 + i;
              FT[((j / kGramCols) * pw + off + b) * kGramCols + j % kGramCols] = F[i * kBlock + b];
            }
        }
      }  // implicit barrier: the panel is complete
      // (B) rank-pn update of the lower triangle (and of the upper half of the diagonal stripes, which nothing
      // reads), the stripes of most rows first.
#pragma omp for schedule(dynamic, 1)
      for (idx st = 0; st < idx(nstripes); ++st) {
        const size_t i0 = (nstripes - 1 - size_t(st)) * kGramStripe, i1 = std::min(N, i0 + kGramStripe);
        const T* A = FT + (i0 / kGramCols) * pw * kGramCols + i0 % kGramCols;
        for (size_t j0 = 0; j0 < i1; j0 += kGramCols) {
          const size_t nc = std::min(kGramCols, i1 - j0);
          const T* B = FT + (j0 / kGramCols) * pw * kGramCols;
          ops.gemm_tn(i1 - i0, nc, pn, A, kGramCols, B, kGramCols, Kacc + i0 * N + j0, N, true);
        }
      }  // implicit barrier
      if (grouped && (p0 + pn) % group == 0 && p0 + pn < n1) {
#pragma omp for schedule(static)
        for (idx ii = 0; ii < idx(N); ++ii) flush_row(size_t(ii));
      }
    }
    // Last flush, then mirror the lower triangle (K is exactly symmetric).
#pragma omp for schedule(static)
    for (idx ii = 0; ii < idx(N); ++ii) {
      if (grouped) flush_row(size_t(ii));
    }
#pragma omp for schedule(static)
    for (idx ii = 0; ii < idx(N); ++ii) {
      const size_t i = size_t(ii);
      for (size_t j = 0; j < i; ++j) K[j * N + i] = K[i * N + j];
    }
  }
}

[[noreturn]] void bad_activation(int code) {
  throw std::invalid_argument("act_code: unknown activation code " + std::to_string(code));
}

}  // namespace

// ----------------------------------------------------------------------------------------- dispatch + threads
bool is_activation_code(int code) {
  switch (code) {
#define PYRGD_CPU_CASE(S, c) \
  case c:                    \
    return true;
    PYRGD_FOR_EACH_ACTIVATION(PYRGD_CPU_CASE)
#undef PYRGD_CPU_CASE
    default:
      return false;
  }
}

int get_num_threads() {
  if (g_forked_child.load(std::memory_order_relaxed)) return 1;
  const int n = g_num_threads.load(std::memory_order_relaxed);
  if (n > 0) return n;
#ifdef _OPENMP
  return std::max(1, omp_get_max_threads());
#else
  return 1;
#endif
}

void set_num_threads(int n) {
  if (n < 0) throw std::invalid_argument("n: expected a non-negative number of threads");
  g_num_threads.store(n, std::memory_order_relaxed);
}

bool openmp_enabled() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

int best_isa() { return cached_best_isa(); }

int get_isa() {
  int v = g_isa.load(std::memory_order_relaxed);
  if (v == -2) {
    int expected = -2;
    g_isa.compare_exchange_strong(expected, isa_from_env(), std::memory_order_relaxed);
    v = g_isa.load(std::memory_order_relaxed);
  }
  return v;
}

void set_isa(int isa) {
  if (isa == -1) {
    g_isa.store(cached_best_isa(), std::memory_order_relaxed);
    return;
  }
  if (isa < 0 || isa > cached_best_isa())
    throw std::invalid_argument(std::string("isa: ") + (isa >= 0 && isa <= 2 ? isa_name(isa) : "this value") +
                                " is not available in this build on this CPU (the best is " +
                                isa_name(cached_best_isa()) + ")");
  g_isa.store(isa, std::memory_order_relaxed);
}

const char* isa_name(int isa) { return isa == 2 ? "avx512" : isa == 1 ? "avx2" : isa == 0 ? "generic" : "unknown"; }

template <>
const TileOps<float>& active_tile_ops<float>() {
  return *ops_of<float>(get_isa());
}
template <>
const TileOps<double>& active_tile_ops<double>() {
  return *ops_of<double>(get_isa());
}

template <class T>
void forward(const WideShape& s, const T* X, const T* W1, const T* W2, int act, T gamma, T a1, T* H) {
  if (!is_activation_code(act)) bad_activation(act);
  forward_tiles<T>(s, *ops_of<T>(get_isa()), act, X, W1, W2, gamma, a1, H);
}

template <class T>
void step(const WideShape& s, const T* X, T* W1, T* W2, const T* G, T lr, int act, T gamma, T a1, T* H_next,
          double* grad_sq_w1, double* grad_sq_w2) {
  if (!is_activation_code(act)) bad_activation(act);
  step_tiles<T>(s, *ops_of<T>(get_isa()), act, X, W1, W2, G, lr, gamma, a1, H_next, grad_sq_w1, grad_sq_w2);
}

template <class T>
void activation(std::size_t count, const T* Z, int act, T gamma, T* S, T* D) {
  if (!is_activation_code(act)) bad_activation(act);
  if (!S && !D) return;
  const TileOps<T>& ops = *ops_of<T>(get_isa());
  constexpr size_t kChunk = 2048;  // elements per task (two chunks of T on the stack)
  const size_t nchunks = ceil_div(count, kChunk);
  const int P = int(std::max<size_t>(1, std::min<size_t>(size_t(get_num_threads()), nchunks / 4)));
#pragma omp parallel for schedule(static) num_threads(P)
  for (idx c = 0; c < idx(nchunks); ++c) {
    const size_t e0 = size_t(c) * kChunk, n = std::min(kChunk, count - e0);
    T zs[kChunk], pd[kChunk];
    std::copy(Z + e0, Z + e0 + n, zs);
    if (D) {
      std::fill(pd, pd + n, T(1));
      ops.act_grad(act, n, zs, pd, gamma, T(1));
      std::copy(pd, pd + n, D + e0);
    } else {
      ops.act_value(act, n, zs, gamma, T(1));
    }
    if (S) std::copy(zs, zs + n, S + e0);
  }
}

template <class T>
void gram(const WideShape& s, const T* X, const T* W1, const T* W2, const T* B2, int act, T gamma, T a1, T* K) {
  if (!is_activation_code(act)) bad_activation(act);
  gram_tiles<T>(s, *ops_of<T>(get_isa()), act, X, W1, W2, B2, gamma, a1, K);
}

template <class T>
double fma_peak_gflops(double seconds) {
  const TileOps<T>& ops = *ops_of<T>(get_isa());
  using clock = std::chrono::steady_clock;
  // calibrate on one thread: rounds per second
  size_t iters = 1u << 16;
  double el = 0.0;
  for (;;) {
    const auto t0 = clock::now();
    ops.fma_probe(iters);
    el = std::chrono::duration<double>(clock::now() - t0).count();
    if (el > 0.02 || iters > (size_t(1) << 40)) break;
    iters *= 4;
  }
  const size_t n = std::max<size_t>(1, size_t(double(iters) * std::max(seconds, 1e-3) / el));
  const int P = get_num_threads();
  double flops = 0.0;
  const auto t0 = clock::now();
#pragma omp parallel num_threads(P) reduction(+ : flops)
  { flops += ops.fma_probe(n); }
  const double wall = std::chrono::duration<double>(clock::now() - t0).count();
  return flops / wall / 1e9;
}

template double fma_peak_gflops<float>(double);
template double fma_peak_gflops<double>(double);
template void activation<float>(std::size_t, const float*, int, float, float*, float*);
template void activation<double>(std::size_t, const double*, int, double, double*, double*);
template void forward<float>(const WideShape&, const float*, const float*, const float*, int, float, float, float*);
template void forward<double>(const WideShape&, const double*, const double*, const double*, int, double, double,
                              double*);
template void step<float>(const WideShape&, const float*, float*, float*, const float*, float, int, float, float,
                          float*, double*, double*);
template void step<double>(const WideShape&, const double*, double*, double*, const double*, double, int, double,
                           double, double*, double*, double*);
template void gram<float>(const WideShape&, const float*, const float*, const float*, const float*, int, float, float,
                          float*);
template void gram<double>(const WideShape&, const double*, const double*, const double*, const double*, int, double,
                           double, double*);

}  // namespace cpu
}  // namespace pyrgd
