// pyrgd CPU backend: implementation of the fused wide-layer kernels declared in wide_kernels.h.
//
// Loop shapes: every innermost loop runs over contiguous memory (a row of a W1 block, a row of W2, a row of K) so
// that the compiler can vectorize it without reordering any sum. No buffer is allocated inside a parallel region:
// per-thread buffers are allocated up front (an allocation failure is a C++ exception outside OpenMP, which the
// binding turns into MemoryError), and they are at most N x kBlock, kBlock x n2, d x kBlock, N x n2 (step's
// per-thread partial of H_next), and for gram one panel of F (max(kGramPanelElems, N x kBlock) elements) and N x N.
#include "wide_kernels.h"

#include <pyrgd/activations.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
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
using idx = std::ptrdiff_t;  // OpenMP loop index (signed: OpenMP 2.0 compilers accept only signed loops)

std::atomic<int> g_num_threads{0};

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

inline int team_size() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

inline size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

// a * b * c, or std::length_error (ValueError in Python) when it does not fit in size_t.
inline size_t checked_mul(size_t a, size_t b, size_t c = 1) {
  const size_t mx = std::numeric_limits<size_t>::max();
  if (a != 0 && b > mx / a) throw std::length_error("pyrgd._cpu: buffer size overflows size_t");
  const size_t ab = a * b;
  if (ab != 0 && c > mx / ab) throw std::length_error("pyrgd._cpu: buffer size overflows size_t");
  return ab * c;
}

// Z (rows x nb, row stride nb) = X[r0 : r0+rows, :] W1[:, t0 : t0+nb].  For each element the sum runs over k in
// increasing order; the inner loop runs over the contiguous block row W1[k, t0 : t0+nb].
template <class T>
inline void preact(const WideShape& s, const T* PYRGD_RESTRICT X, const T* PYRGD_RESTRICT W1, size_t r0, size_t rows,
                   size_t t0, size_t nb, T* PYRGD_RESTRICT Z) {
  const size_t d = s.d, n1 = s.n1;
  for (size_t i = 0; i < rows; ++i) {
    T* PYRGD_RESTRICT z = Z + i * nb;
    const T* PYRGD_RESTRICT x = X + (r0 + i) * d;
    for (size_t b = 0; b < nb; ++b) z[b] = T(0);
    for (size_t k = 0; k < d; ++k) {
      const T xk = x[k];
      const T* PYRGD_RESTRICT w = W1 + k * n1 + t0;
      for (size_t b = 0; b < nb; ++b) z[b] += xk * w[b];
    }
  }
}

// Hc (rows x n2) += S (rows x nb) W2blk (nb x n2).  Per element the sum runs over b in increasing order.
template <class T>
inline void accumulate_out(size_t rows, size_t nb, size_t n2, const T* PYRGD_RESTRICT S,
                           const T* PYRGD_RESTRICT W2blk, T* PYRGD_RESTRICT Hc) {
  for (size_t i = 0; i < rows; ++i) {
    T* PYRGD_RESTRICT h = Hc + i * n2;
    for (size_t b = 0; b < nb; ++b) {
      const T sv = S[i * nb + b];
      const T* PYRGD_RESTRICT w = W2blk + b * n2;
      for (size_t c = 0; c < n2; ++c) h[c] += sv * w[c];
    }
  }
}

template <class T>
inline void add_into(T* PYRGD_RESTRICT dst, const T* PYRGD_RESTRICT src, size_t n) {
  for (size_t e = 0; e < n; ++e) dst[e] += src[e];
}

template <class T>
inline void zero(T* p, size_t n) {
  std::fill(p, p + n, T(0));
}

// ------------------------------------------------------------------------------------------------------ forward
template <class T, class A>
void forward_impl(const WideShape& s, const T* X, const T* W1, const T* W2, T gamma, T a1, T* H) {
  const size_t N = s.N, n1 = s.n1, n2 = s.n2;
  const int P = get_num_threads();
  const size_t nblocks = ceil_div(n1, kBlock);
  // Row tiles: about 4 per thread, at most kForwardRows rows. The tile size changes no summation order.
  const size_t R = std::max<size_t>(1, std::min<size_t>(kForwardRows, ceil_div(N, size_t(P) * 4)));
  const size_t ntiles = ceil_div(N, R);
  std::vector<T> zbuf(checked_mul(size_t(P), R, kBlock));
  std::vector<T> hbuf(checked_mul(size_t(P), R, n2));
  T* const zb = zbuf.data();
  T* const hb = hbuf.data();

#pragma omp parallel num_threads(P)
  {
    const size_t t = size_t(thread_id());
    T* Z = zb + t * R * kBlock;
    T* Hc = hb + t * R * n2;
#pragma omp for schedule(dynamic, 1)
    for (idx tile = 0; tile < idx(ntiles); ++tile) {
      const size_t r0 = size_t(tile) * R, rows = std::min(R, N - r0);
      T* Ht = H + r0 * n2;
      zero(Ht, rows * n2);
      for (size_t sb = 0; sb < nblocks; sb += kSuperBlocks) {
        const size_t se = std::min(nblocks, sb + kSuperBlocks);
        zero(Hc, rows * n2);
        for (size_t blk = sb; blk < se; ++blk) {
          const size_t t0 = blk * kBlock, nb = std::min(kBlock, n1 - t0);
          preact(s, X, W1, r0, rows, t0, nb, Z);
          for (size_t e = 0; e < rows * nb; ++e) Z[e] = a1 * A::f(Z[e], gamma);
          accumulate_out(rows, nb, n2, Z, W2 + t0 * n2, Hc);
        }
        add_into(Ht, Hc, rows * n2);
      }
    }
  }
}

// --------------------------------------------------------------------------------------------------------- step
template <class T, class A>
void step_impl(const WideShape& s, const T* X, T* W1, T* W2, const T* G, T lr, T gamma, T a1, T* H_next,
               double* grad_sq_w1, double* grad_sq_w2) {
  const size_t N = s.N, d = s.d, n1 = s.n1, n2 = s.n2;
  const int P = get_num_threads();
  const size_t nblocks = ceil_div(n1, kBlock);
  const bool fwd = H_next != nullptr;

  // Per-thread buffers: S and D (N x kBlock), W2 block transposed (n2 x kBlock), gradient of the W1 block and its
  // row-chunk partial (d x kBlock each), gradient of the W2 block and its partial (kBlock x n2 each); with fwd also
  // the thread's partial of H_next and its current group partial (N x n2 each).
  const size_t szNB = checked_mul(N, kBlock), szW2T = checked_mul(n2, kBlock), szG1 = checked_mul(d, kBlock),
               szG2 = checked_mul(kBlock, n2), szH = fwd ? checked_mul(N, n2) : 0;
  const size_t per_thread = 2 * szNB + szW2T + 2 * szG1 + 2 * szG2 + 2 * szH;
  if (per_thread < szNB) throw std::length_error("pyrgd._cpu: buffer size overflows size_t");
  std::vector<T> buf(checked_mul(size_t(P), per_thread));
  std::vector<double> bsq1(nblocks), bsq2(nblocks);
  T* const base = buf.data();
  double* const q1 = bsq1.data();
  double* const q2 = bsq2.data();
  int team = 1;

#pragma omp parallel num_threads(P)
  {
    const int t = thread_id();
    const int nt = team_size();
#pragma omp single
    team = nt;
    T* S = base + size_t(t) * per_thread;
    T* D = S + szNB;
    T* W2T = D + szNB;
    T* gw1 = W2T + szW2T;
    T* gw1c = gw1 + szG1;
    T* gw2 = gw1c + szG1;
    T* gw2c = gw2 + szG2;
    T* hpart = gw2c + szG2;
    T* hgroup = hpart + szH;
    if (fwd) {
      zero(hpart, szH);
      zero(hgroup, szH);
    }
    size_t in_group = 0;
    const size_t lo = nblocks * size_t(t) / size_t(nt), hi = nblocks * size_t(t + 1) / size_t(nt);

    for (size_t blk = lo; blk < hi; ++blk) {
      const size_t t0 = blk * kBlock, nb = std::min(kBlock, n1 - t0);
      T* const W2blk = W2 + t0 * n2;

      // 1. Z_T = X W1[:, T];  S = a1 sigma(Z_T);  D = sigma'(Z_T) for now.
      preact(s, X, W1, 0, N, t0, nb, S);
      for (size_t e = 0; e < N * nb; ++e) {
        T sv, dv;
        A::both(S[e], gamma, sv, dv);
        S[e] = a1 * sv;
        D[e] = dv;
      }
      // 2. W2T = W2[T, :]^T (n2 x nb), so that the next loop runs over contiguous b.
      for (size_t b = 0; b < nb; ++b)
        for (size_t c = 0; c < n2; ++c) W2T[c * nb + b] = W2blk[b * n2 + c];
      // 3. D_T = a1 (G W2[T, :]^T) (.) sigma'(Z_T).
      for (size_t i = 0; i < N; ++i) {
        T p[kBlock];
        for (size_t b = 0; b < nb; ++b) p[b] = T(0);
        const T* g = G + i * n2;
        for (size_t c = 0; c < n2; ++c) {
          const T gc = g[c];
          const T* w = W2T + c * nb;
          for (size_t b = 0; b < nb; ++b) p[b] += gc * w[b];
        }
        T* dd = D + i * nb;
        for (size_t b = 0; b < nb; ++b) dd[b] = (a1 * p[b]) * dd[b];
      }
      // 4. gW2[T, :] = S^T G (nb x n2) and gW1[:, T] = X^T D_T (d x nb), summed over rows chunk by chunk.
      zero(gw1, d * nb);
      zero(gw2, nb * n2);
      for (size_t r0 = 0; r0 < N; r0 += kRowChunk) {
        const size_t r1 = std::min(N, r0 + kRowChunk);
        zero(gw1c, d * nb);
        zero(gw2c, nb * n2);
        for (size_t i = r0; i < r1; ++i) {
          const T* g = G + i * n2;
          const T* sr = S + i * nb;
          for (size_t b = 0; b < nb; ++b) {
            const T sv = sr[b];
            T* o = gw2c + b * n2;
            for (size_t c = 0; c < n2; ++c) o[c] += sv * g[c];
          }
          const T* x = X + i * d;
          const T* dd = D + i * nb;
          for (size_t k = 0; k < d; ++k) {
            const T xk = x[k];
            T* o = gw1c + k * nb;
            for (size_t b = 0; b < nb; ++b) o[b] += xk * dd[b];
          }
        }
        add_into(gw1, gw1c, d * nb);
        add_into(gw2, gw2c, nb * n2);
      }
      // 5. Squared norms of this block's gradients, in double.
      double a = 0.0, c2 = 0.0;
      for (size_t e = 0; e < d * nb; ++e) a += double(gw1[e]) * double(gw1[e]);
      for (size_t e = 0; e < nb * n2; ++e) c2 += double(gw2[e]) * double(gw2[e]);
      q1[blk] = a;
      q2[blk] = c2;
      // 6. Update the block in place: it touches only W1[:, T] and W2[T, :].
      for (size_t k = 0; k < d; ++k) {
        T* w = W1 + k * n1 + t0;
        const T* gk = gw1 + k * nb;
        for (size_t b = 0; b < nb; ++b) w[b] -= lr * gk[b];
      }
      for (size_t e = 0; e < nb * n2; ++e) W2blk[e] -= lr * gw2[e];
      // 7. This block's share of the next forward pass, with the updated weights.
      if (fwd) {
        preact(s, X, W1, 0, N, t0, nb, S);
        for (size_t e = 0; e < N * nb; ++e) S[e] = a1 * A::f(S[e], gamma);
        accumulate_out(N, nb, n2, S, static_cast<const T*>(W2blk), hgroup);
        if (++in_group == kSuperBlocks) {
          add_into(hpart, hgroup, szH);
          zero(hgroup, szH);
          in_group = 0;
        }
      }
    }
    if (fwd) {
      if (in_group) add_into(hpart, hgroup, szH);
#pragma omp barrier
      // H_next = sum of the threads' partials, in thread order.
      const T* hb = base + 2 * szNB + szW2T + 2 * szG1 + 2 * szG2;
#pragma omp for schedule(static)
      for (idx e = 0; e < idx(szH); ++e) {
        T acc = T(0);
        for (int u = 0; u < team; ++u) acc += hb[size_t(u) * per_thread + size_t(e)];
        H_next[e] = acc;
      }
    }
  }
  double t1 = 0.0, t2 = 0.0;
  for (size_t blk = 0; blk < nblocks; ++blk) {
    t1 += q1[blk];
    t2 += q2[blk];
  }
  *grad_sq_w1 = t1;
  *grad_sq_w2 = t2;
}

// --------------------------------------------------------------------------------------------------------- gram
// Sequential over neurons: Kacc[i, j] += F[i, t] F[j, t] for t = 0, 1, ... in order, Kacc added into K (and cleared)
// before every group of kSuperBlocks blocks but the first, and at the end. The neurons are handled a panel of whole
// blocks at a time: the panel of F is computed in parallel over samples, then the rank update is parallel over rows
// of K, row i owned by one thread, which also does row i's flushes at the group boundaries inside the panel. So the
// panel width (chosen from N alone, to bound the panel buffer and the number of barriers) and the number of
// threads change no summation order.
template <class T, class A>
void gram_impl(const WideShape& s, const T* X, const T* W1, const T* W2, const T* B2, T gamma, T a1, T* K) {
  const size_t N = s.N, n1 = s.n1, n2 = s.n2;
  const size_t group = kSuperBlocks * kBlock;  // neurons per group
  const bool backward = B2 != nullptr;
  const bool grouped = n1 > group;  // one group only: accumulate straight into K (same bits)
  const size_t panel_blocks = std::max<size_t>(1, kGramPanelElems / std::max<size_t>(1, N * kBlock));
  const size_t panel_max = std::min(panel_blocks, ceil_div(n1, kBlock)) * kBlock;
  // Rows are the unit of parallel work; with few rows, fewer threads (the result does not depend on it).
  const int P = int(std::max<size_t>(1, std::min<size_t>(size_t(get_num_threads()), N / 16)));
  std::vector<T> FTbuf(checked_mul(panel_max, N));
  std::vector<T> Kpbuf(grouped ? checked_mul(N, N) : 0);
  T* const FT = FTbuf.data();  // F^T of the panel (pn x N): row b holds neuron p0+b for every sample
  T* const Kacc = grouped ? Kpbuf.data() : K;
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
    for (size_t p0 = 0; p0 < n1; p0 += panel_max) {
      const size_t pn = std::min(panel_max, n1 - p0);  // neurons in the panel
      // The panel of F for every sample (rows are independent), block by block.
#pragma omp for schedule(static)
      for (idx ii = 0; ii < idx(N); ++ii) {
        const size_t i = size_t(ii);
        for (size_t off = 0; off < pn; off += kBlock) {
          const size_t nb = std::min(kBlock, pn - off);
          T z[kBlock];
          preact(s, X, W1, i, 1, p0 + off, nb, z);
          if (!backward) {
            for (size_t b = 0; b < nb; ++b) FT[(off + b) * N + i] = a1 * A::f(z[b], gamma);
          } else {
            const T* g = B2 + i * n2;
            for (size_t b = 0; b < nb; ++b) {
              const T* w = W2 + (p0 + off + b) * n2;
              T p = T(0);
              for (size_t c = 0; c < n2; ++c) p += g[c] * w[c];
              FT[(off + b) * N + i] = (a1 * p) * A::df(z[b], gamma);
            }
          }
        }
      }
      // Rank-pn update of the lower triangle: Kacc[i, j] += sum_t F[i,t] F[j,t], row i owned by one thread.
#pragma omp for schedule(dynamic, 8)
      for (idx ii = 0; ii < idx(N); ++ii) {
        const size_t i = size_t(ii);
        T* PYRGD_RESTRICT krow = Kacc + i * N;
        for (size_t b = 0; b < pn; ++b) {
          const size_t t = p0 + b;
          if (grouped && t > 0 && t % group == 0) flush_row(i);  // a new group starts at neuron t
          const T* PYRGD_RESTRICT fr = FT + b * N;
          const T f = fr[i];
          for (size_t j = 0; j <= i; ++j) krow[j] += f * fr[j];
        }
      }
    }
    // Last flush, then mirror the lower triangle (K is exactly symmetric). Row i's lower part is read only here,
    // by the thread that flushed it; the writes go to the upper triangle, which no flush touches.
#pragma omp for schedule(static)
    for (idx ii = 0; ii < idx(N); ++ii) {
      const size_t i = size_t(ii);
      if (grouped) flush_row(i);
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

template <class T>
void forward(const WideShape& s, const T* X, const T* W1, const T* W2, int act, T gamma, T a1, T* H) {
  switch (act) {
#define PYRGD_CPU_CASE(S, c)                                           \
  case c:                                                              \
    return forward_impl<T, pyrgd::act::S>(s, X, W1, W2, gamma, a1, H);
    PYRGD_FOR_EACH_ACTIVATION(PYRGD_CPU_CASE)
#undef PYRGD_CPU_CASE
    default:
      bad_activation(act);
  }
}

template <class T>
void step(const WideShape& s, const T* X, T* W1, T* W2, const T* G, T lr, int act, T gamma, T a1, T* H_next,
          double* grad_sq_w1, double* grad_sq_w2) {
  switch (act) {
#define PYRGD_CPU_CASE(S, c)                                                                                   \
  case c:                                                                                                      \
    return step_impl<T, pyrgd::act::S>(s, X, W1, W2, G, lr, gamma, a1, H_next, grad_sq_w1, grad_sq_w2);
    PYRGD_FOR_EACH_ACTIVATION(PYRGD_CPU_CASE)
#undef PYRGD_CPU_CASE
    default:
      bad_activation(act);
  }
}

template <class T>
void gram(const WideShape& s, const T* X, const T* W1, const T* W2, const T* B2, int act, T gamma, T a1, T* K) {
  switch (act) {
#define PYRGD_CPU_CASE(S, c)                                           \
  case c:                                                              \
    return gram_impl<T, pyrgd::act::S>(s, X, W1, W2, B2, gamma, a1, K);
    PYRGD_FOR_EACH_ACTIVATION(PYRGD_CPU_CASE)
#undef PYRGD_CPU_CASE
    default:
      bad_activation(act);
  }
}

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
