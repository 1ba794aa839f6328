// pyrgd/runtime.h -- what every CPU kernel of pyrgd shares: the blocking constants that fix the order of the sums,
// the activation codes, the number of threads and the instruction set.
//
// Part of pyrgd's C++ API (pyrgd/kernels.h includes it; the kernels are compiled into the extension pyrgd._cpu from
// csrc/cpu/*.cpp, plain C++17 + OpenMP with no Python in them). Everything here lives in namespace pyrgd::cpu.
// Errors are C++ exceptions (std::invalid_argument for an argument outside its documented range); no function here
// allocates memory.
#ifndef PYRGD_RUNTIME_H
#define PYRGD_RUNTIME_H

#include <cstddef>

namespace pyrgd {
namespace cpu {

// The blocking of the kernels. They fix the order of every sum (and so the bits of every result) together with the
// shapes; nothing else does (not the number of threads, not the instruction set but for the generic one).
constexpr std::size_t kBlock = 64;        // neurons per block (the streaming unit of the wide layer)
constexpr std::size_t kSuperBlocks = 16;  // blocks per group (1024 neurons): the second-level sums over neurons
constexpr std::size_t kRowChunk = 256;    // rows (samples) per first-level partial sum over samples

// True when `code` is the code of an activation of pyrgd/activations.h (PYRGD_FOR_EACH_ACTIVATION). Never throws.
bool is_activation_code(int code);

// Threads the kernels use: the value set by set_num_threads, else OpenMP's default (omp_get_max_threads()); 1
// without OpenMP, and 1 in the child of a fork() (OpenMP's threads do not survive it). Never throws.
int get_num_threads();
// n >= 1: use n threads from now on; n == 0: back to OpenMP's default; n < 0: std::invalid_argument. Process-wide
// (unlike omp_set_num_threads, it does not depend on the calling thread and does not change other libraries'
// OpenMP settings). Thread-safe.
void set_num_threads(int n);
// True when the kernels were compiled with OpenMP.
bool openmp_enabled();

// Instruction set of the kernels: 0 generic (the platform's baseline), 1 AVX2+FMA, 2 AVX-512.
// best_isa(): the best one this build and this CPU support. get_isa(): the one in use: best_isa(), or the one set
// by set_isa, or at the first call the environment variable PYRGD_CPU_ISA (generic, avx2, avx512; capped at
// best_isa()). set_isa(i): i = -1 back to the best; an i outside [0, best_isa()] is std::invalid_argument.
// Process-wide and thread-safe. isa_name(i): "generic", "avx2", "avx512", or "unknown" for any other i (a static
// string, never freed).
int best_isa();
int get_isa();
void set_isa(int isa);
const char* isa_name(int isa);

}  // namespace cpu
}  // namespace pyrgd

#endif  // PYRGD_RUNTIME_H
