// pyrgd's C ABI (pyrgd/pyrgd.h) over the C++ API (pyrgd/kernels.h): argument checks, the activation's name parsed as
// Python's pyrgd.parse_activation does, C++ exceptions turned into error codes and a per-thread message. Linked into
// the shared library libpyrgd with the kernels' objects (setup.py), not into the Python extension.
#include <pyrgd/pyrgd.h>
#include <pyrgd/kernels.h>

#include <cctype>
#include <cmath>
#include <locale>
#include <sstream>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

#ifndef PYRGD_VERSION
#define PYRGD_VERSION "unknown"
#endif

namespace {

thread_local std::string g_error;

struct ArgError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

[[noreturn]] void fail(const std::string& what) { throw ArgError(what); }

// (code, gamma) of an activation spec: "name" or "name(slope)", any case, spaces allowed around the parts.
std::pair<int, double> parse_activation(const char* spec) {
  if (!spec) fail("activation: expected a name such as \"relu\" or \"leaky_relu(0.1)\", got NULL");
  std::string s;
  for (const char* p = spec; *p; ++p) s += char(std::tolower(static_cast<unsigned char>(*p)));
  auto trim = [](std::string t) {
    const auto b = t.find_first_not_of(" \t\n\r"), e = t.find_last_not_of(" \t\n\r");
    return b == std::string::npos ? std::string() : t.substr(b, e - b + 1);
  };
  std::string name = trim(s), arg;
  bool has_arg = false;
  const auto open = name.find('(');
  if (open != std::string::npos) {
    if (name.back() != ')') fail("activation: unknown activation \"" + std::string(spec) + "\"");
    arg = trim(name.substr(open + 1, name.size() - open - 2));
    name = trim(name.substr(0, open));
    has_arg = !arg.empty();
  }
  int code = -1;
#define PYRGD_CAPI_MATCH_(S, c) \
  if (name == pyrgd::act::S::name) code = (c);
  PYRGD_FOR_EACH_ACTIVATION(PYRGD_CAPI_MATCH_)
#undef PYRGD_CAPI_MATCH_
  if (code < 0 || name.find_first_not_of("abcdefghijklmnopqrstuvwxyz_") != std::string::npos)
    fail("activation: unknown activation \"" + std::string(spec) +
         "\"; expected one of relu, leaky_relu, smooth_leaky_relu, softplus, tanh, erf, identity");
  const bool sloped = name == "leaky_relu" || name == "smooth_leaky_relu";
  double gamma = name == "leaky_relu" ? 0.01 : name == "smooth_leaky_relu" ? 0.2 : 0.0;
  if (has_arg) {
    if (!sloped) fail("activation: " + name + " takes no slope, got \"" + std::string(spec) + "\"");
    // read in the "C" locale, whatever the caller's (strtod would take "0,5" and refuse "0.5" under de_DE), and
    // only decimal notation, as Python's float() of the slope
    std::istringstream in(arg);
    in.imbue(std::locale::classic());
    in >> gamma;
    if (in.fail() || in.peek() != std::char_traits<char>::eof() || arg.find_first_of("xX") != std::string::npos)
      fail("activation: slope in \"" + std::string(spec) + "\" is not a number");
    if (!(gamma > 0.0 && gamma < 1.0))
      fail("activation: slope gamma of " + name + " must lie in (0, 1), got " + arg);
  }
  return {code, gamma};
}

// The slope as the kernels of dtype T use it: it must stay in (0, 1) there (leaky_relu(1e-50) is relu in float).
template <class T>
T slope_in_dtype(const std::pair<int, double>& act, const char* spec) {
  const T g = T(act.second);
  if (act.second != 0.0 && !(g > T(0) && g < T(1)))
    fail("activation: the slope of \"" + std::string(spec) + "\" is " + std::to_string(double(g)) +
         " in float, outside (0, 1); use a slope float holds, or the _f64 functions");
  return g;
}

void check_dims(int64_t N, int64_t d, int64_t n1, int64_t n2) {
  const std::pair<const char*, int64_t> dims[] = {{"N", N}, {"d", d}, {"n1", n1}, {"n2", n2}};
  for (const auto& p : dims)
    if (p.second < 1) fail(std::string(p.first) + ": expected a dimension >= 1, got " + std::to_string(p.second));
  // every array's element count must fit in size_t and ptrdiff_t (the kernels index with both)
  const unsigned long long lim = static_cast<unsigned long long>(PTRDIFF_MAX) / 16;
  const std::pair<int64_t, int64_t> prods[] = {{N, d}, {d, n1}, {n1, n2}, {N, n2}};
  for (const auto& p : prods)
    if (static_cast<unsigned long long>(p.first) > lim / static_cast<unsigned long long>(p.second))
      fail("N, d, n1, n2: the arrays are too large for this platform");
}

void check_finite(const char* name, double v) {
  if (!std::isfinite(v)) fail(std::string(name) + ": expected a finite number, got " + std::to_string(v));
}

// A pointer argument and its byte range, for the null and overlap checks.
struct Arr {
  const char* name;
  const void* p;
  std::size_t bytes;
};

void check_not_null(const Arr& a) {
  if (!a.p) fail(std::string(a.name) + ": expected an array, got NULL");
}

bool overlap(const Arr& a, const Arr& b) {
  const auto pa = reinterpret_cast<std::uintptr_t>(a.p), pb = reinterpret_cast<std::uintptr_t>(b.p);
  return pa < pb + b.bytes && pb < pa + a.bytes;
}

void check_disjoint(const Arr& a, const Arr& b) {
  if (a.p && b.p && overlap(a, b)) fail(std::string(a.name) + ", " + b.name + ": must not share memory");
}

template <class F>
int guarded(F&& f) {
  try {
    f();
    return PYRGD_OK;
  } catch (const ArgError& e) {
    g_error = e.what();
    return PYRGD_ERR_ARGUMENT;
  } catch (const std::invalid_argument& e) {
    g_error = e.what();
    return PYRGD_ERR_ARGUMENT;
  } catch (const std::bad_alloc&) {
    g_error = "out of memory (a work buffer of the kernels could not be allocated)";
    return PYRGD_ERR_MEMORY;
  } catch (const std::length_error& e) {
    g_error = e.what();
    return PYRGD_ERR_MEMORY;
  } catch (const std::exception& e) {
    g_error = e.what();
    return PYRGD_ERR_INTERNAL;
  } catch (...) {
    g_error = "unknown error";
    return PYRGD_ERR_INTERNAL;
  }
}

template <class T>
std::size_t nbytes(int64_t r, int64_t c) {
  return std::size_t(r) * std::size_t(c) * sizeof(T);
}

template <class T>
int forward(const T* X, const T* W1, const T* W2, T* H, int64_t N, int64_t d, int64_t n1, int64_t n2,
            const char* activation, T a1) {
  return guarded([&] {
    check_dims(N, d, n1, n2);
    const Arr x{"X", X, nbytes<T>(N, d)}, w1{"W1", W1, nbytes<T>(d, n1)}, w2{"W2", W2, nbytes<T>(n1, n2)},
        h{"H", H, nbytes<T>(N, n2)};
    for (const Arr& a : {x, w1, w2, h}) check_not_null(a);
    for (const Arr& a : {x, w1, w2}) check_disjoint(h, a);
    const auto act = parse_activation(activation);
    check_finite("a1", double(a1));
    const pyrgd::cpu::WideShape s{std::size_t(N), std::size_t(d), std::size_t(n1), std::size_t(n2)};
    pyrgd::cpu::forward<T>(s, X, W1, W2, act.first, slope_in_dtype<T>(act, activation), a1, H);
  });
}

template <class T>
int grad(const T* X, const T* W1, const T* W2, const T* G, T* dW1, T* dW2, T* dX, bool want_dx, int64_t N,
         int64_t d, int64_t n1, int64_t n2, const char* activation, T a1) {
  return guarded([&] {
    check_dims(N, d, n1, n2);
    const Arr x{"X", X, nbytes<T>(N, d)}, w1{"W1", W1, nbytes<T>(d, n1)}, w2{"W2", W2, nbytes<T>(n1, n2)},
        g{"G", G, nbytes<T>(N, n2)}, g1{"dW1", dW1, nbytes<T>(d, n1)}, g2{"dW2", dW2, nbytes<T>(n1, n2)},
        gx{"dX", dX, nbytes<T>(N, d)};
    for (const Arr& a : {x, w1, w2, g, g1, g2}) check_not_null(a);
    if (want_dx) check_not_null(gx);
    for (const Arr& o : {g1, g2, gx})
      for (const Arr& a : {x, w1, w2, g}) check_disjoint(o, a);
    check_disjoint(g2, g1);
    check_disjoint(gx, g1);
    check_disjoint(gx, g2);
    const auto act = parse_activation(activation);
    check_finite("a1", double(a1));
    const pyrgd::cpu::WideShape s{std::size_t(N), std::size_t(d), std::size_t(n1), std::size_t(n2)};
    pyrgd::cpu::wide_grad<T>(s, X, W1, W2, G, act.first, slope_in_dtype<T>(act, activation), a1, dW1, dW2,
                             want_dx ? dX : nullptr);
  });
}

template <class T>
int step(const T* X, T* W1, T* W2, const T* G, T lr, T* H_next, int64_t N, int64_t d, int64_t n1, int64_t n2,
         const char* activation, T a1) {
  return guarded([&] {
    check_dims(N, d, n1, n2);
    const Arr x{"X", X, nbytes<T>(N, d)}, w1{"W1", W1, nbytes<T>(d, n1)}, w2{"W2", W2, nbytes<T>(n1, n2)},
        g{"G", G, nbytes<T>(N, n2)}, h{"H_next", H_next, nbytes<T>(N, n2)};
    for (const Arr& a : {x, w1, w2, g}) check_not_null(a);
    check_disjoint(w1, w2);
    for (const Arr& a : {x, g}) {
      check_disjoint(w1, a);
      check_disjoint(w2, a);
    }
    for (const Arr& a : {x, w1, w2}) check_disjoint(h, a);  // H_next may be G
    const auto act = parse_activation(activation);
    check_finite("a1", double(a1));
    check_finite("lr", double(lr));
    const pyrgd::cpu::WideShape s{std::size_t(N), std::size_t(d), std::size_t(n1), std::size_t(n2)};
    double q1 = 0.0, q2 = 0.0;
    pyrgd::cpu::step<T>(s, X, W1, W2, G, lr, act.first, slope_in_dtype<T>(act, activation), a1, H_next, &q1, &q2);
  });
}

}  // namespace

extern "C" {

int pyrgd_wide_forward_f64(const double* X, const double* W1, const double* W2, double* H, int64_t N, int64_t d,
                           int64_t n1, int64_t n2, const char* activation, double a1) {
  return forward<double>(X, W1, W2, H, N, d, n1, n2, activation, a1);
}
int pyrgd_wide_forward_f32(const float* X, const float* W1, const float* W2, float* H, int64_t N, int64_t d,
                           int64_t n1, int64_t n2, const char* activation, float a1) {
  return forward<float>(X, W1, W2, H, N, d, n1, n2, activation, a1);
}
int pyrgd_wide_grad_f64(const double* X, const double* W1, const double* W2, const double* G, double* dW1,
                        double* dW2, int64_t N, int64_t d, int64_t n1, int64_t n2, const char* activation,
                        double a1) {
  return grad<double>(X, W1, W2, G, dW1, dW2, nullptr, false, N, d, n1, n2, activation, a1);
}
int pyrgd_wide_grad_f32(const float* X, const float* W1, const float* W2, const float* G, float* dW1, float* dW2,
                        int64_t N, int64_t d, int64_t n1, int64_t n2, const char* activation, float a1) {
  return grad<float>(X, W1, W2, G, dW1, dW2, nullptr, false, N, d, n1, n2, activation, a1);
}
int pyrgd_wide_grad_dx_f64(const double* X, const double* W1, const double* W2, const double* G, double* dW1,
                           double* dW2, double* dX, int64_t N, int64_t d, int64_t n1, int64_t n2,
                           const char* activation, double a1) {
  return grad<double>(X, W1, W2, G, dW1, dW2, dX, true, N, d, n1, n2, activation, a1);
}
int pyrgd_wide_grad_dx_f32(const float* X, const float* W1, const float* W2, const float* G, float* dW1, float* dW2,
                           float* dX, int64_t N, int64_t d, int64_t n1, int64_t n2, const char* activation,
                           float a1) {
  return grad<float>(X, W1, W2, G, dW1, dW2, dX, true, N, d, n1, n2, activation, a1);
}
int pyrgd_wide_step_f64(const double* X, double* W1, double* W2, const double* G, double lr, double* H_next,
                        int64_t N, int64_t d, int64_t n1, int64_t n2, const char* activation, double a1) {
  return step<double>(X, W1, W2, G, lr, H_next, N, d, n1, n2, activation, a1);
}
int pyrgd_wide_step_f32(const float* X, float* W1, float* W2, const float* G, float lr, float* H_next, int64_t N,
                        int64_t d, int64_t n1, int64_t n2, const char* activation, float a1) {
  return step<float>(X, W1, W2, G, lr, H_next, N, d, n1, n2, activation, a1);
}

int pyrgd_set_num_threads(int n) {
  return guarded([&] {
    if (n < 0 || n > 4096) fail("n: expected 0 (OpenMP's default) or 1..4096 threads, got " + std::to_string(n));
    pyrgd::cpu::set_num_threads(n);
  });
}
int pyrgd_get_num_threads(void) { return pyrgd::cpu::get_num_threads(); }

const char* pyrgd_last_error(void) { return g_error.c_str(); }
const char* pyrgd_version(void) { return PYRGD_VERSION; }

}  // extern "C"
