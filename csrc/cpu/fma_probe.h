// pyrgd CPU backend (internal): the floating-point roof of the machine, for `pyrgd info` and the benchmark reports
// (pyrgd._cpu.fma_peak_gflops). Defined in wide_kernels.cpp with the tile operations' probe (tile_ops.h).
#ifndef PYRGD_CPU_FMA_PROBE_H
#define PYRGD_CPU_FMA_PROBE_H

namespace pyrgd {
namespace cpu {

// GFLOP/s of independent FMA chains on registers (no memory traffic; the kernels of get_isa()), on
// get_num_threads() threads at once, for about `seconds` of wall time (the caller keeps it positive and small).
template <class T>
double fma_peak_gflops(double seconds);

extern template double fma_peak_gflops<float>(double);
extern template double fma_peak_gflops<double>(double);

}  // namespace cpu
}  // namespace pyrgd

#endif  // PYRGD_CPU_FMA_PROBE_H
