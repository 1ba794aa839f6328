// pyrgd/kernels.h -- pyrgd's C++ API, all of it: include this one header (with csrc/include on the include path).
//
//   pyrgd/activations.h  every activation sigma, sigma' and its integer code (the X-macro PYRGD_FOR_EACH_ACTIVATION);
//                        header-only, shared with the CUDA kernels (NVRTC compiles it too)
//   pyrgd/runtime.h      the blocking constants, is_activation_code, threads, instruction set
//   pyrgd/wide.h         the wide first layer: forward, step, gram, activation
//   pyrgd/tail.h         the pyramidal tail (layers 2..L): loss and gradients from the wide layer's output
//   pyrgd/grad.h         the loss and every gradient of the network in one pass (network_grad), its workspace size
//                        and panel rows, sgd_update
//
// The CPU functions (namespace pyrgd::cpu) are compiled into the Python extension pyrgd._cpu (csrc/cpu/*.cpp: plain
// C++17 + OpenMP, no Python outside module.cpp, the binding that checks every argument before calling them). Their
// shared contract: dense row-major arrays of float or double owned by the caller and passed as raw pointers, whose
// sizes, alignment and overlaps the caller guarantees (nothing is checked but the activation code and a caller's
// workspace size); results bit-identical for any number of threads; errors as C++ exceptions, never thrown from
// inside a parallel region: std::invalid_argument for a bad activation code or workspace (before any output is
// written), std::length_error and std::bad_alloc from the work buffers. Each header states its functions' shapes,
// memory and errors.
#ifndef PYRGD_KERNELS_H
#define PYRGD_KERNELS_H

#include "pyrgd/activations.h"
#include "pyrgd/grad.h"
#include "pyrgd/runtime.h"
#include "pyrgd/tail.h"
#include "pyrgd/wide.h"
#include "pyrgd/wide_grad.h"

#endif  // PYRGD_KERNELS_H
