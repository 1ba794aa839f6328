// wide_layer.cu -- CUDA kernels of pyrgd's wide first layer (docs/theory.md section 2), for float and double.
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
//   wide_grad_features_kernel<T, A>      both: S = a1 sigma(X W1[:, j]) and D = a1 (G W2[j, :]^T) (.) sigma'(...).
//                                         grid (ceil(N/SM), ceil((je-jb)/ST)) for the three.
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

// The factors of the wide layer's gradients for the neurons [jb, je), je <= n1 (both N x (je - jb), leading dimension
// ldf): S[:, j-jb] = a1 sigma(X W1[:, j]) and D[:, j-jb] = a1 (G W2[j, :]^T) (.) sigma'(X W1[:, j]), from one product
// X W1 (the host then forms dW2 = S^T G, dW1 = X^T D and dX = D W1^T with cuBLAS). Grid as the features kernels.
template <class T, class Act>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    wide_grad_features_kernel(const T* __restrict__ X, const T* __restrict__ W1, const T* __restrict__ W2,
                              const T* __restrict__ G, T* __restrict__ S, T* __restrict__ D, int N, int d, int n1,
                              int n2, i64 ldx, i64 ldw1, i64 ldw2, i64 ldg, int jb, int je, i64 ldf, T a1, T gamma) {
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
  tile_g_w2t<T, C::SM, C::ST, LDA, LDB>(p, G, ldg, r0, N, W2, ldw2, j0, jlim, n2, As, Bs, tx, ty);
#pragma unroll
  for (int i = 0; i < ZI; ++i)
#pragma unroll
    for (int j = 0; j < ZJ; ++j) {
      const int r = r0 + ty + 16 * i, jn = j0 + tx + 16 * j;
      if (r < N && jn < jlim) {
        S[(i64)r * ldf + (jn - jb)] = a1 * Act::f(z[i][j], gamma);
        D[(i64)r * ldf + (jn - jb)] = a1 * p[i][j] * Act::df(z[i][j], gamma);
      }
    }
}

// ===============================================================================================================
// float32 fast path: register-blocked kernels (128 x 128 block tiles, an 8 x 8 micro-tile per thread read from
// shared memory as float4, k-chunks of kFK staged through double-buffered shared memory with the next chunk's
// global loads in flight while the current one is multiplied). Same sums in the same fixed order for any grid:
// every output element is accumulated by one thread, in increasing k, with no atomics.
//
// Thread (ty, tx) = (tid / 16, tid % 16) owns rows mrow(i) = (i / 4) 64 + 4 ty + i % 4 and columns
// ncol(j) = (j / 4) 64 + 4 tx + j % 4 (i, j < 8) of a 128 x 128 output tile. Shared operands are k-major with row
// pitch kFP (132 floats: 16-byte aligned rows, 2-way bank conflicts at worst on the transposed stores).
constexpr int kFT = 128;  // block tile (rows and columns) of the fast kernels
constexpr int kFK = 16;   // k-chunk staged through shared memory
constexpr int kFP = kFT + 4;  // row pitch of every shared tile
constexpr int kFStage = kFK * kFP;  // floats of one staged operand buffer
// dynamic shared memory (bytes): step = Ss + Ds + 2 x 2 staged buffers; forward = St + 2 x 2 staged buffers
constexpr int kFStepSmem = (2 * kFT * kFP + 4 * kFStage) * 4;
constexpr int kFFwdSmem = (kFT * kFP + 4 * kFStage) * 4;

__device__ __forceinline__ int fmrow(int i, int ty) { return (i >> 2) * 64 + 4 * ty + (i & 3); }
__device__ __forceinline__ int fncol(int j, int tx) { return (j >> 2) * 64 + 4 * tx + (j & 3); }

// Direct operand: tile[k][n] = src[(kbase + k0 + k) * ld + c0 + n], 0 where the row >= klim or column >= clim.
struct FLoadN {
  const float* src;
  i64 ld;
  int kbase, klim, c0, clim;
  static constexpr bool resident = false;
  __device__ __forceinline__ void load(float (&r)[8], int k0) const {
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      const int e = q * kThreads + (int)threadIdx.x;
      const int k = e >> 7, n = e & 127;
      const int gk = kbase + k0 + k, gc = c0 + n;
      r[q] = (gk < klim && gc < clim) ? src[(i64)gk * ld + gc] : 0.0f;
    }
  }
  __device__ __forceinline__ void store(float* dst, const float (&r)[8]) const {
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      const int e = q * kThreads + (int)threadIdx.x;
      dst[(e >> 7) * kFP + (e & 127)] = r[q];
    }
  }
  __device__ __forceinline__ const float* ptr(const float* stage, int) const { return stage; }
};

// Transposed operand: tile[k][m] = src[(r0 + m) * ld + k0 + k], 0 where the row >= rlim or k0 + k >= klim.
struct FLoadT {
  const float* src;
  i64 ld;
  int r0, rlim, klim;
  static constexpr bool resident = false;
  __device__ __forceinline__ void load(float (&r)[8], int k0) const {
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      const int e = q * kThreads + (int)threadIdx.x;
      const int m = e >> 4, k = e & 15;
      const int gm = r0 + m, gk = k0 + k;
      r[q] = (gm < rlim && gk < klim) ? src[(i64)gm * ld + gk] : 0.0f;
    }
  }
  __device__ __forceinline__ void store(float* dst, const float (&r)[8]) const {
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      const int e = q * kThreads + (int)threadIdx.x;
      dst[(e & 15) * kFP + (e >> 4)] = r[q];
    }
  }
  __device__ __forceinline__ const float* ptr(const float* stage, int) const { return stage; }
};

// Operand already in shared memory, k-major with pitch kFP.
struct FResident {
  const float* base;
  static constexpr bool resident = true;
  __device__ __forceinline__ void load(float (&)[8], int) const {}
  __device__ __forceinline__ void store(float*, const float (&)[8]) const {}
  __device__ __forceinline__ const float* ptr(const float*, int k0) const { return base + k0 * kFP; }
};

// acc[i][j] += sum_{k < kFK} A[k][mrow(i)] B[k][ncol(j)], k increasing.
__device__ __forceinline__ void fmma_chunk(float (&acc)[8][8], const float* A, const float* B, int tx, int ty) {
#pragma unroll
  for (int k = 0; k < kFK; ++k) {
    const float4 a0 = *reinterpret_cast<const float4*>(A + k * kFP + 4 * ty);
    const float4 a1 = *reinterpret_cast<const float4*>(A + k * kFP + 64 + 4 * ty);
    const float4 b0 = *reinterpret_cast<const float4*>(B + k * kFP + 4 * tx);
    const float4 b1 = *reinterpret_cast<const float4*>(B + k * kFP + 64 + 4 * tx);
    const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
    const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
  }
}

// acc += A^T B over k in [0, K) (K a multiple of kFK for resident operands), in increasing k. stage holds 4 buffers
// of kFStage floats. Starts with a barrier (earlier readers of the stage and of shared outputs are done) and ends
// with one (every thread is done reading its operands).
template <class LA, class LB>
__device__ __forceinline__ void fgemm(float (&acc)[8][8], int K, const LA& la, const LB& lb, float* stage, int tx,
                                      int ty) {
  float ra[8], rb[8];
  const int nc = ceil_div(K, kFK);
  __syncthreads();
  if (nc <= 0) return;
  if (!LA::resident) la.load(ra, 0);
  if (!LB::resident) lb.load(rb, 0);
  if (!LA::resident) la.store(stage, ra);
  if (!LB::resident) lb.store(stage + kFStage, rb);
  __syncthreads();
  for (int c = 0; c < nc; ++c) {
    float* cur = stage + (c & 1) * 2 * kFStage;
    float* nxt = stage + ((c + 1) & 1) * 2 * kFStage;
    const bool more = c + 1 < nc;
    if (more) {
      if (!LA::resident) la.load(ra, (c + 1) * kFK);
      if (!LB::resident) lb.load(rb, (c + 1) * kFK);
    }
    fmma_chunk(acc, la.ptr(cur, c * kFK), lb.ptr(cur + kFStage, c * kFK), tx, ty);
    if (more) {
      if (!LA::resident) la.store(nxt, ra);
      if (!LB::resident) lb.store(nxt + kFStage, rb);
    }
    __syncthreads();
  }
}

__device__ __forceinline__ void fzero(float (&acc)[8][8]) {
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;
}

// Forward, float32: grid (ceil(N / 128), ceil(n2 / 128)); dynamic shared memory kFFwdSmem bytes. The block sums
// the neuron tiles of kFT into a partial (registers) that joins the total, kept in H itself (each element read and
// written by one thread), every kFlushTiles / 2 tiles (same neurons per partial as the generic kernel's 32 x 64).
template <class T, class Act>
__global__ void __launch_bounds__(kThreads, 1)
    wide_forward_f32(const float* __restrict__ X, const float* __restrict__ W1, const float* __restrict__ W2,
                     float* __restrict__ H, int N, int d, int n1, int n2, i64 ldx, i64 ldw1, i64 ldw2, i64 ldh,
                     float a1, float gamma) {
  static_assert(sizeof(T) == 4, "float32 kernel");
  extern __shared__ float4 fsm_f4[];
  float* const St = reinterpret_cast<float*>(fsm_f4);  // St[n][m] = a1 sigma(Z[m][n])
  float* const stage = St + kFT * kFP;
  const int tid = (int)threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int r0 = (int)blockIdx.x * kFT, c0 = (int)blockIdx.y * kFT;
  constexpr int kTilesPerPart = kFlushTiles / 2 > 0 ? kFlushTiles / 2 : 1;

  float part[8][8];
  fzero(part);
  int tiles_in_part = 0;
  bool flushed = false;
  const FLoadT lx{X, ldx, r0, N, d};
  for (int j0 = 0; j0 < n1; j0 += kFT) {
    {
      float z[8][8];
      fzero(z);
      fgemm(z, d, lx, FLoadN{W1, ldw1, 0, d, j0, n1}, stage, tx, ty);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int n = fncol(j, tx);
#pragma unroll
        for (int ib = 0; ib < 2; ++ib) {
          float v[4];
#pragma unroll
          for (int ii = 0; ii < 4; ++ii) {
            const int i = ib * 4 + ii, m = fmrow(i, ty);
            v[ii] = (r0 + m < N && j0 + n < n1) ? a1 * Act::f(z[i][j], gamma) : 0.0f;
          }
          *reinterpret_cast<float4*>(St + n * kFP + ib * 64 + 4 * ty) = make_float4(v[0], v[1], v[2], v[3]);
        }
      }
    }
    fgemm(part, kFT, FResident{St}, FLoadN{W2, ldw2, j0, n1, c0, n2}, stage, tx, ty);
    if (++tiles_in_part == kTilesPerPart || j0 + kFT >= n1) {
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const int r = r0 + fmrow(i, ty), c = c0 + fncol(j, tx);
          if (r < N && c < n2) {
            float* h = H + (i64)r * ldh + c;
            *h = flushed ? *h + part[i][j] : part[i][j];
          }
          part[i][j] = 0.0f;
        }
      tiles_in_part = 0;
      flushed = true;
    }
  }
  if (!flushed) {  // n1 == 0
    for (int i = 0; i < 8; ++i)
      for (int j = 0; j < 8; ++j) {
        const int r = r0 + fmrow(i, ty), c = c0 + fncol(j, tx);
        if (r < N && c < n2) H[(i64)r * ldh + c] = 0.0f;
      }
  }
}

// Step, float32: as wide_step_kernel with ST = SM = SC = kFT; grid (any g >= 1), dynamic shared memory kFStepSmem.
// scratch: per block kFT (dp + n2p) floats, dp = d and n2p = n2 rounded up to kFT (running dW1[:,T] as dp x kFT,
// then running dW2[T,:] as kFT x n2p), touched only when N > kFT; accessed as float4, each element by one thread.
template <class T, class Act>
__global__ void __launch_bounds__(kThreads, 1)
    wide_step_f32(const float* __restrict__ X, float* W1, float* W2, const float* __restrict__ G, int N, int d,
                  int n1, int n2, i64 ldx, i64 ldw1, i64 ldw2, i64 ldg, float a1, float gamma, float lr,
                  float* __restrict__ scratch, double* __restrict__ sq_norms) {
  static_assert(sizeof(T) == 4, "float32 kernel");
  extern __shared__ float4 fsm_f4[];
  float* const Ss = reinterpret_cast<float*>(fsm_f4);  // Ss[m][n] = a1 sigma(Z[m][n])
  float* const Ds = Ss + kFT * kFP;                     // Ds[m][n] = a1 P[m][n] sigma'(Z[m][n])
  float* const stage = Ds + kFT * kFP;
  __shared__ double red1[kThreads];
  __shared__ double red2[kThreads];

  const int tid = (int)threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int num_tiles = ceil_div(n1, kFT);
  const int num_row_tiles = ceil_div(N, kFT);
  const int dp = ceil_div(d, kFT) * kFT, n2p = ceil_div(n2, kFT) * kFT;
  float* const g1s = scratch + (i64)blockIdx.x * kFT * ((i64)dp + n2p);  // dp x kFT
  float* const g2s = g1s + (i64)dp * kFT;                                // kFT x n2p

  for (int tile = (int)blockIdx.x; tile < num_tiles; tile += (int)gridDim.x) {
    const int j0 = tile * kFT;
    double sq1 = 0.0, sq2 = 0.0;
    for (int rt = 0; rt < num_row_tiles; ++rt) {
      const int r0 = rt * kFT;
      const bool first = rt == 0, last = rt == num_row_tiles - 1;
      const FLoadT lx{X, ldx, r0, N, d};
      {
        float acc[8][8];
        fzero(acc);
        fgemm(acc, d, lx, FLoadN{W1, ldw1, 0, d, j0, n1}, stage, tx, ty);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const int m = fmrow(i, ty);
#pragma unroll
          for (int jb = 0; jb < 2; ++jb) {
            float s[4], ds[4];
#pragma unroll
            for (int jj = 0; jj < 4; ++jj) {
              const int j = jb * 4 + jj, n = fncol(j, tx);
              float sv, dv;
              Act::both(acc[i][j], gamma, sv, dv);
              const bool valid = r0 + m < N && j0 + n < n1;
              s[jj] = valid ? a1 * sv : 0.0f;
              ds[jj] = valid ? a1 * dv : 0.0f;
            }
            const int off = m * kFP + jb * 64 + 4 * tx;
            *reinterpret_cast<float4*>(Ss + off) = make_float4(s[0], s[1], s[2], s[3]);
            *reinterpret_cast<float4*>(Ds + off) = make_float4(ds[0], ds[1], ds[2], ds[3]);
          }
        }
      }
      {
        float acc[8][8];
        fzero(acc);
        fgemm(acc, n2, FLoadT{G, ldg, r0, N, n2}, FLoadT{W2, ldw2, j0, n1, n2}, stage, tx, ty);
        // Ds = (a1 sigma') (.) P: the same thread wrote these elements
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const int m = fmrow(i, ty);
#pragma unroll
          for (int jb = 0; jb < 2; ++jb) {
            float4* p = reinterpret_cast<float4*>(Ds + m * kFP + jb * 64 + 4 * tx);
            float4 v = *p;
            v.x *= acc[i][jb * 4 + 0];
            v.y *= acc[i][jb * 4 + 1];
            v.z *= acc[i][jb * 4 + 2];
            v.w *= acc[i][jb * 4 + 3];
            *p = v;
          }
        }
      }
      // (fgemm starts with a barrier: Ss and Ds are complete before they are read)

      // dW1[i0:i0+kFT, T] += X_R[:, i0:i0+kFT]^T D
      for (int i0 = 0; i0 < d; i0 += kFT) {
        float acc[8][8];
        fzero(acc);
        fgemm(acc, kFT, FLoadN{X, ldx, r0, N, i0, d}, FResident{Ds}, stage, tx, ty);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const int gi = i0 + fmrow(i, ty);
#pragma unroll
          for (int jb = 0; jb < 2; ++jb) {
            const int nb = jb * 64 + 4 * tx;
            float4* sp = reinterpret_cast<float4*>(g1s + (i64)gi * kFT + nb);
            float g[4] = {acc[i][jb * 4], acc[i][jb * 4 + 1], acc[i][jb * 4 + 2], acc[i][jb * 4 + 3]};
            if (!first) {
              const float4 o = *sp;
              g[0] = o.x + g[0];
              g[1] = o.y + g[1];
              g[2] = o.z + g[2];
              g[3] = o.w + g[3];
            }
            if (!last) {
              *sp = make_float4(g[0], g[1], g[2], g[3]);
            } else if (gi < d) {
#pragma unroll
              for (int jj = 0; jj < 4; ++jj) {
                if (j0 + nb + jj < n1) {
                  sq1 += (double)g[jj] * (double)g[jj];
                  W1[(i64)gi * ldw1 + j0 + nb + jj] -= lr * g[jj];
                }
              }
            }
          }
        }
      }

      // dW2[T, c0:c0+kFT] += S^T G_R[:, c0:c0+kFT]
      for (int c0 = 0; c0 < n2; c0 += kFT) {
        float acc[8][8];
        fzero(acc);
        fgemm(acc, kFT, FResident{Ss}, FLoadN{G, ldg, r0, N, c0, n2}, stage, tx, ty);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const int n = fmrow(i, ty);
#pragma unroll
          for (int jb = 0; jb < 2; ++jb) {
            const int cb = c0 + jb * 64 + 4 * tx;
            float4* sp = reinterpret_cast<float4*>(g2s + (i64)n * n2p + cb);
            float g[4] = {acc[i][jb * 4], acc[i][jb * 4 + 1], acc[i][jb * 4 + 2], acc[i][jb * 4 + 3]};
            if (!first) {
              const float4 o = *sp;
              g[0] = o.x + g[0];
              g[1] = o.y + g[1];
              g[2] = o.z + g[2];
              g[3] = o.w + g[3];
            }
            if (!last) {
              *sp = make_float4(g[0], g[1], g[2], g[3]);
            } else if (j0 + n < n1) {
#pragma unroll
              for (int jj = 0; jj < 4; ++jj) {
                if (cb + jj < n2) {
                  sq2 += (double)g[jj] * (double)g[jj];
                  W2[(i64)(j0 + n) * ldw2 + cb + jj] -= lr * g[jj];
                }
              }
            }
          }
        }
      }
    }

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
    __syncthreads();
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
    out[8] = sizeof(T) == 4 ? kFT : 0;  // float32 fast kernels: block tile, dynamic shared memory of step, forward
    out[9] = sizeof(T) == 4 ? kFStepSmem : 0;
    out[10] = sizeof(T) == 4 ? kFFwdSmem : 0;
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
