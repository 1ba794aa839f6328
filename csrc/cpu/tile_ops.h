// pyrgd CPU backend: the tile operations the fused kernels are built from, compiled once per instruction set.
//
// csrc/cpu/tile_impl.inc holds the code; tile_generic.cpp, tile_avx2.cpp and tile_avx512.cpp compile it for the
// platform's baseline, for AVX2+FMA and for AVX-512 (GCC's `#pragma GCC target`, each in its own namespace, so no
// instruction beyond the baseline is ever used outside the functions of that file). wide_kernels.cpp picks the best
// set the CPU supports at run time (select_isa); nothing is compiled with -march, so the module runs on any x86-64.
//
// Summation order, the same in every instruction set: every element of a product C = A B is one sum over
// k = 0, 1, ..., K-1 in increasing order, started from zero, one fused multiply-add per term (the register tile and
// the vector width decide only which elements are computed side by side), then stored into C or added to C. So the
// AVX2 and AVX-512 kernels give the same bits; the generic kernels too where the compiler has FMA for the baseline
// (aarch64), and a multiply then an add otherwise (x86-64 without AVX2).
#ifndef PYRGD_CPU_TILE_OPS_H
#define PYRGD_CPU_TILE_OPS_H

#include <cstddef>

namespace pyrgd {
namespace cpu {

enum class Isa : int { generic = 0, avx2 = 1, avx512 = 2 };

// The `flags` of the products: kAccumulate (C += A B instead of C = A B; gemm_nn and gemm_tn only, where a bool
// `accumulate` converts to it), and hints that change no value: kPrefetchC asks for the rows of C one row tile ahead
// (an operand that comes from memory: a gradient block accumulated into, a panel block written), kPrefetchM the same
// for the epilogue's second array (D, M or S).
constexpr int kAccumulate = 1, kPrefetchC = 2, kPrefetchM = 4;

template <class T>
struct TileOps {
  Isa isa;
  const char* name;
  int tile_rows, tile_cols;  // register tile of gemm for this type (rows x columns of C)
  // C (m x n, row stride ldc) = A B, or C += A B when flags has kAccumulate; B (K x n) at B[k * ldb + j].
  // gemm_nn: A (m x K) at A[i * lda + k].  gemm_tn: C = A^T B with A stored K x m, element (k, i) at A[k * lda + i].
  // Columns j >= n of B and C are never read nor written.
  void (*gemm_nn)(std::size_t m, std::size_t n, std::size_t K, const T* A, std::size_t lda, const T* B,
                  std::size_t ldb, T* C, std::size_t ldc, int flags);
  void (*gemm_tn)(std::size_t m, std::size_t n, std::size_t K, const T* A, std::size_t lda, const T* B,
                  std::size_t ldb, T* C, std::size_t ldc, int flags);
  // gemm_nn (C = A B, not accumulated) followed by the activation, applied to each block of rows of C as soon as it
  // is complete (while it is in L1) over all ldc elements of each row: PD == nullptr: C = a1 sigma(C), as act_value;
  // else C = a1 sigma(C) and PD = (a1 PD) sigma'(C), as act_grad, PD with C's row stride. The same bits as gemm_nn
  // then act_value / act_grad over the m rows.
  void (*gemm_nn_act)(std::size_t m, std::size_t n, std::size_t K, const T* A, std::size_t lda, const T* B,
                      std::size_t ldb, T* C, std::size_t ldc, int act, T gamma, T a1, T* PD, int flags);
  // gemm_nn_act with D only written: C = a1 sigma(C), D = a1 sigma'(C) (D with C's row stride); the bits of
  // gemm_nn_act with D filled with ones.
  void (*gemm_nn_act_both)(std::size_t m, std::size_t n, std::size_t K, const T* A, std::size_t lda, const T* B,
                           std::size_t ldb, T* C, std::size_t ldc, int act, T gamma, T a1, T* D, int flags);
  // C = (A B) (.) M elementwise (M with C's row stride, over all ldc elements of each row), each block of rows
  // multiplied while it is in L1; the bits of gemm_nn then the multiplication.
  void (*gemm_nn_mul)(std::size_t m, std::size_t n, std::size_t K, const T* A, std::size_t lda, const T* B,
                      std::size_t ldb, T* C, std::size_t ldc, const T* M, int flags);
  // C = (A B) (.) (a1 relu'(Z)) with relu'(Z) read off S = a1 relu(Z) (S != 0: a1 1, else a1 0; S with C's row
  // stride): the bits of gemm_nn_mul with M = a1 relu'(Z) wherever a1 relu(z) does not underflow to zero for z > 0.
  // The epilogue products take the prefetch hints of `flags` (kAccumulate is ignored).
  void (*gemm_nn_mul_relu)(std::size_t m, std::size_t n, std::size_t K, const T* A, std::size_t lda, const T* B,
                           std::size_t ldb, T* C, std::size_t ldc, const T* S, T a1, int flags);
  // dst[e] += src[e] for e < count (dst and src do not overlap).
  void (*add_into)(std::size_t count, T* dst, const T* src);
  // Elementwise over `count` elements, activation `act` (an activations.h code, checked by the caller):
  // act_grad: ZS holds Z, PD holds P on entry; on exit ZS = a1 sigma(Z) and PD = (a1 P) sigma'(Z).
  // act_value: ZS = a1 sigma(Z).
  void (*act_grad)(int act, std::size_t count, T* ZS, T* PD, T gamma, T a1);
  void (*act_value)(int act, std::size_t count, T* ZS, T gamma, T a1);
  // Independent FMA chains on registers for `iters` rounds; returns the flops done (the peak probe).
  double (*fma_probe)(std::size_t iters);
};

// The operations of one instruction set, or nullptr where this build has none (the CPU's support is checked by the
// caller, select_isa in wide_kernels.cpp).
const TileOps<float>* tile_ops_generic_f32();
const TileOps<double>* tile_ops_generic_f64();
const TileOps<float>* tile_ops_avx2_f32();
const TileOps<double>* tile_ops_avx2_f64();
const TileOps<float>* tile_ops_avx512_f32();
const TileOps<double>* tile_ops_avx512_f64();

// The operations of the instruction set in use (get_isa() of pyrgd/runtime.h); defined in wide_kernels.cpp.
template <class T>
const TileOps<T>& active_tile_ops();

}  // namespace cpu
}  // namespace pyrgd

#endif  // PYRGD_CPU_TILE_OPS_H
