/* pyrgd/pyrgd.h -- pyrgd's C ABI: the wide first layer's kernels from C, C++ or any language with a C FFI.
 *
 * The shared library libpyrgd (installed with the Python package: pyrgd.native.get_library_dir(), link with
 * -lpyrgd; headers in pyrgd.native.get_include(); CMake: find_package(pyrgd CONFIG) and the target pyrgd::pyrgd,
 * with -Dpyrgd_DIR=$(python -c "import pyrgd; print(pyrgd.get_cmake_dir())")).
 *
 * Arrays: dense, row-major (C order), owned by the caller: X (N, d), W1 (d, n1), W2 (n1, n2), G and H (N, n2),
 * dW1 (d, n1), dW2 (n1, n2), dX (N, d); every dimension >= 1. `activation` takes the names of Python's
 * pyrgd.parse_activation: "relu", "leaky_relu(0.1)", "smooth_leaky_relu(0.2)", "softplus", "tanh", "erf",
 * "identity" (a slope in (0, 1); leaky_relu and smooth_leaky_relu default to 0.01 and 0.2). `a1` is the layer's
 * multiplier: H = a1 sigma(X W1) W2.
 *
 * Every function returns PYRGD_OK (0) on success, else an error code, with a message in pyrgd_last_error() (per
 * thread): PYRGD_ERR_ARGUMENT (a null pointer, a dimension < 1, a bad activation, a number not finite, outputs
 * overlapping inputs: checked before anything is written), PYRGD_ERR_MEMORY (a work buffer could not be
 * allocated), PYRGD_ERR_INTERNAL (anything else). No function keeps a pointer after it returns.
 *
 * The results are those of pyrgd.ops on the CPU backend, bit for bit (the same kernels and instruction-set choice,
 * PYRGD_CPU_ISA included), and the same bits for any number of threads (OpenMP; pyrgd_set_num_threads). Nothing of
 * size N x n1 is allocated. Thread-safe: calls from several threads may run at once on disjoint outputs.
 */
#ifndef PYRGD_PYRGD_H
#define PYRGD_PYRGD_H

#include <stdint.h>

#if defined(_WIN32)
#define PYRGD_API
#else
#define PYRGD_API __attribute__((visibility("default")))
#endif

#define PYRGD_OK 0
#define PYRGD_ERR_ARGUMENT 1
#define PYRGD_ERR_MEMORY 2
#define PYRGD_ERR_INTERNAL 3

#ifdef __cplusplus
extern "C" {
#endif

/* H = a1 sigma(X W1) W2 (N, n2), written; H must not overlap X, W1, W2. */
PYRGD_API int pyrgd_wide_forward_f64(const double* X, const double* W1, const double* W2, double* H, int64_t N,
                                     int64_t d, int64_t n1, int64_t n2, const char* activation, double a1);
PYRGD_API int pyrgd_wide_forward_f32(const float* X, const float* W1, const float* W2, float* H, int64_t N, int64_t d,
                                     int64_t n1, int64_t n2, const char* activation, float a1);

/* The gradients given G = dPhi/dH, nothing updated: dW1 = X^T D, dW2 = (a1 sigma(X W1))^T G with
 * D = a1 (G W2^T) (.) sigma'(X W1). dW1 and dW2 written; they must not overlap the inputs or each other. */
PYRGD_API int pyrgd_wide_grad_f64(const double* X, const double* W1, const double* W2, const double* G, double* dW1,
                                  double* dW2, int64_t N, int64_t d, int64_t n1, int64_t n2, const char* activation,
                                  double a1);
PYRGD_API int pyrgd_wide_grad_f32(const float* X, const float* W1, const float* W2, const float* G, float* dW1,
                                  float* dW2, int64_t N, int64_t d, int64_t n1, int64_t n2, const char* activation,
                                  float a1);
/* The same with the input gradient dX = D W1^T (N, d) besides (dX must not overlap anything either). */
PYRGD_API int pyrgd_wide_grad_dx_f64(const double* X, const double* W1, const double* W2, const double* G,
                                     double* dW1, double* dW2, double* dX, int64_t N, int64_t d, int64_t n1,
                                     int64_t n2, const char* activation, double a1);
PYRGD_API int pyrgd_wide_grad_dx_f32(const float* X, const float* W1, const float* W2, const float* G, float* dW1,
                                     float* dW2, float* dX, int64_t N, int64_t d, int64_t n1, int64_t n2,
                                     const char* activation, float a1);

/* One gradient-descent step given G: W1 -= lr dPhi/dW1, W2 -= lr dPhi/dW2 in place (the gradients at the weights
 * before the update). H_next, when not NULL, receives a1 sigma(X W1') W2' with the updated weights; it may be G
 * itself, and must not overlap X, W1, W2. W1 and W2 must not overlap each other, X or G. */
PYRGD_API int pyrgd_wide_step_f64(const double* X, double* W1, double* W2, const double* G, double lr,
                                  double* H_next, int64_t N, int64_t d, int64_t n1, int64_t n2,
                                  const char* activation, double a1);
PYRGD_API int pyrgd_wide_step_f32(const float* X, float* W1, float* W2, const float* G, float lr, float* H_next,
                                  int64_t N, int64_t d, int64_t n1, int64_t n2, const char* activation, float a1);

/* Threads of the kernels from now on (process-wide): n >= 1, or 0 for OpenMP's default. */
PYRGD_API int pyrgd_set_num_threads(int n);
PYRGD_API int pyrgd_get_num_threads(void);

/* The message of this thread's last error ("" when none yet); valid until this thread's next pyrgd call. */
PYRGD_API const char* pyrgd_last_error(void);
/* pyrgd's version, e.g. "0.1.0" (a static string). */
PYRGD_API const char* pyrgd_version(void);

#ifdef __cplusplus
}
#endif

#endif /* PYRGD_PYRGD_H */
