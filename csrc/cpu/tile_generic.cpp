// pyrgd CPU backend: the tile operations (tile_ops.h) for the platform's baseline instruction set, the fallback on
// every CPU: 16-byte vectors with GCC and Clang (SSE2 on x86-64, NEON on aarch64), scalar code elsewhere. See
// tile_impl.inc.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <pyrgd/activations.h>

#include "tile_ops.h"
#include "vec_math.h"

#if defined(__FMA__) || defined(__aarch64__) || defined(__ARM_FEATURE_FMA)
#define PYRGD_TILE_FMA 1  // the baseline itself has fused multiply-add instructions
#else
#define PYRGD_TILE_FMA 0
#endif

namespace pyrgd {
namespace cpu {
namespace isa_generic {
#define PYRGD_TILE_ISA 0
#include "tile_impl.inc"
}  // namespace isa_generic

const TileOps<float>* tile_ops_generic_f32() { return &isa_generic::kOps<float>; }
const TileOps<double>* tile_ops_generic_f64() { return &isa_generic::kOps<double>; }

}  // namespace cpu
}  // namespace pyrgd
