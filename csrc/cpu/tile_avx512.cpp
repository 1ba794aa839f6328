// pyrgd CPU backend: the tile operations (tile_ops.h) for AVX-512 (F, with AVX2 and FMA; x86-64 with GCC). Only the
// functions of this file use those instructions (`#pragma GCC target`, after every header is included so that no
// inline function shared with other files is compiled for them); wide_kernels.cpp calls them only on a CPU that has
// AVX-512F, AVX2 and FMA (and an OS that saves the AVX-512 registers: __builtin_cpu_supports checks both).
#include "tile_ops.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#include <immintrin.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <pyrgd/activations.h>

#include "vec_math.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
namespace pyrgd {
namespace cpu {
namespace isa_avx512 {
#define PYRGD_TILE_ISA 2
#define PYRGD_TILE_FMA 1
#include "tile_impl.inc"
}  // namespace isa_avx512
}  // namespace cpu
}  // namespace pyrgd
#pragma GCC pop_options

namespace pyrgd {
namespace cpu {
const TileOps<float>* tile_ops_avx512_f32() { return &isa_avx512::kOps<float>; }
const TileOps<double>* tile_ops_avx512_f64() { return &isa_avx512::kOps<double>; }
}  // namespace cpu
}  // namespace pyrgd

#else  // another compiler or architecture: no AVX-512 kernels in this build

namespace pyrgd {
namespace cpu {
const TileOps<float>* tile_ops_avx512_f32() { return nullptr; }
const TileOps<double>* tile_ops_avx512_f64() { return nullptr; }
}  // namespace cpu
}  // namespace pyrgd

#endif
