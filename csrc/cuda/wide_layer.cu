// wide_layer.cu -- CUDA kernels of pyrgd's wide first layer (THEORY.md section 2), for float and double.
//
// Compiled at run time by CuPy (RawModule through NVRTC) with csrc/include and csrc/cuda on the include path; the
// kernels are templates on the scalar type T and the activation struct of pyrgd/activations.h, instantiated
// through NVRTC name expressions (the one list is pyrgd.backends.cuda.name_expressions). No system header.
//
// Shapes, row-major with runtime leading dimensions (ld*, in elements): X (N, d), W1 (d, n1), W2 (n1, n2),
// G and H (N, n2). N, d, n1, n2, the strides, a1, gamma and lr are kernel arguments: new shapes never recompile.
//
// Determinism: every sum is taken in a fixed order that depends on the shapes alone (not on the grid size or the
// scheduling); there are no atomics. Long sums are blocked: the forward sums kFlushTiles neuron tiles into a
// partial before adding it to the total, the step sums one row tile of SM rows before adding it to its running
// gradient.
//
// Kernels (launch: 256 threads per block, grids as stated; the host reads tile sizes from tile_config_kernel):
//   wide_forward_kernel<T, A>            H = a1 sigma(X W1) W2. grid (ceil(N/FM), ceil(n2/FN)): a block owns
//                                         rows [r0, r0+FM) and columns [c0, c0+FN) of H and sweeps all neurons.
//   wide_step_kernel<T, A>               one GD step, W1 and W2 updated in place. grid (any g >= 1): block b owns
//                                         the neuron tiles b, b+g, ... and, for each, sweeps all rows.
//   wide_features_kernel<T, A>           F[:, j-jb] = a1 sigma(X W1[:, j]) for j in [jb, je).
//   wide_backward_features_kernel<T, A>  F[:, j-jb] = a1 (B2 W2[j, :]^T) (.) sigma'(X W1[:, j]).
//                                         grid (ceil(N/SM), ceil((je-jb)/ST)) for both.
//   pyrgd_sum_pairs                      out = (sum_t v[2t], sum_t v[2t+1]) in fixed order. grid (1).
//   tile_config_kernel<T>                writes the tile sizes of T (8 ints). grid (1).
#include "pyrgd/activations.h"
#include "tiles.cuh"

namespace pyrgd {
namespace cuda {

// z[i][j] = sum_k X[r0 + ty + 16 i][k] * W1[k][j0 + tx + 16 j], reading 0 for rows >= N and columns >= jlim.
// As holds kBK x LDA elements (LDA >= MT), Bs kBK x LDB (LDB >= NT). Starts and ends with other threads possibly
// still reading As/Bs: it synchronizes before each write of them, not after its last read.
template <class T, int MT, int NT, int LDA, int LDB>
__device__ __forceinline__ void tile_x_w1(T (&z)[MT / 16][NT / 16], const T* X, i64 ldx, int r0, int N, const T* W1,
                                          i64 ldw1, int j0, int jlim, int d, T* As, T* Bs, int tx, int ty) {
  zero_tile(z);
  for (int k0 = 0; k0 < d; k0 += kBK) {
    __syncthreads();
    load_tile_t<T, MT, kBK, LDA>(As, X, ldx, r0, N, k0, d);       // As[k][m] = X[r0 + m][k0 + k]
    load_tile<T, kBK, NT, LDB>(Bs, W1, ldw1, k0, d, j0, jlim);    // Bs[k][n] = W1[k0 + k][j0 + n]
    __syncthreads();
    mma_tile<T, MT / 16, NT / 16, kBK, LDA, LDB>(z, As, Bs, tx, ty);
  }
}

// p[i][j] = sum_c G[r0 + ty + 16 i][c] * W2[j0 + tx + 16 j][c], reading 0 for rows >= N and neurons >= jlim.
template <class T, int MT, int NT, int LDA, int LDB>
__device__ __forceinline__ void tile_g_w2t(T (&p)[MT / 16][NT / 16], const T* G, i64 ldg, int r0, int N, const T* W2,
                                           i64 ldw2, int j0, int jlim, int n2, T* As, T* Bs, int tx, int ty) {
  zero_tile(p);
  for (int k0 = 0; k0 < n2; k0 += kBK) {
    __syncthreads();
    load_tile_t<T, MT, kBK, LDA>(As, G, ldg, r0, N, k0, n2);      // As[k][m] = G[r0 + m][k0 + k]
    load_tile_t<T, NT, kBK, LDB>(Bs, W2, ldw2, j0, jlim, k0, n2);  // Bs[k][n] = W2[j0 + n][k0 + k]
    __syncthreads();
    mma_tile<T, MT / 16, NT / 16, kBK, LDA, LDB>(p, As, Bs, tx, ty);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Forward: H[r0:r0+FM, c0:c0+FN] = sum over neuron tiles T of (a1 sigma(X[rows] W1[:, T])) W2[T, cols].
// Static shared memory: (2 kBK (max(FM, FN, FT) + 1) + FT (FM + 1)) sizeof(T): 24960 B (float), 33280 B (double).
template <class T, class Act>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    wide_forward_kernel(const T* __restrict__ X, const T* __restrict__ W1, const T* __restrict__ W2,
                        T* __restrict__ H, int N, int d, int n1, int n2, i64 ldx, i64 ldw1, i64 ldw2, i64 ldh, T a1,
                        T gamma) {
  typedef Tiles<T> C;
  constexpr int MI = C::FM / 16, NJ = C::FN / 16, TJ = C::FT / 16;
  constexpr int LDA = C::FM + 1;                  // As: X tile, k-major
  constexpr int LDB = cmax(C::FT, C::FN) + 1;     // Bs: W1 tile (FT wide), then W2 tile (FN wide)
  constexpr int LDS = C::FM + 1;                  // St[n][m] = S[m][n]: the A operand of S W2
  __shared__ T As[kBK * LDA];
  __shared__ T Bs[kBK * LDB];
  __shared__ T St[C::FT * LDS];

  const int tx = (int)threadIdx.x % 16, ty = (int)threadIdx.x / 16;
  const int r0 = (int)blockIdx.x * C::FM, c0 = (int)blockIdx.y * C::FN;

  T total[MI][NJ], part[MI][NJ];
  zero_tile(total);
  zero_tile(part);
  int tiles_in_part = 0;

  for (int j0 = 0; j0 < n1; j0 += C::FT) {
    T z[MI][TJ];
    tile_x_w1<T, C::FM, C::FT, LDA, LDB>(z, X, ldx, r0, N, W1, ldw1, j0, n1, d, As, Bs, tx, ty);
    __syncthreads();  // every thread is done with the previous tile's St (also ensured by tile_x_w1's barriers)
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
      for (int j = 0; j < TJ; ++j) {
        const int m = ty + 16 * i, n = tx + 16 * j;
        St[n * LDS + m] = (r0 + m < N && j0 + n < n1) ? a1 * Act::f(z[i][j], gamma) : T(0);
      }
    for (int kk = 0; kk < C::FT; kk += kBK) {
      __syncthreads();
      load_tile<T, kBK, C::FN, LDB>(Bs, W2, ldw2, j0 + kk, n1, c0, n2);  // Bs[k][c] = W2[j0 + kk + k][c0 + c]
      __syncthreads();
      mma_tile<T, MI, NJ, kBK, LDS, LDB>(part, St + kk * LDS, Bs, tx, ty);
    }
    if (++tiles_in_part == kFlushTiles) {
#pragma unroll
      for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NJ; ++j) {
          total[i][j] += part[i][j];
          part[i][j] = T(0);
        }
      tiles_in_part = 0;
    }
  }
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
      const int r = r0 + ty + 16 * i, c = c0 + tx + 16 * j;
      if (r < N && c < n2) H[(i64)r * ldh + c] = total[i][j] + part[i][j];
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Step: for each neuron tile T = [j0, j0 + ST) it owns, a block sweeps the row tiles R = [r0, r0 + SM):
//   Z = X_R W1[:,T];  P = G_R W2[T,:]^T;  S = a1 sigma(Z);  D = a1 P (.) sigma'(Z)   (SM x ST, in shared memory)
//   dW1[:,T] += X_R^T D  (d x ST, in chunks of SC rows)     dW2[T,:] += S^T G_R  (ST x n2, in chunks of SC columns)
// The running gradients live in the block's slice of `scratch` (ST (d + n2) elements per block; only touched when
// N > SM); each element is read and written by one thread only. On the last row tile the finished gradient is
// applied in place (W -= lr dW) and its squares summed. The block reads W1[:,T], W2[T,:] only before the barrier
// that precedes the first update of them, and no other block touches them: no hazard, no atomics.
// sq_norms[2 t] and sq_norms[2 t + 1] receive ||dW1[:,T_t]||^2 and ||dW2[T_t,:]||^2 (summed in fixed order).
// Static shared memory: (kBK (max(SM,SC)+1 + max(ST,SC)+1) + 2 SM (ST+1)) sizeof(T) + 2 kThreads 8 B:
// 45696 B (float), 37632 B (double).
template <class T, class Act>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    wide_step_kernel(const T* __restrict__ X, T* W1, T* W2, const T* __restrict__ G, int N, int d, int n1, int n2,
                     i64 ldx, i64 ldw1, i64 ldw2, i64 ldg, T a1, T gamma, T lr, T* __restrict__ scratch,
                     double* __restrict__ sq_norms) {
  typedef Tiles<T> C;
  constexpr int ZI = C::SM / 16, ZJ = C::ST / 16;
  constexpr int LDA = cmax(C::SM, C::SC) + 1;
  constexpr int LDB = cmax(C::ST, C::SC) + 1;
  constexpr int LDS = C::ST + 1;  // Ss[m][n], Ds[m][n]: row m of the row tile, neuron n of the tile
  __shared__ T As[kBK * LDA];
  __shared__ T Bs[kBK * LDB];
  __shared__ T Ss[C::SM * LDS];
  __shared__ T Ds[C::SM * LDS];
  __shared__ double red1[kThreads];
  __shared__ double red2[kThreads];

  const int tid = (int)threadIdx.x;
  const int tx = tid % 16, ty = tid / 16;
  const int num_tiles = ceil_div(n1, C::ST);
  const int num_row_tiles = ceil_div(N, C::SM);
  T* const g1s = scratch + (i64)blockIdx.x * C::ST * ((i64)d + n2);  // running dW1[:,T], d x ST
  T* const g2s = g1s + (i64)d * C::ST;                                // running dW2[T,:], ST x n2

  for (int tile = (int)blockIdx.x; tile < num_tiles; tile += (int)gridDim.x) {
    const int j0 = tile * C::ST;
    double sq1 = 0.0, sq2 = 0.0;
    for (int rt = 0; rt < num_row_tiles; ++rt) {
      const int r0 = rt * C::SM;
      const bool first = rt == 0, last = rt == num_row_tiles - 1;
      T z[ZI][ZJ], p[ZI][ZJ];
      tile_x_w1<T, C::SM, C::ST, LDA, LDB>(z, X, ldx, r0, N, W1, ldw1, j0, n1, d, As, Bs, tx, ty);
      tile_g_w2t<T, C::SM, C::ST, LDA, LDB>(p, G, ldg, r0, N, W2, ldw2, j0, n1, n2, As, Bs, tx, ty);
      __syncthreads();  // all reads of Ss/Ds (previous row tile) and of W1[:,T], W2[T,:] (this one) are done
#pragma unroll
      for (int i = 0; i < ZI; ++i)
#pragma unroll
        for (int j = 0; j < ZJ; ++j) {
          const int m = ty + 16 * i, n = tx + 16 * j;
          T s, ds;
          Act::both(z[i][j], gamma, s, ds);
          const bool valid = r0 + m < N && j0 + n < n1;
          Ss[m * LDS + n] = valid ? a1 * s : T(0);
          Ds[m * LDS + n] = valid ? a1 * p[i][j] * ds : T(0);
        }
      __syncthreads();

      // dW1[i0:i0+SC, T] += X_R[:, i0:i0+SC]^T D
      for (int i0 = 0; i0 < d; i0 += C::SC) {
        T acc[C::SC / 16][C::ST / 16];
        zero_tile(acc);
        for (int kk = 0; kk < C::SM; kk += kBK) {
          __syncthreads();
          load_tile<T, kBK, C::SC, LDA>(As, X, ldx, r0 + kk, N, i0, d);  // As[k][m] = X[r0 + kk + k][i0 + m]
          __syncthreads();
          mma_tile<T, C::SC / 16, C::ST / 16, kBK, LDA, LDS>(acc, As, Ds + kk * LDS, tx, ty);
        }
#pragma unroll
        for (int i = 0; i < C::SC / 16; ++i)
#pragma unroll
          for (int j = 0; j < C::ST / 16; ++j) {
            const int gi = i0 + ty + 16 * i, n = tx + 16 * j;
            if (gi < d && j0 + n < n1) {
              const i64 idx = (i64)gi * C::ST + n;
              const T g = first ? acc[i][j] : g1s[idx] + acc[i][j];
              if (!last) {
                g1s[idx] = g;
              } else {
                sq1 += (double)g * (double)g;
                W1[(i64)gi * ldw1 + j0 + n] -= lr * g;
              }
            }
          }
      }

      // dW2[T, c0:c0+SC] += S^T G_R[:, c0:c0+SC]
      for (int c0 = 0; c0 < n2; c0 += C::SC) {
        T acc[C::ST / 16][C::SC / 16];
        zero_tile(acc);
        for (int kk = 0; kk < C::SM; kk += kBK) {
          __syncthreads();
          load_tile<T, kBK, C::SC, LDB>(Bs, G, ldg, r0 + kk, N, c0, n2);  // Bs[k][c] = G[r0 + kk + k][c0 + c]
          __syncthreads();
          mma_tile<T, C::ST / 16, C::SC / 16, kBK, LDS, LDB>(acc, Ss + kk * LDS, Bs, tx, ty);
        }
#pragma unroll
        for (int i = 0; i < C::ST / 16; ++i)
#pragma unroll
          for (int j = 0; j < C::SC / 16; ++j) {
            const int n = ty + 16 * i, gc = c0 + tx + 16 * j;
            if (j0 + n < n1 && gc < n2) {
              const i64 idx = (i64)n * n2 + gc;
              const T g = first ? acc[i][j] : g2s[idx] + acc[i][j];
              if (!last) {
                g2s[idx] = g;
              } else {
                sq2 += (double)g * (double)g;
                W2[(i64)(j0 + n) * ldw2 + gc] -= lr * g;
              }
            }
          }
      }
    }

    // ||dW1[:,T]||^2 and ||dW2[T,:]||^2: a fixed-order tree over the block's threads.
    red1[tid] = sq1;
    red2[tid] = sq2;
    __syncthreads();
    for (int w = kThreads / 2; w > 0; w >>= 1) {
      if (tid < w) {
        red1[tid] += red1[tid + w];
        red2[tid] += red2[tid + w];
      }
      __syncthreads();
    }
    if (tid == 0) {
      sq_norms[2 * (i64)tile] = red1[0];
      sq_norms[2 * (i64)tile + 1] = red2[0];
    }
    __syncthreads();  // red1/red2 are free again
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Features of the Gram matrices: F (N x (je - jb), leading dimension ldf) for the neurons [jb, je), je <= n1.
template <class T, class Act>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    wide_features_kernel(const T* __restrict__ X, const T* __restrict__ W1, T* __restrict__ F, int N, int d, int n1,
                         i64 ldx, i64 ldw1, int jb, int je, i64 ldf, T a1, T gamma) {
  typedef Tiles<T> C;
  constexpr int ZI = C::SM / 16, ZJ = C::ST / 16;
  constexpr int LDA = C::SM + 1, LDB = C::ST + 1;
  __shared__ T As[kBK * LDA];
  __shared__ T Bs[kBK * LDB];
  const int tx = (int)threadIdx.x % 16, ty = (int)threadIdx.x / 16;
  const int r0 = (int)blockIdx.x * C::SM, j0 = jb + (int)blockIdx.y * C::ST;
  const int jlim = je < n1 ? je : n1;
  T z[ZI][ZJ];
  tile_x_w1<T, C::SM, C::ST, LDA, LDB>(z, X, ldx, r0, N, W1, ldw1, j0, jlim, d, As, Bs, tx, ty);
#pragma unroll
  for (int i = 0; i < ZI; ++i)
#pragma unroll
    for (int j = 0; j < ZJ; ++j) {
      const int r = r0 + ty + 16 * i, jn = j0 + tx + 16 * j;
      if (r < N && jn < jlim) F[(i64)r * ldf + (jn - jb)] = a1 * Act::f(z[i][j], gamma);
    }
}

template <class T, class Act>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    wide_backward_features_kernel(const T* __restrict__ X, const T* __restrict__ W1, const T* __restrict__ W2,
                                  const T* __restrict__ B2, T* __restrict__ F, int N, int d, int n1, int n2, i64 ldx,
                                  i64 ldw1, i64 ldw2, i64 ldb2, int jb, int je, i64 ldf, T a1, T gamma) {
  typedef Tiles<T> C;
  constexpr int ZI = C::SM / 16, ZJ = C::ST / 16;
  constexpr int LDA = C::SM + 1, LDB = C::ST + 1;
  __shared__ T As[kBK * LDA];
  __shared__ T Bs[kBK * LDB];
  const int tx = (int)threadIdx.x % 16, ty = (int)threadIdx.x / 16;
  const int r0 = (int)blockIdx.x * C::SM, j0 = jb + (int)blockIdx.y * C::ST;
  const int jlim = je < n1 ? je : n1;
  T z[ZI][ZJ], p[ZI][ZJ];
  tile_x_w1<T, C::SM, C::ST, LDA, LDB>(z, X, ldx, r0, N, W1, ldw1, j0, jlim, d, As, Bs, tx, ty);
  tile_g_w2t<T, C::SM, C::ST, LDA, LDB>(p, B2, ldb2, r0, N, W2, ldw2, j0, jlim, n2, As, Bs, tx, ty);
#pragma unroll
  for (int i = 0; i < ZI; ++i)
#pragma unroll
    for (int j = 0; j < ZJ; ++j) {
      const int r = r0 + ty + 16 * i, jn = j0 + tx + 16 * j;
      if (r < N && jn < jlim) F[(i64)r * ldf + (jn - jb)] = a1 * p[i][j] * Act::df(z[i][j], gamma);
    }
}

// The tile sizes of T, for the host: FM, FN, FT, SM, ST, SC, kThreads, sizeof(T).
template <class T>
__global__ void tile_config_kernel(int* out) {
  if (threadIdx.x == 0 && blockIdx.x == 0) {
    out[0] = Tiles<T>::FM;
    out[1] = Tiles<T>::FN;
    out[2] = Tiles<T>::FT;
    out[3] = Tiles<T>::SM;
    out[4] = Tiles<T>::ST;
    out[5] = Tiles<T>::SC;
    out[6] = kThreads;
    out[7] = (int)sizeof(T);
  }
}

}  // namespace cuda
}  // namespace pyrgd

// out[0] = sum_t v[2 t], out[1] = sum_t v[2 t + 1] over t < n, in a fixed order (strided per-thread sums, then a
// tree). One block of kThreads threads.
extern "C" __global__ void __launch_bounds__(pyrgd::cuda::kThreads)
    pyrgd_sum_pairs(const double* __restrict__ v, int n, double* __restrict__ out) {
  constexpr int kT = pyrgd::cuda::kThreads;
  __shared__ double s0[kT];
  __shared__ double s1[kT];
  const int t = (int)threadIdx.x;
  double a = 0.0, b = 0.0;
  for (int i = t; i < n; i += kT) {
    a += v[2 * (long long)i];
    b += v[2 * (long long)i + 1];
  }
  s0[t] = a;
  s1[t] = b;
  __syncthreads();
  for (int w = kT / 2; w > 0; w >>= 1) {
    if (t < w) {
      s0[t] += s0[t + w];
      s1[t] += s1[t + w];
    }
    __syncthreads();
  }
  if (t == 0) {
    out[0] = s0[0];
    out[1] = s1[0];
  }
}
