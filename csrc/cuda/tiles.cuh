// tiles.cuh -- tile sizes and the shared-memory tile helpers of pyrgd's CUDA kernels (wide_layer.cu).
//
// Compiled at run time by NVRTC (CuPy RawModule) and checked by `python -m pyrgd.nvrtc_check`; it includes no
// system header. Every kernel runs 256 threads, seen as a 16 x 16 grid: thread (ty, tx) = (tid / 16, tid % 16).
// A thread owns the outputs (ty + 16 i, tx + 16 j) of an output tile ("strided micro-tile"), so that the 16 threads
// of a half-warp read 16 consecutive shared-memory words of the B operand and one broadcast word of the A operand.
//
// Operands of every product live in shared memory in "k-major" form:
//     A[k * LDA + m]   (m: output row)      B[k * LDB + n]   (n: output column)
// and a product adds acc[i][j] += sum_k A[k][ty + 16 i] * B[k][tx + 16 j] in increasing k: a fixed order.
#ifndef PYRGD_CUDA_TILES_CUH
#define PYRGD_CUDA_TILES_CUH

namespace pyrgd {
namespace cuda {

typedef long long i64;

constexpr int kThreads = 256;  // threads of every block (16 x 16)
constexpr int kMinBlocks = 2;  // __launch_bounds__ minimum resident blocks per SM: caps registers at 128/thread
constexpr int kBK = 16;        // k-chunk of every shared-memory product
constexpr int kFlushTiles = 32;  // forward: neuron tiles summed into a partial before it joins the total

// Tile sizes, all multiples of 16. The host reads them back through tile_config_kernel<T> (wide_layer.cu), so
// they may be changed here alone. Static shared memory of each kernel must stay under 48 KB (see wide_layer.cu).
template <class T>
struct Tiles;

template <>
struct Tiles<float> {
  static constexpr int FM = 64;  // forward: rows of H per block
  static constexpr int FN = 64;  // forward: columns of H per block
  static constexpr int FT = 64;  // forward: neurons per inner tile
  static constexpr int SM = 64;  // step and features: rows per inner tile
  static constexpr int ST = 64;  // step and features: neurons per tile (the tile a step block owns)
  static constexpr int SC = 64;  // step: chunk of d (for dW1) or of n2 (for dW2) held in registers
};

template <>
struct Tiles<double> {
  static constexpr int FM = 64;
  static constexpr int FN = 64;
  static constexpr int FT = 32;
  static constexpr int SM = 32;
  static constexpr int ST = 32;
  static constexpr int SC = 64;
};

__host__ __device__ constexpr int cmax(int a, int b) { return a > b ? a : b; }

// ceil(a / b) for a >= 0, b > 0, without overflow.
__device__ __forceinline__ int ceil_div(int a, int b) { return a / b + (a % b != 0 ? 1 : 0); }

// dst[r * LD + c] = src[(r0 + r) * ld + c0 + c] for r < ROWS, c < COLS; 0 where r0 + r >= rlim or c0 + c >= clim.
// Consecutive threads read consecutive c (coalesced along the source rows).
template <class T, int ROWS, int COLS, int LD>
__device__ __forceinline__ void load_tile(T* dst, const T* src, i64 ld, int r0, int rlim, int c0, int clim) {
  static_assert(LD >= COLS, "row pitch too small");
  static_assert((ROWS * COLS) % kThreads == 0, "tile not a multiple of the block");
#pragma unroll
  for (int q = 0; q < (ROWS * COLS) / kThreads; ++q) {
    const int e = q * kThreads + (int)threadIdx.x;
    const int r = e / COLS, c = e % COLS;
    const int gr = r0 + r, gc = c0 + c;
    T v = T(0);
    if (gr < rlim && gc < clim) v = src[(i64)gr * ld + gc];
    dst[r * LD + c] = v;
  }
}

// Transposed load: dst[c * LD + r] = src[(r0 + r) * ld + c0 + c] for r < ROWS, c < COLS; 0 outside the limits.
// Consecutive threads read consecutive c (coalesced along the source rows).
template <class T, int ROWS, int COLS, int LD>
__device__ __forceinline__ void load_tile_t(T* dst, const T* src, i64 ld, int r0, int rlim, int c0, int clim) {
  static_assert(LD >= ROWS, "row pitch too small");
  static_assert((ROWS * COLS) % kThreads == 0, "tile not a multiple of the block");
#pragma unroll
  for (int q = 0; q < (ROWS * COLS) / kThreads; ++q) {
    const int e = q * kThreads + (int)threadIdx.x;
    const int r = e / COLS, c = e % COLS;
    const int gr = r0 + r, gc = c0 + c;
    T v = T(0);
    if (gr < rlim && gc < clim) v = src[(i64)gr * ld + gc];
    dst[c * LD + r] = v;
  }
}

// acc[i][j] += sum_{k < K} A[k * LDA + ty + 16 i] * B[k * LDB + tx + 16 j], k increasing.
template <class T, int MI, int NJ, int K, int LDA, int LDB>
__device__ __forceinline__ void mma_tile(T (&acc)[MI][NJ], const T* A, const T* B, int tx, int ty) {
#pragma unroll 4
  for (int k = 0; k < K; ++k) {
    T a[MI], b[NJ];
#pragma unroll
    for (int i = 0; i < MI; ++i) a[i] = A[k * LDA + ty + 16 * i];
#pragma unroll
    for (int j = 0; j < NJ; ++j) b[j] = B[k * LDB + tx + 16 * j];
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
      for (int j = 0; j < NJ; ++j) acc[i][j] += a[i] * b[j];
  }
}

template <class T, int MI, int NJ>
__device__ __forceinline__ void zero_tile(T (&acc)[MI][NJ]) {
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < NJ; ++j) acc[i][j] = T(0);
}

}  // namespace cuda
}  // namespace pyrgd

#endif  // PYRGD_CUDA_TILES_CUH
