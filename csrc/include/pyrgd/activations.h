// pyrgd/activations.h -- the one definition of every activation sigma and its derivative sigma'.
//
// Shared by the C++ CPU backend (g++), by nvcc, and by NVRTC (CuPy RawModule compiles csrc/cuda/*.cu at run time
// with this folder on its include path). It therefore includes no standard header under NVRTC and calls only the
// C math functions that exist both in libm and in CUDA device code (expf/exp, log1pf/log1p, tanhf/tanh, erff/erf).
//
// Each activation is a stateless struct with
//     static T f(T x, T gamma)                       sigma(x)
//     static T df(T x, T gamma)                      sigma'(x)
//     static void both(T x, T gamma, T& s, T& ds)    both at once (shares exp() for the smooth ones)
// gamma is the slope parameter of leaky_relu and smooth_leaky_relu and is ignored by the others.
//
// The table of the activations is PYRGD_FOR_EACH_ACTIVATION at the end of this file: one line M(Struct, code) per
// activation, the struct's `code` and `name` (the name pyrgd uses in Python) beside it; every C++ dispatch on the
// code (csrc/cpu: is_activation_code, the tile operations' switches) and the extension's table pyrgd._cpu.ACTIVATIONS
// ({name: code}) are generated from it, and the compiler checks that each struct's `code` is its line's and that the
// codes are 0 .. kCount - 1. The Python table (pyrgd/activations.py, ACTIVATION_TABLE) repeats it, since the package
// must import without the extension: tests/test_activation_table.py checks that the two agree, name by name and code
// by code. To add an activation: its struct here, its line in the list, its line in ACTIVATION_TABLE, its NumPy
// formula in pyrgd/activations.py.
//
// The elementary functions come from a math policy M, a second template parameter that defaults to math::Libm (the
// C math library, on the host and in CUDA device code). A backend may pass its own policy with the same contract,
// e.g. the CPU backend's branch-free, auto-vectorizable float/double versions (csrc/cpu/vec_math.h):
//     M::exp_(x)     e^x for x <= 0 (every caller here passes -|x| or -x^2)
//     M::log1p_(y)   log(1 + y) for y in [0, 1] (every caller here passes y = exp(-|x|))
//     M::abs_, M::tanh_, M::erf_
// The formulas below are the one definition of every activation whatever the policy.
//
// Numerically safe forms (docs/theory.md section 3): softplus(x) = max(x, 0) + log1p(exp(-|x|)) and
// logistic(x) = 1 / (1 + exp(-x)) or exp(x) / (1 + exp(x)) by the sign of x never overflow, in float32 included.
// ReLU uses sigma'(0) = 0 (the convention of Nguyen, Mondelli, Montufar 2021).
#ifndef PYRGD_ACTIVATIONS_H
#define PYRGD_ACTIVATIONS_H

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define PYRGD_HD __host__ __device__ __forceinline__
#else
#include <math.h>
#define PYRGD_HD inline
#endif

namespace pyrgd {
namespace math {
// The default math policy: the C math library (libm on the host, CUDA's device functions on the GPU).
struct Libm {
  PYRGD_HD static float exp_(float x) { return expf(x); }
  PYRGD_HD static double exp_(double x) { return exp(x); }
  PYRGD_HD static float log1p_(float x) { return log1pf(x); }
  PYRGD_HD static double log1p_(double x) { return log1p(x); }
  PYRGD_HD static float tanh_(float x) { return tanhf(x); }
  PYRGD_HD static double tanh_(double x) { return tanh(x); }
  PYRGD_HD static float erf_(float x) { return erff(x); }
  PYRGD_HD static double erf_(double x) { return erf(x); }
  PYRGD_HD static float abs_(float x) { return fabsf(x); }
  PYRGD_HD static double abs_(double x) { return fabs(x); }
};

// logistic(x) = 1 / (1 + exp(-x)), without overflow for any x.
template <class T, class M = Libm>
PYRGD_HD T logistic(T x) {
  const T e = M::exp_(-M::abs_(x));  // in (0, 1]
  const T r = T(1) / (T(1) + e);
  return x >= T(0) ? r : e * r;
}
// softplus(x) = log(1 + exp(x)), without overflow for any x.
template <class T, class M = Libm>
PYRGD_HD T softplus(T x) {
  return (x > T(0) ? x : T(0)) + M::log1p_(M::exp_(-M::abs_(x)));
}
}  // namespace math

namespace act {

struct Relu {
  static constexpr int code = 0;
  static constexpr const char* name = "relu";
  // x != x: NaN passes through as in NumPy's maximum(x, 0) (x > 0 alone would map it to 0); the same bits otherwise
  template <class T, class M = math::Libm> PYRGD_HD static T f(T x, T) { return (x > T(0) || x != x) ? x : T(0); }
  template <class T, class M = math::Libm> PYRGD_HD static T df(T x, T) { return x > T(0) ? T(1) : T(0); }
  template <class T, class M = math::Libm> PYRGD_HD static void both(T x, T g, T& s, T& ds) {
    s = f<T, M>(x, g);
    ds = df<T, M>(x, g);
  }
};

struct LeakyRelu {
  static constexpr int code = 1;
  static constexpr const char* name = "leaky_relu";
  template <class T, class M = math::Libm> PYRGD_HD static T f(T x, T g) { return x > T(0) ? x : g * x; }
  template <class T, class M = math::Libm> PYRGD_HD static T df(T x, T g) { return x > T(0) ? T(1) : g; }
  template <class T, class M = math::Libm> PYRGD_HD static void both(T x, T g, T& s, T& ds) {
    s = f<T, M>(x, g);
    ds = df<T, M>(x, g);
  }
};

// sigma(x) = gamma x + (1 - gamma)(softplus(x) - ln 2);  sigma'(x) = gamma + (1 - gamma) logistic(x).
struct SmoothLeakyRelu {
  static constexpr int code = 2;
  static constexpr const char* name = "smooth_leaky_relu";
  template <class T, class M = math::Libm> PYRGD_HD static T f(T x, T g) {
    return g * x + (T(1) - g) * (math::softplus<T, M>(x) - T(0.693147180559945309417232121458176568));
  }
  template <class T, class M = math::Libm> PYRGD_HD static T df(T x, T g) {
    return g + (T(1) - g) * math::logistic<T, M>(x);
  }
  template <class T, class M = math::Libm> PYRGD_HD static void both(T x, T g, T& s, T& ds) {
    const T e = M::exp_(-M::abs_(x));
    const T pos = x > T(0) ? x : T(0);
    const T r = T(1) / (T(1) + e);
    s = g * x + (T(1) - g) * (pos + M::log1p_(e) - T(0.693147180559945309417232121458176568));
    ds = g + (T(1) - g) * (x >= T(0) ? r : e * r);
  }
};

struct Softplus {
  static constexpr int code = 3;
  static constexpr const char* name = "softplus";
  template <class T, class M = math::Libm> PYRGD_HD static T f(T x, T) { return math::softplus<T, M>(x); }
  template <class T, class M = math::Libm> PYRGD_HD static T df(T x, T) { return math::logistic<T, M>(x); }
  template <class T, class M = math::Libm> PYRGD_HD static void both(T x, T, T& s, T& ds) {
    const T e = M::exp_(-M::abs_(x));
    const T r = T(1) / (T(1) + e);
    s = (x > T(0) ? x : T(0)) + M::log1p_(e);
    ds = x >= T(0) ? r : e * r;
  }
};

struct Tanh {
  static constexpr int code = 4;
  static constexpr const char* name = "tanh";
  template <class T, class M = math::Libm> PYRGD_HD static T f(T x, T) { return M::tanh_(x); }
  template <class T, class M = math::Libm> PYRGD_HD static T df(T x, T) {
    const T t = M::tanh_(x);
    return T(1) - t * t;
  }
  template <class T, class M = math::Libm> PYRGD_HD static void both(T x, T, T& s, T& ds) {
    s = M::tanh_(x);
    ds = T(1) - s * s;
  }
};

// sigma'(x) = 2 / sqrt(pi) exp(-x^2)
struct Erf {
  static constexpr int code = 5;
  static constexpr const char* name = "erf";
  template <class T, class M = math::Libm> PYRGD_HD static T f(T x, T) { return M::erf_(x); }
  template <class T, class M = math::Libm> PYRGD_HD static T df(T x, T) {
    return T(1.12837916709551257389615890312154517) * M::exp_(-x * x);
  }
  template <class T, class M = math::Libm> PYRGD_HD static void both(T x, T g, T& s, T& ds) {
    s = f<T, M>(x, g);
    ds = df<T, M>(x, g);
  }
};

struct Identity {
  static constexpr int code = 6;
  static constexpr const char* name = "identity";
  template <class T, class M = math::Libm> PYRGD_HD static T f(T x, T) { return x; }
  template <class T, class M = math::Libm> PYRGD_HD static T df(T, T) { return T(1); }
  template <class T, class M = math::Libm> PYRGD_HD static void both(T x, T, T& s, T& ds) {
    s = x;
    ds = T(1);
  }
};

}  // namespace act
}  // namespace pyrgd

// The table of the activations: PYRGD_FOR_EACH_ACTIVATION(M) expands M(Struct, code) once per activation, Struct
// the struct of pyrgd::act (its Python name is Struct::name) and code its integer code. The one list every dispatch
// on the code is generated from.
#define PYRGD_FOR_EACH_ACTIVATION(M) \
  M(Relu, 0)                         \
  M(LeakyRelu, 1)                    \
  M(SmoothLeakyRelu, 2)              \
  M(Softplus, 3)                     \
  M(Tanh, 4)                         \
  M(Erf, 5)                          \
  M(Identity, 6)

namespace pyrgd {
namespace act {
#define PYRGD_ACT_COUNT_(S, c) +1
#define PYRGD_ACT_BIT_(S, c) | (1u << (c))
#define PYRGD_ACT_CHECK_(S, c) \
  static_assert(S::code == (c), "pyrgd::act::" #S "::code differs from its line in PYRGD_FOR_EACH_ACTIVATION");
// The number of activations; their codes are 0 .. kCount - 1, each once.
constexpr int kCount = 0 PYRGD_FOR_EACH_ACTIVATION(PYRGD_ACT_COUNT_);
PYRGD_FOR_EACH_ACTIVATION(PYRGD_ACT_CHECK_)
static_assert(kCount < 32 && (0u PYRGD_FOR_EACH_ACTIVATION(PYRGD_ACT_BIT_)) == (1u << kCount) - 1u,
              "the codes of PYRGD_FOR_EACH_ACTIVATION must be 0 .. kCount - 1, each once");
#undef PYRGD_ACT_COUNT_
#undef PYRGD_ACT_BIT_
#undef PYRGD_ACT_CHECK_
}  // namespace act
}  // namespace pyrgd

#endif  // PYRGD_ACTIVATIONS_H
