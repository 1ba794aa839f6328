// pyrgd CPU backend: the math policy of the activations (csrc/include/pyrgd/activations.h) for the fused kernels.
//
// Branch-free versions of exp and log1p written so that the compiler can vectorize a loop that calls them (the C
// library's expf/log1pf are opaque calls that keep the activation loops scalar). The same source is inlined into
// the kernels of every instruction set (csrc/cpu/tile_*.cpp): each value is a fixed sequence of IEEE operations,
// so the AVX2 and AVX-512 builds give the same bits. kFma selects fused multiply-adds (std::fma, one rounding;
// used where the CPU has FMA) or a multiply then an add (the generic build of a CPU without FMA).
//
// Contract (that of activations.h's math policy): exp_(x) for x <= 0 only (what the activations pass: -|x| or
// -x^2; positive x are outside it: right below 43 (float) / 511 (double), wrong above); log1p_(y) for y in [0, 1]
// only (the activations pass y = exp(-|x|)); NaN in, NaN out. tanh and erf come from the C library.
// Accuracy, measured over every float and over random doubles (tests/test_cpu_backend.py): exp_ within 2 ulp,
// log1p_ within 2 ulp; below the float/double underflow threshold exp_ returns a denormal or zero.
// No fast-math: the rounding trick below needs IEEE arithmetic without reassociation.
#ifndef PYRGD_CPU_VEC_MATH_H
#define PYRGD_CPU_VEC_MATH_H

#include <cmath>
#include <cstdint>
#include <cstring>

namespace pyrgd {
namespace cpu {

template <bool kFma>
struct VecMath {
  static inline float fma_(float a, float b, float c) {
    if constexpr (kFma) return __builtin_fmaf(a, b, c);
    return a * b + c;
  }
  static inline double fma_(double a, double b, double c) {
    if constexpr (kFma) return __builtin_fma(a, b, c);
    return a * b + c;
  }
  static inline std::int32_t bits(float x) {
    std::int32_t i;
    std::memcpy(&i, &x, sizeof i);
    return i;
  }
  static inline std::int64_t bits(double x) {
    std::int64_t i;
    std::memcpy(&i, &x, sizeof i);
    return i;
  }
  // 2^k for k in [-126, 127] (float) / [-1022, 1023] (double), built from its exponent field (unsigned arithmetic:
  // no undefined behaviour for the k of a NaN, whose result is NaN anyway).
  static inline float pow2f(std::int32_t k) {
    const std::uint32_t i = std::uint32_t(k + 127) << 23;
    float x;
    std::memcpy(&x, &i, sizeof x);
    return x;
  }
  static inline double pow2d(std::int64_t k) {
    const std::uint64_t i = std::uint64_t(k + 1023) << 52;
    double x;
    std::memcpy(&x, &i, sizeof x);
    return x;
  }

  // e^x = 2^n e^r with n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2] (ln 2 split in two parts so that
  // n * hi is exact); e^r by a polynomial p. n is rounded by adding and subtracting 1.5 * 2^23 (2^52), which also
  // leaves n as an integer k in the low bits of the sum (no float-to-int conversion, which is undefined for NaN).
  // 2^k is applied as 2^(k+64) (2^(k+512)), a normal number for every k of x in [-104, 0] ([-746, 0]), then 2^-64
  // (2^-512): p 2^(k+64) is exact, so the one rounding is that of the last product and results in the denormal
  // range come out correctly rounded from p. x is clamped below (e^x rounds to 0 there anyway). NaN in, NaN out
  // (through r and p).
  static inline float exp_(float x) {
    x = x < kExpMin ? kExpMin : x;  // e^-104 < the smallest denormal / 2
    const float magic = kExpMagic;  // 1.5 * 2^23
    const float t = fma_(x, kLog2e, magic);
    const float n = t - magic;
    float r = fma_(n, -kLn2Hi, x);  // ln 2 = 0.693145751953125 + 1.428606765330187e-06
    r = fma_(n, -kLn2Lo, r);
    // e^r = 1 + r (1 + r q(r)), q fitted for the smallest relative error on [-ln2/2, ln2/2] (3.7e-9)
    float q = fma_(kExpQ[0], r, kExpQ[1]);
    q = fma_(q, r, kExpQ[2]);
    q = fma_(q, r, kExpQ[3]);
    q = fma_(q, r, kExpQ[4]);
    const float p = fma_(r, fma_(r, q, 1.0f), 1.0f);
    const std::int32_t k = bits(t) - bits(magic);  // n as an integer, in [-151, 0] for x in [-104, 0]
    return p * pow2f(k + 64) * kTwoM64;  // 2^-64
  }
  // The constants of the float exp_ and log1p_ (also used by the interleaved vector loops of tile_impl.inc, which
  // apply the same operations in the same order): q of exp_ (highest degree first) and r of log1p_.
  static constexpr float kExpMin = -104.0f, kExpMagic = 12582912.0f, kLog2e = 1.44269504088896341f;
  static constexpr float kLn2Hi = 0.693145751953125f, kLn2Lo = 1.428606765330187e-06f;
  static constexpr float kTwoM64 = 5.42101086242752217e-20f;
  static constexpr float kExpQ[5] = {0.0013751407386735082f, 0.008368915878236294f, 0.04166953265666962f,
                                     0.166665181517601f, 0.49999988079071045f};
  static constexpr float kLog1pR[9] = {-0.003318607807159424f, 0.020202966406941414f, -0.05765631049871445f,
                                       0.10679091513156891f,   -0.15354052186012268f, 0.19694717228412628f,
                                       -0.24958397448062897f,  0.33330485224723816f,  -0.4999993145465851f};
  static inline double exp_(double x) {
    x = x < -746.0 ? -746.0 : x;
    const double magic = 6755399441055744.0;  // 1.5 * 2^52
    const double t = fma_(x, 1.4426950408889634074, magic);
    const double n = t - magic;
    double r = fma_(n, -6.93147180369123816490e-01, x);  // ln 2 = hi + lo, hi with 32 trailing zero bits
    r = fma_(n, -1.90821492927058770002e-10, r);
    // e^r by its Taylor series to r^13 (truncation below 5e-18 relative on [-ln2/2, ln2/2])
    double p = 1.0 / 6227020800.0;  // 1/13!
    p = fma_(p, r, 1.0 / 479001600.0);
    p = fma_(p, r, 1.0 / 39916800.0);
    p = fma_(p, r, 1.0 / 3628800.0);
    p = fma_(p, r, 1.0 / 362880.0);
    p = fma_(p, r, 1.0 / 40320.0);
    p = fma_(p, r, 1.0 / 5040.0);
    p = fma_(p, r, 1.0 / 720.0);
    p = fma_(p, r, 1.0 / 120.0);
    p = fma_(p, r, 1.0 / 24.0);
    p = fma_(p, r, 1.0 / 6.0);
    p = fma_(p, r, 0.5);
    p = fma_(r, fma_(r, p, 1.0), 1.0);
    const std::int64_t k = bits(t) - bits(magic);  // in [-1076, 0] for x in [-746, 0]
    return p * pow2d(k + 512) * 7.458340731200206743e-155;  // 2^-512
  }

  // double: log(1 + y) for y in [0, 1]: with f = y (y < 1/2) or f = (y - 1) / 2 (y >= 1/2, exact by Sterbenz's lemma) and
  // j = 0 or 1, log(1 + y) = j ln 2 + log(1 + f), f in [-1/4, 1/2). With s = f / (2 + f) (|s| <= 1/5),
  // log(1 + f) = 2 atanh(s) = f - s (f - R), R = s^2 (2/3 + 2 s^2/5 + 2 s^4/7 + ...), the series cut where its
  // remainder falls below the type's precision.
  // (j and the scale are selected as constants and applied by arithmetic, so that the vectorized loop evaluates
  // one straight-line formula rather than both sides of a condition.)
  static inline float log1p_(float y) {
    // float: log(1 + y) = y + y^2 r(y), r a polynomial of degree 8 fitted on [0, 1] (the polynomial's relative error
    // is 5.3e-9, 0.09 ulp), evaluated by Horner's rule: no division and no range reduction (the float version of
    // the reduction below cost a division and five more operations per value).
    float r = fma_(kLog1pR[0], y, kLog1pR[1]);
    for (int j = 2; j < 9; ++j) r = fma_(r, y, kLog1pR[j]);
    return fma_(y * r, y, y);
  }
  static inline double log1p_(double y) {
    const double j = y >= 0.5 ? 1.0 : 0.0;
    const double f = (y - j) * (j > 0.0 ? 0.5 : 1.0);
    const double s = f / (2.0 + f);
    const double z = s * s;
    double R = 2.0 / 25.0;
    R = fma_(R, z, 2.0 / 23.0);
    R = fma_(R, z, 2.0 / 21.0);
    R = fma_(R, z, 2.0 / 19.0);
    R = fma_(R, z, 2.0 / 17.0);
    R = fma_(R, z, 2.0 / 15.0);
    R = fma_(R, z, 2.0 / 13.0);
    R = fma_(R, z, 2.0 / 11.0);
    R = fma_(R, z, 2.0 / 9.0);
    R = fma_(R, z, 2.0 / 7.0);
    R = fma_(R, z, 2.0 / 5.0);
    R = fma_(R, z, 2.0 / 3.0);
    R = R * z;
    const double L = f - s * (f - R);
    return L + j * 0.693147180559945309417;
  }

  static inline float abs_(float x) { return std::fabs(x); }
  static inline double abs_(double x) { return std::fabs(x); }
  static inline float tanh_(float x) { return std::tanh(x); }
  static inline double tanh_(double x) { return std::tanh(x); }
  static inline float erf_(float x) { return std::erf(x); }
  static inline double erf_(double x) { return std::erf(x); }
};

}  // namespace cpu
}  // namespace pyrgd

#endif  // PYRGD_CPU_VEC_MATH_H
