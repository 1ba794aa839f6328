// pyrgd CPU backend: the tile operations (tile_ops.h) for AVX2 + FMA (x86-64 with GCC). Only the functions of this
// file use those instructions (`#pragma GCC target`, after every header is included so that no inline function
// shared with other files is compiled for them); wide_kernels.cpp calls them only on a CPU that has AVX2 and FMA.
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
#pragma GCC target("avx2,fma")
namespace pyrgd {
namespace cpu {
namespace isa_avx2 {
#define PYRGD_TILE_ISA 1
#define PYRGD_TILE_FMA 1
#include "tile_impl.inc"
}  // namespace isa_avx2
}  // namespace cpu
}  // namespace pyrgd
#pragma GCC pop_options

namespace pyrgd {
namespace cpu {
const TileOps<float>* tile_ops_avx2_f32() { return &isa_avx2::kOps<float>; }
const TileOps<double>* tile_ops_avx2_f64() { return &isa_avx2::kOps<double>; }
}  // namespace cpu
}  // namespace pyrgd

#else  // another compiler or architecture: no AVX2 kernels in this build

namespace pyrgd {
namespace cpu {
const TileOps<float>* tile_ops_avx2_f32() { return nullptr; }
const TileOps<double>* tile_ops_avx2_f64() { return nullptr; }
}  // namespace cpu
}  // namespace pyrgd

#endif
