// pybind11 binding of the CPU kernels: the extension module pyrgd._cpu.
//
// The raw module checks its input itself (pyrgd.ops checks first, but calling pyrgd._cpu directly must never crash
// the interpreter): arrays are taken as plain objects and never converted or copied (a silent copy of W1 would not
// be updated in place); dtype, byte order, ndim, shape, C-contiguity, alignment, writeability (W1, W2 of step),
// non-emptiness and memory overlap between what step writes and what it reads are checked, and a TypeError or
// ValueError names the argument. The compute runs with the GIL released and touches no Python object meanwhile.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <pyrgd/pyrgd.h>

#include "fma_probe.h"

namespace py = pybind11;
using pyrgd::cpu::WideShape;

namespace {

// numpy's NPY_ARRAY_ALIGNED flag
constexpr int kAlignedFlag = 0x0100;

enum class DType { f32, f64 };

const char* dtype_name(DType t) { return t == DType::f32 ? "float32" : "float64"; }

std::string type_name(const py::handle& o) { return py::str(py::type::handle_of(o).attr("__name__")); }

py::array as_array(const py::object& o, const char* name) {
  if (!py::isinstance<py::array>(o))
    throw py::type_error(std::string(name) + ": expected a numpy.ndarray of float32 or float64, got " + type_name(o));
  return py::reinterpret_borrow<py::array>(o);
}

bool native_order(char bo) {
  if (bo == '=' || bo == '|') return true;
  const std::uint16_t one = 1;
  const bool little = *reinterpret_cast<const unsigned char*>(&one) == 1;
  return little ? bo == '<' : bo == '>';
}

DType dtype_of(const py::array& a, const char* name) {
  const py::dtype dt = a.dtype();
  const std::string got = py::str(dt);
  if (dt.kind() != 'f' || (dt.itemsize() != 4 && dt.itemsize() != 8))
    throw py::type_error(std::string(name) + ": expected dtype float32 or float64, got " + got);
  if (!native_order(dt.byteorder()))
    throw py::type_error(std::string(name) + ": expected native byte order, got dtype " + got);
  return dt.itemsize() == 4 ? DType::f32 : DType::f64;
}

// Check a 2-D operand; return it. `rows`/`cols` < 0: any size.
py::array check_matrix(const py::object& o, const char* name, DType want, py::ssize_t rows, py::ssize_t cols,
                       bool writeable, const char* shape_text) {
  py::array a = as_array(o, name);
  if (a.ndim() != 2)
    throw py::value_error(std::string(name) + ": expected a 2-D array, got " + std::to_string(a.ndim()) + " dimensions");
  const DType t = dtype_of(a, name);
  if (t != want)
    throw py::type_error(std::string(name) + ": expected dtype " + dtype_name(want) +
                         " like the call's first array (X, or H for the tail: all arrays of one call share one dtype), got " + dtype_name(t));
  const py::ssize_t r = a.shape(0), c = a.shape(1);
  if ((rows >= 0 && r != rows) || (cols >= 0 && c != cols))
    throw py::value_error(std::string(name) + ": expected shape " + shape_text + ", got (" + std::to_string(r) + ", " +
                          std::to_string(c) + ")");
  if (r == 0 || c == 0)
    throw py::value_error(std::string(name) + ": expected a non-empty array, got shape (" + std::to_string(r) + ", " +
                          std::to_string(c) + ")");
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": expected a C-contiguous array (numpy.ascontiguousarray)" +
                          (writeable ? "; it is updated in place, so it cannot be copied silently" : ""));
  if (!(a.flags() & kAlignedFlag)) throw py::value_error(std::string(name) + ": expected an aligned array");
  if (writeable && !a.writeable())
    throw py::value_error(std::string(name) + ": is updated in place but is read-only");
  return a;
}

std::string dims(const char* a, py::ssize_t x, const char* b, py::ssize_t y) {
  return std::string("(") + a + "=" + std::to_string(x) + ", " + b + "=" + std::to_string(y) + ")";
}

bool overlap(const py::array& a, const py::array& b) {
  const auto pa = reinterpret_cast<std::uintptr_t>(a.data()), pb = reinterpret_cast<std::uintptr_t>(b.data());
  return pa < pb + std::uintptr_t(b.nbytes()) && pb < pa + std::uintptr_t(a.nbytes());
}

double check_finite(double v, const char* name) {
  if (!std::isfinite(v)) throw py::value_error(std::string(name) + ": expected a finite number, got " + std::to_string(v));
  return v;
}

int check_act(int code) {
  if (!pyrgd::cpu::is_activation_code(code))
    throw py::value_error("act_code: unknown activation code " + std::to_string(code) +
                          " (see pyrgd.activations.ACTIVATION_CODES)");
  return code;
}

// multipliers[j] as a finite float (TypeError / ValueError naming it otherwise).
double multiplier_at(const py::sequence& mseq, std::size_t j) {
  const py::object m = mseq[j];
  double a;
  try {
    a = m.cast<double>();
  } catch (const py::cast_error&) {
    throw py::type_error("multipliers[" + std::to_string(j) + "]: expected a float, got " + type_name(m));
  }
  return check_finite(a, ("multipliers[" + std::to_string(j) + "]").c_str());
}

// X, W1 (and W2 when given) checked; the shape (N, d, n1, n2) returned (n2 = 0 without W2).
struct Wide {
  py::array X, W1, W2;
  DType t;
  WideShape s;
};

Wide check_wide(const py::object& X, const py::object& W1, const py::object* W2, bool inplace) {
  Wide w;
  py::array x = as_array(X, "X");
  if (x.ndim() != 2)
    throw py::value_error("X: expected a 2-D array (N, d), got " + std::to_string(x.ndim()) + " dimensions");
  w.t = dtype_of(x, "X");
  w.X = check_matrix(X, "X", w.t, -1, -1, false, "(N, d)");
  const py::ssize_t N = w.X.shape(0), d = w.X.shape(1);
  const std::string s1 = "(d, n1) " + std::string("with d=") + std::to_string(d);
  w.W1 = check_matrix(W1, "W1", w.t, d, -1, inplace, s1.c_str());
  const py::ssize_t n1 = w.W1.shape(1);
  py::ssize_t n2 = 0;
  if (W2) {
    const std::string s2 = "(n1, n2) with n1=" + std::to_string(n1) + " (W1.shape[1])";
    w.W2 = check_matrix(*W2, "W2", w.t, n1, -1, inplace, s2.c_str());
    n2 = w.W2.shape(1);
  }
  w.s = WideShape{std::size_t(N), std::size_t(d), std::size_t(n1), std::size_t(n2)};
  return w;
}

// The output H (N, n2): `out` checked (writable, C-contiguous, of the dtype, not sharing memory with X, W1, W2, which
// the kernel reads while it writes H) and returned, or a new array when `out` is None.
py::array output_h(const Wide& w, const py::object& out) {
  if (out.is_none()) {
    if (w.t == DType::f32) return py::array_t<float>({py::ssize_t(w.s.N), py::ssize_t(w.s.n2)});
    return py::array_t<double>({py::ssize_t(w.s.N), py::ssize_t(w.s.n2)});
  }
  const std::string so = "(N, n2) = " + dims("N", py::ssize_t(w.s.N), "n2", py::ssize_t(w.s.n2));
  py::array o = check_matrix(out, "out", w.t, py::ssize_t(w.s.N), py::ssize_t(w.s.n2), true, so.c_str());
  const std::pair<const py::array*, const char*> read[] = {{&w.X, "X"}, {&w.W1, "W1"}, {&w.W2, "W2"}};
  for (const auto& r : read)
    if (overlap(o, *r.first))
      throw py::value_error(std::string("out, ") + r.second + ": must not share memory (" + r.second +
                            " is read while out is written)");
  return o;
}

template <class T>
py::array forward_t(const Wide& w, int act, double gamma, double a1, const py::object& out) {
  py::array H = output_h(w, out);
  const T* X = static_cast<const T*>(w.X.data());
  const T* W1 = static_cast<const T*>(w.W1.data());
  const T* W2 = static_cast<const T*>(w.W2.data());
  T* h = static_cast<T*>(H.mutable_data());
  {
    py::gil_scoped_release nogil;
    pyrgd::cpu::forward<T>(w.s, X, W1, W2, act, T(gamma), T(a1), h);
  }
  return H;
}

py::array forward(const py::object& X, const py::object& W1, const py::object& W2, int act_code, double gamma,
                  double a1, const py::object& out) {
  const Wide w = check_wide(X, W1, &W2, false);
  check_act(act_code);
  check_finite(gamma, "gamma");
  check_finite(a1, "a1");
  return w.t == DType::f32 ? forward_t<float>(w, act_code, gamma, a1, out)
                           : forward_t<double>(w, act_code, gamma, a1, out);
}

template <class T>
py::tuple step_t(Wide& w, const py::array& G, double lr, int act, double gamma, double a1, bool next_forward,
                 const py::object& out) {
  py::object Hobj = py::none();
  T* h = nullptr;
  if (next_forward) {
    py::array H = output_h(w, out);
    h = static_cast<T*>(H.mutable_data());
    Hobj = std::move(H);
  }
  const T* X = static_cast<const T*>(w.X.data());
  T* W1 = static_cast<T*>(w.W1.mutable_data());
  T* W2 = static_cast<T*>(w.W2.mutable_data());
  const T* g = static_cast<const T*>(G.data());
  double q1 = 0.0, q2 = 0.0;
  {
    py::gil_scoped_release nogil;
    pyrgd::cpu::step<T>(w.s, X, W1, W2, g, T(lr), act, T(gamma), T(a1), h, &q1, &q2);
  }
  return py::make_tuple(Hobj, q1, q2);
}

py::tuple step(const py::object& X, const py::object& W1, const py::object& W2, const py::object& G, double lr,
               int act_code, double gamma, double a1, bool next_forward, const py::object& out) {
  if (!out.is_none() && !next_forward) throw py::value_error("out: only with next_forward=True (it receives H_next)");
  Wide w = check_wide(X, W1, &W2, true);
  const std::string sg = "(N, n2) = " + dims("N", py::ssize_t(w.s.N), "n2", py::ssize_t(w.s.n2));
  const py::array g = check_matrix(G, "G", w.t, py::ssize_t(w.s.N), py::ssize_t(w.s.n2), false, sg.c_str());
  check_act(act_code);
  check_finite(lr, "lr");
  check_finite(gamma, "gamma");
  check_finite(a1, "a1");
  if (overlap(w.W1, w.W2)) throw py::value_error("W1, W2: must not share memory (both are updated in place)");
  const std::pair<const py::array*, const char*> inputs[] = {{&w.X, "X"}, {&g, "G"}};
  for (const auto& in : inputs) {
    if (overlap(*in.first, w.W1))
      throw py::value_error(std::string(in.second) + ", W1: must not share memory (W1 is updated in place)");
    if (overlap(*in.first, w.W2))
      throw py::value_error(std::string(in.second) + ", W2: must not share memory (W2 is updated in place)");
  }
  return w.t == DType::f32 ? step_t<float>(w, g, lr, act_code, gamma, a1, next_forward, out)
                           : step_t<double>(w, g, lr, act_code, gamma, a1, next_forward, out);
}

template <class T>
py::array gram_t(const Wide& w, const py::array* B2, int act, double gamma, double a1) {
  py::array_t<T> K({py::ssize_t(w.s.N), py::ssize_t(w.s.N)});
  const T* X = static_cast<const T*>(w.X.data());
  const T* W1 = static_cast<const T*>(w.W1.data());
  const T* W2 = B2 ? static_cast<const T*>(w.W2.data()) : nullptr;
  const T* b2 = B2 ? static_cast<const T*>(B2->data()) : nullptr;
  T* k = K.mutable_data();
  {
    py::gil_scoped_release nogil;
    pyrgd::cpu::gram<T>(w.s, X, W1, W2, b2, act, T(gamma), T(a1), k);
  }
  return std::move(K);
}

py::array gram(const py::object& X, const py::object& W1, const py::object& W2, const py::object& B2, int act_code,
               double gamma, double a1) {
  if (W2.is_none() != B2.is_none())
    throw py::value_error("W2, B2: give both (for B1 B1^T) or neither (for F1 F1^T)");
  const bool backward = !B2.is_none();
  const Wide w = check_wide(X, W1, backward ? &W2 : nullptr, false);
  py::array b2;
  if (backward) {
    const std::string sb = "(N, n2) = " + dims("N", py::ssize_t(w.s.N), "n2", py::ssize_t(w.s.n2));
    b2 = check_matrix(B2, "B2", w.t, py::ssize_t(w.s.N), py::ssize_t(w.s.n2), false, sb.c_str());
  }
  check_act(act_code);
  check_finite(gamma, "gamma");
  check_finite(a1, "a1");
  const py::array* pb = backward ? &b2 : nullptr;
  return w.t == DType::f32 ? gram_t<float>(w, pb, act_code, gamma, a1) : gram_t<double>(w, pb, act_code, gamma, a1);
}

template <class T>
py::tuple activation_t(const py::array& Z, int act, double gamma, bool value, bool derivative) {
  std::vector<py::ssize_t> shape(Z.shape(), Z.shape() + Z.ndim());
  py::object So = py::none(), Do = py::none();
  T* sp = nullptr;
  T* dp = nullptr;
  if (value) {
    py::array_t<T> S(shape);
    sp = S.mutable_data();
    So = std::move(S);
  }
  if (derivative) {
    py::array_t<T> D(shape);
    dp = D.mutable_data();
    Do = std::move(D);
  }
  const T* z = static_cast<const T*>(Z.data());
  const std::size_t count = std::size_t(Z.size());
  {
    py::gil_scoped_release nogil;
    pyrgd::cpu::activation<T>(count, z, act, T(gamma), sp, dp);
  }
  return py::make_tuple(So, Do);
}

// (sigma(Z) or None, sigma'(Z) or None) by the kernels' own activation code; Z: a C-contiguous float array, any
// shape (empty included).
py::tuple activation(const py::object& Zobj, int act_code, double gamma, bool value, bool derivative) {
  py::array Z = as_array(Zobj, "Z");
  const DType t = dtype_of(Z, "Z");
  if (!(Z.flags() & py::array::c_style)) throw py::value_error("Z: expected a C-contiguous array");
  if (!(Z.flags() & kAlignedFlag)) throw py::value_error("Z: expected an aligned array");
  check_act(act_code);
  check_finite(gamma, "gamma");
  return t == DType::f32 ? activation_t<float>(Z, act_code, gamma, value, derivative)
                         : activation_t<double>(Z, act_code, gamma, value, derivative);
}

template <class T>
py::tuple tail_t(const py::array& H, const py::array& Y, const std::vector<py::array>& Ws,
                 const std::vector<double>& mult, int act, double gamma, py::array G, std::vector<std::size_t> wd) {
  const std::size_t nt = Ws.size();
  std::vector<const T*> wp(nt);
  std::vector<T*> gp(nt);
  std::vector<T> mt(mult.begin(), mult.end());
  py::list grads;
  for (std::size_t j = 0; j < nt; ++j) {
    wp[j] = static_cast<const T*>(Ws[j].data());
    py::array_t<T> g({py::ssize_t(wd[j]), py::ssize_t(wd[j + 1])});
    gp[j] = g.mutable_data();
    grads.append(g);
  }
  double loss;
  {
    py::gil_scoped_release nogil;
    loss = pyrgd::cpu::tail<T>(std::size_t(H.shape(0)), nt, wd.data(), static_cast<const T*>(H.data()),
                               static_cast<const T*>(Y.data()), wp.data(), mt.data(), act, T(gamma),
                               static_cast<T*>(G.mutable_data()), gp.data());
  }
  return py::make_tuple(loss, G, grads);
}

// The tail (layers 2..L) from H: (loss, G = dPhi/dZ_2, [dPhi/dW_3, ..., dPhi/dW_L]); see pyrgd/tail.h.
py::tuple tail(const py::object& Hobj, const py::object& Yobj, const py::object& Wobj, int act_code, double gamma,
               const py::object& mobj, const py::object& out) {
  py::array h = as_array(Hobj, "H");
  if (h.ndim() != 2)
    throw py::value_error("H: expected a 2-D array (N, n2), got " + std::to_string(h.ndim()) + " dimensions");
  const DType t = dtype_of(h, "H");
  const py::array H = check_matrix(Hobj, "H", t, -1, -1, false, "(N, n2)");
  const py::ssize_t N = H.shape(0);
  if (!py::isinstance<py::sequence>(Wobj) || py::isinstance<py::str>(Wobj))
    throw py::type_error("weights: expected a list of the tail's weights [W_3, ..., W_L], got " + type_name(Wobj));
  if (!py::isinstance<py::sequence>(mobj) || py::isinstance<py::str>(mobj))
    throw py::type_error("multipliers: expected a list of floats [a_2, ..., a_{L-1}], got " + type_name(mobj));
  const py::sequence wseq = py::reinterpret_borrow<py::sequence>(Wobj);
  const py::sequence mseq = py::reinterpret_borrow<py::sequence>(mobj);
  const std::size_t nt = std::size_t(py::len(wseq));
  if (std::size_t(py::len(mseq)) != nt)
    throw py::value_error("multipliers: expected one per tail weight (" + std::to_string(nt) + " values a_2.., got " +
                          std::to_string(py::len(mseq)) + ")");
  std::vector<std::size_t> wd{std::size_t(H.shape(1))};
  std::vector<py::array> Ws;
  std::vector<double> mult;
  for (std::size_t j = 0; j < nt; ++j) {
    const std::string name = "weights[" + std::to_string(j) + "] (W_" + std::to_string(j + 3) + ")";
    const std::string shape = "(" + std::to_string(wd[j]) + ", n) after " + (j ? "the previous weight" : "H");
    Ws.push_back(check_matrix(wseq[j], name.c_str(), t, py::ssize_t(wd[j]), -1, false, shape.c_str()));
    wd.push_back(std::size_t(Ws.back().shape(1)));
    mult.push_back(multiplier_at(mseq, j));
  }
  const std::string sy = "(N, n_L) = " + dims("N", N, "n_L", py::ssize_t(wd.back()));
  const py::array Y = check_matrix(Yobj, "Y", t, N, py::ssize_t(wd.back()), false, sy.c_str());
  check_act(act_code);
  check_finite(gamma, "gamma");
  py::array G;
  if (out.is_none()) {
    G = t == DType::f32 ? py::array(py::array_t<float>({N, py::ssize_t(wd[0])}))
                        : py::array(py::array_t<double>({N, py::ssize_t(wd[0])}));
  } else {
    const std::string sg = "(N, n2) = " + dims("N", N, "n2", py::ssize_t(wd[0]));
    G = check_matrix(out, "out", t, N, py::ssize_t(wd[0]), true, sg.c_str());
    if (overlap(G, H)) throw py::value_error("out, H: must not share memory (H is read while out is written)");
    if (overlap(G, Y)) throw py::value_error("out, Y: must not share memory (Y is read while out is written)");
    for (std::size_t j = 0; j < nt; ++j)
      if (overlap(G, Ws[j]))
        throw py::value_error("out, weights[" + std::to_string(j) + "]: must not share memory");
  }
  return t == DType::f32 ? tail_t<float>(H, Y, Ws, mult, act_code, gamma, G, wd)
                         : tail_t<double>(H, Y, Ws, mult, act_code, gamma, G, wd);
}

template <class T>
py::tuple network_grad_t(const Wide& w, const py::array& Y, const std::vector<py::array>& Ws,
                         const std::vector<double>& mult, int act, double gamma, std::vector<py::array>& G,
                         const std::vector<std::size_t>& tdims, std::size_t panel_rows, std::size_t kept,
                         const py::array* work) {
  const std::size_t L = Ws.size(), nt = L - 2;
  std::vector<const T*> wt(nt);
  std::vector<T*> gt(nt);
  for (std::size_t j = 0; j < nt; ++j) {
    wt[j] = static_cast<const T*>(Ws[j + 2].data());
    gt[j] = static_cast<T*>(G[j + 2].mutable_data());
  }
  std::vector<T> mt(mult.begin(), mult.end());
  std::vector<double> sq(L, 0.0);
  const T* X = static_cast<const T*>(w.X.data());
  const T* y = static_cast<const T*>(Y.data());
  const T* W1 = static_cast<const T*>(w.W1.data());
  const T* W2 = static_cast<const T*>(w.W2.data());
  T* g1 = static_cast<T*>(G[0].mutable_data());
  T* g2 = static_cast<T*>(G[1].mutable_data());
  T* wk = work ? static_cast<T*>(const_cast<py::array*>(work)->mutable_data()) : nullptr;
  const std::size_t wn = work ? std::size_t(work->size()) : 0;
  double loss;
  {
    py::gil_scoped_release nogil;
    loss = pyrgd::cpu::network_grad<T>(w.s, nt, tdims.data(), X, y, W1, W2, wt.data(), mt.data(), act, T(gamma), g1,
                                       g2, gt.data(), sq.data(), panel_rows, kept, wk, wn);
  }
  py::list grads, sql;
  for (std::size_t l = 0; l < L; ++l) {
    grads.append(G[l]);
    sql.append(sq[l]);
  }
  return py::make_tuple(loss, grads, sql);
}

// The loss and every gradient of the network in one pass over panels of rows: (loss, [dPhi/dW_1, ...,
// dPhi/dW_L], [||dPhi/dW_l||^2]); see pyrgd/grad.h (network_grad).
py::tuple network_grad(const py::object& X, const py::object& Y, const py::object& Wobj, int act_code, double gamma,
                       const py::object& mobj, const py::object& gobj, py::ssize_t panel_rows,
                       py::ssize_t kept_neurons, const py::object& wobj) {
  if (!py::isinstance<py::sequence>(Wobj) || py::isinstance<py::str>(Wobj))
    throw py::type_error("weights: expected a list of the weights [W_1, ..., W_L], got " + type_name(Wobj));
  if (!py::isinstance<py::sequence>(mobj) || py::isinstance<py::str>(mobj))
    throw py::type_error("multipliers: expected a list of floats [a_1, ..., a_{L-1}], got " + type_name(mobj));
  const py::sequence wseq = py::reinterpret_borrow<py::sequence>(Wobj);
  const py::sequence mseq = py::reinterpret_borrow<py::sequence>(mobj);
  const std::size_t L = std::size_t(py::len(wseq));
  if (L < 2) throw py::value_error("weights: expected at least two weights [W_1, W_2, ...], got " + std::to_string(L));
  if (std::size_t(py::len(mseq)) != L - 1)
    throw py::value_error("multipliers: expected L - 1 = " + std::to_string(L - 1) + " values a_1.., got " +
                          std::to_string(py::len(mseq)));
  const py::object w1 = wseq[0], w2 = wseq[1];
  const Wide w = check_wide(X, w1, &w2, false);
  std::vector<py::array> Ws{w.W1, w.W2};
  std::vector<std::size_t> tdims{w.s.n2};
  for (std::size_t l = 2; l < L; ++l) {
    const std::string name = "weights[" + std::to_string(l) + "] (W_" + std::to_string(l + 1) + ")";
    const std::string shape = "(" + std::to_string(tdims.back()) + ", n) after the previous weight";
    Ws.push_back(check_matrix(wseq[l], name.c_str(), w.t, py::ssize_t(tdims.back()), -1, false, shape.c_str()));
    tdims.push_back(std::size_t(Ws.back().shape(1)));
  }
  std::vector<double> mult;
  for (std::size_t j = 0; j + 1 < L; ++j) {
    mult.push_back(multiplier_at(mseq, j));
  }
  const py::ssize_t N = py::ssize_t(w.s.N);
  const std::string sy = "(N, n_L) = " + dims("N", N, "n_L", py::ssize_t(tdims.back()));
  const py::array Ya = check_matrix(Y, "Y", w.t, N, py::ssize_t(tdims.back()), false, sy.c_str());
  check_act(act_code);
  check_finite(gamma, "gamma");
  if (panel_rows < 0 || panel_rows > (py::ssize_t(1) << 20))
    throw py::value_error("panel_rows: expected 0 (automatic) or 1..2^20 rows, got " + std::to_string(panel_rows));
  if (kept_neurons < -1 || kept_neurons > py::ssize_t(w.s.n1))
    throw py::value_error("kept_neurons: expected -1 (all) or 0..n1 = " + std::to_string(w.s.n1) + ", got " +
                          std::to_string(kept_neurons));
  const std::size_t kept = kept_neurons < 0 ? w.s.n1 : std::size_t(kept_neurons);
  std::vector<py::array> G;
  if (gobj.is_none()) {
    for (const auto& a : Ws)
      G.push_back(w.t == DType::f32 ? py::array(py::array_t<float>({a.shape(0), a.shape(1)}))
                                    : py::array(py::array_t<double>({a.shape(0), a.shape(1)})));
  } else {
    if (!py::isinstance<py::sequence>(gobj) || py::isinstance<py::str>(gobj))
      throw py::type_error("grads: expected None or a list of L arrays shaped like the weights, got " +
                           type_name(gobj));
    const py::sequence gseq = py::reinterpret_borrow<py::sequence>(gobj);
    if (std::size_t(py::len(gseq)) != L)
      throw py::value_error("grads: expected " + std::to_string(L) + " arrays (one per weight), got " +
                            std::to_string(py::len(gseq)));
    for (std::size_t l = 0; l < L; ++l) {
      const std::string name = "grads[" + std::to_string(l) + "]";
      const std::string shape = "(" + std::to_string(Ws[l].shape(0)) + ", " + std::to_string(Ws[l].shape(1)) +
                                ") like weights[" + std::to_string(l) + "]";
      G.push_back(check_matrix(gseq[l], name.c_str(), w.t, Ws[l].shape(0), Ws[l].shape(1), true, shape.c_str()));
    }
    for (std::size_t l = 0; l < L; ++l) {
      const std::string gname = "grads[" + std::to_string(l) + "]";
      if (overlap(G[l], w.X)) throw py::value_error(gname + ", X: must not share memory");
      if (overlap(G[l], Ya)) throw py::value_error(gname + ", Y: must not share memory");
      for (std::size_t k = 0; k < L; ++k) {
        if (overlap(G[l], Ws[k]))
          throw py::value_error(gname + ", weights[" + std::to_string(k) + "]: must not share memory");
        if (k < l && overlap(G[l], G[k]))
          throw py::value_error(gname + ", grads[" + std::to_string(k) + "]: must not share memory");
      }
    }
  }
  const std::size_t pr = std::size_t(panel_rows);
  // the workspace: a 1-D writeable C-contiguous array of the call's dtype, large enough, sharing no memory with
  // any input or output
  py::array work;
  if (!wobj.is_none()) {
    work = as_array(wobj, "workspace");
    if (work.ndim() != 1)
      throw py::value_error("workspace: expected a 1-D array, got " + std::to_string(work.ndim()) + " dimensions");
    const DType t = dtype_of(work, "workspace");
    if (t != w.t)
      throw py::type_error(std::string("workspace: expected dtype ") + dtype_name(w.t) + " like X, got " +
                           dtype_name(t));
    if (!(work.flags() & py::array::c_style) || !(work.flags() & kAlignedFlag))
      throw py::value_error("workspace: expected a C-contiguous aligned array");
    if (!work.writeable()) throw py::value_error("workspace: is written but is read-only");
    const std::size_t need = pyrgd::cpu::grad_workspace_elems(w.s, act_code, w.t == DType::f32 ? 4 : 8, pr, kept);
    if (std::size_t(work.size()) < need)
      throw py::value_error("workspace: expected at least " + std::to_string(need) +
                            " elements (grad_workspace_size), got " + std::to_string(work.size()));
    if (overlap(work, w.X)) throw py::value_error("workspace, X: must not share memory");
    if (overlap(work, Ya)) throw py::value_error("workspace, Y: must not share memory");
    for (std::size_t l = 0; l < L; ++l) {
      if (overlap(work, Ws[l]))
        throw py::value_error("workspace, weights[" + std::to_string(l) + "]: must not share memory");
      if (overlap(work, G[l]))
        throw py::value_error("workspace, grads[" + std::to_string(l) + "]: must not share memory");
    }
  }
  const py::array* wp = wobj.is_none() ? nullptr : &work;
  return w.t == DType::f32 ? network_grad_t<float>(w, Ya, Ws, mult, act_code, gamma, G, tdims, pr, kept, wp)
                           : network_grad_t<double>(w, Ya, Ws, mult, act_code, gamma, G, tdims, pr, kept, wp);
}

// W_l -= lr G_l for every pair, in one call without the GIL (so that a KeyboardInterrupt cannot land between two
// layers): weights and grads are lists of one dtype, pairwise of one shape, C-contiguous, weights writeable, no array
// of one list overlapping any of the other or of its own.
void sgd_update(const py::object& Wobj, const py::object& Gobj, double lr) {
  for (const auto& pr : {std::make_pair(&Wobj, "weights"), std::make_pair(&Gobj, "grads")})
    if (!py::isinstance<py::sequence>(*pr.first) || py::isinstance<py::str>(*pr.first))
      throw py::type_error(std::string(pr.second) + ": expected a list of arrays, got " + type_name(*pr.first));
  const py::sequence ws = py::reinterpret_borrow<py::sequence>(Wobj), gs = py::reinterpret_borrow<py::sequence>(Gobj);
  const std::size_t L = std::size_t(py::len(ws));
  if (L == 0) throw py::value_error("weights: expected at least one array");
  if (std::size_t(py::len(gs)) != L)
    throw py::value_error("grads: expected " + std::to_string(L) + " arrays (one per weight), got " +
                          std::to_string(py::len(gs)));
  check_finite(lr, "lr");
  std::vector<py::array> W, G;
  py::array w0 = as_array(ws[0], "weights[0]");
  if (w0.ndim() != 2) throw py::value_error("weights[0]: expected a 2-D array");
  const DType t = dtype_of(w0, "weights[0]");
  for (std::size_t l = 0; l < L; ++l) {
    const std::string wn = "weights[" + std::to_string(l) + "]", gn = "grads[" + std::to_string(l) + "]";
    W.push_back(check_matrix(ws[l], wn.c_str(), t, -1, -1, true, "(rows, cols)"));
    const std::string shape = "(" + std::to_string(W[l].shape(0)) + ", " + std::to_string(W[l].shape(1)) + ") like " +
                              wn;
    G.push_back(check_matrix(gs[l], gn.c_str(), t, W[l].shape(0), W[l].shape(1), false, shape.c_str()));
  }
  for (std::size_t l = 0; l < L; ++l)
    for (std::size_t k = 0; k < L; ++k) {
      if (overlap(W[l], G[k]))
        throw py::value_error("weights[" + std::to_string(l) + "], grads[" + std::to_string(k) +
                              "]: must not share memory");
      if (k < l && overlap(W[l], W[k]))
        throw py::value_error("weights[" + std::to_string(l) + "], weights[" + std::to_string(k) +
                              "]: must not share memory (both are updated)");
    }
  py::gil_scoped_release nogil;
  for (std::size_t l = 0; l < L; ++l) {
    const std::size_t n = std::size_t(W[l].shape(0)) * std::size_t(W[l].shape(1));
    if (t == DType::f32)
      pyrgd::cpu::sgd_update<float>(n, static_cast<float*>(W[l].mutable_data()), static_cast<const float*>(G[l].data()),
                                    float(lr));
    else
      pyrgd::cpu::sgd_update<double>(n, static_cast<double*>(W[l].mutable_data()),
                                     static_cast<const double*>(G[l].data()), lr);
  }
}

int isa_code(const std::string& name) {
  if (name == "generic") return 0;
  if (name == "avx2") return 1;
  if (name == "avx512") return 2;
  if (name == "auto") return -1;
  throw py::value_error("isa: expected 'auto', 'generic', 'avx2' or 'avx512', got '" + name + "'");
}

py::list available_isas() {
  py::list l;
  for (int i = 0; i <= pyrgd::cpu::best_isa(); ++i) l.append(pyrgd::cpu::isa_name(i));
  return l;
}

py::dict build_info() {
  py::dict info;
#if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  info["compiler"] = std::string("msvc ") + std::to_string(_MSC_FULL_VER);
#else
  info["compiler"] = std::string("unknown");
#endif
  info["openmp"] = pyrgd::cpu::openmp_enabled();
#ifdef _OPENMP
  info["openmp_version"] = int(_OPENMP);
#else
  info["openmp_version"] = py::none();
#endif
  info["max_threads"] = pyrgd::cpu::get_num_threads();
  info["isa"] = std::string(pyrgd::cpu::isa_name(pyrgd::cpu::get_isa()));
  info["isa_available"] = available_isas();
  info["block_size"] = int(pyrgd::cpu::kBlock);
  info["super_blocks"] = int(pyrgd::cpu::kSuperBlocks);
  info["row_chunk"] = int(pyrgd::cpu::kRowChunk);
  info["gram_panel_elems"] = py::int_(pyrgd::cpu::kGramPanelElems);
  // Instruction-set macros of the baseline compile flags (the kernels of tile_avx2/tile_avx512 are compiled for more,
  // and chosen at run time: "isa" above).
  py::list isa;
#ifdef __SSE4_1__
  isa.append("sse4.1");
#endif
#ifdef __AVX__
  isa.append("avx");
#endif
#ifdef __AVX2__
  isa.append("avx2");
#endif
#ifdef __FMA__
  isa.append("fma");
#endif
#ifdef __AVX512F__
  isa.append("avx512f");
#endif
#ifdef __ARM_FEATURE_SVE
  isa.append("sve");
#endif
  info["isa_extensions"] = isa;
  // The ISA macros above are defined only when -march/-m flags select more than the platform's baseline.
  info["march"] = py::len(isa) > 0;
#ifdef __FAST_MATH__
  info["fast_math"] = true;
#else
  info["fast_math"] = false;
#endif
  info["dtypes"] = py::make_tuple("float32", "float64");
  return info;
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() =
      "pyrgd's fused C++ CPU kernels of the wide first layer (OpenMP). Shapes: X (N, d), W1 (d, n1), W2 (n1, n2), "
      "G and B2 (N, n2); all C-contiguous float32 or float64 of one dtype. Use pyrgd.ops for the checked public API.";
  m.def("forward", &forward, py::arg("X"), py::arg("W1"), py::arg("W2"), py::arg("act_code"), py::arg("gamma") = 0.0,
        py::arg("a1") = 1.0, py::arg("out") = py::none(),
        "H (N, n2) = a1 sigma(X W1) W2, streamed over blocks of neurons; written into `out` when given (an (N, n2) "
        "array of the dtype that shares no memory with X, W1, W2).");
  m.def("step", &step, py::arg("X"), py::arg("W1"), py::arg("W2"), py::arg("G"), py::arg("lr"), py::arg("act_code"),
        py::arg("gamma") = 0.0, py::arg("a1") = 1.0, py::arg("next_forward") = false, py::arg("out") = py::none(),
        "One GD step of the wide layer given G = dPhi/dH: W1, W2 updated in place. Returns (H_next or None, "
        "||dPhi/dW1||_F^2, ||dPhi/dW2||_F^2), the norms at the weights before the update. With next_forward, H_next "
        "is written into `out` when given: an (N, n2) array that shares no memory with X, W1, W2; it may be G "
        "itself (H_next is written after the last read of G), which saves one N x n2 buffer.");
  m.def("gram", &gram, py::arg("X"), py::arg("W1"), py::arg("W2") = py::none(), py::arg("B2") = py::none(),
        py::arg("act_code") = 0, py::arg("gamma") = 0.0, py::arg("a1") = 1.0,
        "K (N, N) = F F^T with F = a1 sigma(X W1), or with F = a1 (B2 W2^T) (.) sigma'(X W1) when W2 and B2 are "
        "given.");
  m.def("get_num_threads", &pyrgd::cpu::get_num_threads, "Threads the kernels use.");
  m.def(
      "set_num_threads",
      [](int n) {
        if (n < 0 || n > 4096) throw py::value_error("n: expected 0 (OpenMP's default) or 1..4096 threads");
        pyrgd::cpu::set_num_threads(n);
      },
      py::arg("n"), "Threads the kernels use from now on (process-wide); 0 restores OpenMP's default.");
  m.def(
      "get_isa", [] { return std::string(pyrgd::cpu::isa_name(pyrgd::cpu::get_isa())); },
      "Instruction set of the kernels in use: 'generic', 'avx2' or 'avx512'.");
  m.def(
      "set_isa",
      [](const std::string& name) {
        const int code = isa_code(name);
        if (code > pyrgd::cpu::best_isa())
          throw py::value_error("isa: '" + name + "' is not available in this build on this CPU (available: " +
                                std::string(py::str(available_isas())) + ")");
        pyrgd::cpu::set_isa(code);
      },
      py::arg("name"),
      "Use the kernels of one instruction set from now on (process-wide): 'generic', 'avx2', 'avx512' (if this CPU "
      "has them) or 'auto' (the best). The default is 'auto', or the environment variable PYRGD_CPU_ISA.");
  m.def("available_isas", &available_isas, "Instruction sets this build can use on this CPU, from the baseline up.");
  m.def("activation", &activation, py::arg("Z"), py::arg("act_code"), py::arg("gamma") = 0.0,
        py::arg("value") = true, py::arg("derivative") = true,
        "(sigma(Z), sigma'(Z)) elementwise by the kernels' own vectorized activation code, either None when not asked "
        "for; Z: a C-contiguous float32/float64 array of any shape. No temporary beyond the outputs.");
  m.def("tail", &tail, py::arg("H"), py::arg("Y"), py::arg("weights"), py::arg("act_code"), py::arg("gamma") = 0.0,
        py::arg("multipliers") = py::list(), py::arg("out") = py::none(),
        "The pyramidal tail (layers 2..L) from H = Z_2 (N, n2), streamed over chunks of rows: returns (loss, G, "
        "grads) with loss = 1/2 ||F_L - Y||^2, G = dPhi/dZ_2 (N, n2; written into `out` when given, which must not "
        "share memory with H, Y or the weights) and grads = [dPhi/dW_3, ..., dPhi/dW_L]. weights: [W_3, ..., W_L]; "
        "multipliers: [a_2, ..., a_{L-1}] (one per weight); Y (N, n_L). With no weights (L = 2), G = H - Y. "
        "Bit-identical for any number of threads.");
  m.def("network_grad", &network_grad, py::arg("X"), py::arg("Y"), py::arg("weights"), py::arg("act_code"),
        py::arg("gamma") = 0.0, py::arg("multipliers") = py::list(), py::arg("grads") = py::none(),
        py::arg("panel_rows") = 0, py::arg("kept_neurons") = -1, py::arg("workspace") = py::none(),
        "The loss and every gradient of the whole network at the current weights in one pass over panels of rows: "
        "returns (loss, grads, grad_sq) with loss = 1/2 ||F_L - Y||^2, grads = [dPhi/dW_1, ..., dPhi/dW_L] (written "
        "into `grads` when given: L writeable arrays shaped like the weights that share no memory with the inputs "
        "or each other) and grad_sq = [||dPhi/dW_l||_F^2]. weights: [W_1, ..., W_L] (L >= 2); multipliers: "
        "[a_1, ..., a_{L-1}]; Y (N, n_L). Nothing N x n1 is allocated (a panel of R x n1 values of sigma and "
        "sigma'; R = panel_rows, or 0: chosen from the shapes). kept_neurons: the first neurons (rounded up to a block of 64) "
        "whose sigma, sigma' the panels hold (-1: all); the others are recomputed, in a pass over the rows before "
        "the panels and one over their blocks after. workspace: None, or a 1-D array of the dtype with at least "
        "grad_workspace_size(...) elements, kept from call to call (the large work arrays live there instead of "
        "being allocated per call). Bit-identical for any number of threads.");
  m.def(
      "grad_workspace_size",
      [](std::size_t N, std::size_t d, std::size_t n1, std::size_t n2, int act_code, std::size_t itemsize,
         std::size_t panel_rows, py::ssize_t kept_neurons) {
        if (N < 1 || d < 1 || n1 < 1 || n2 < 1 || (itemsize != 4 && itemsize != 8))
          throw py::value_error("grad_workspace_size: expected N, d, n1, n2 >= 1 and itemsize 4 or 8");
        check_act(act_code);
        if (kept_neurons < -1 || kept_neurons > py::ssize_t(n1))
          throw py::value_error("kept_neurons: expected -1 (all) or 0..n1 = " + std::to_string(n1) + ", got " +
                                std::to_string(kept_neurons));
        const pyrgd::cpu::WideShape s{N, d, n1, n2};
        return pyrgd::cpu::grad_workspace_elems(s, act_code, itemsize, panel_rows,
                                                kept_neurons < 0 ? n1 : std::size_t(kept_neurons));
      },
      py::arg("N"), py::arg("d"), py::arg("n1"), py::arg("n2"), py::arg("act_code"), py::arg("itemsize"),
      py::arg("panel_rows") = 0, py::arg("kept_neurons") = -1,
      "The elements network_grad's `workspace` must hold for these shapes (of its dtype, itemsize 4 or 8).");
  m.def(
      "grad_panel_rows",
      [](std::size_t N, std::size_t n1, std::size_t n2, std::size_t itemsize, int act_code) {
        if (N == 0 || n1 == 0 || n2 == 0 || (itemsize != 4 && itemsize != 8))
          throw py::value_error("grad_panel_rows: expected N, n1, n2 >= 1 and itemsize 4 or 8");
        if (act_code != -1 && !pyrgd::cpu::is_activation_code(act_code))
          throw py::value_error("act_code: expected -1 (not ReLU) or an activation code, got " +
                                std::to_string(act_code));
        return pyrgd::cpu::grad_panel_rows(N, n1, n2, itemsize, act_code);
      },
      py::arg("N"), py::arg("n1"), py::arg("n2"), py::arg("itemsize"), py::arg("act_code") = -1,
      "The rows R of one panel of network_grad for these shapes and activation (panel_rows=0; the ReLU panel holds "
      "S alone, the others S and D; -1: any activation but ReLU).");
  m.def("sgd_update", &sgd_update, py::arg("weights"), py::arg("grads"), py::arg("lr"),
        "W -= lr * G for every pair of the two lists (in place; the bits of NumPy's W -= lr * G), in one call.");
  m.def(
      "fma_peak_gflops",
      [](const std::string& dtype, double seconds) {
        if (dtype != "float32" && dtype != "float64")
          throw py::value_error("dtype: expected 'float32' or 'float64', got '" + dtype + "'");
        if (!(seconds > 0.0 && seconds <= 60.0)) throw py::value_error("seconds: expected a number in (0, 60]");
        py::gil_scoped_release nogil;
        return dtype == "float32" ? pyrgd::cpu::fma_peak_gflops<float>(seconds)
                                  : pyrgd::cpu::fma_peak_gflops<double>(seconds);
      },
      py::arg("dtype") = "float32", py::arg("seconds") = 0.2,
      "The machine's floating-point roof: GFLOP/s of independent FMA chains on registers with the kernels' "
      "instruction set, on the kernels' threads at once, over about `seconds` (no memory traffic).");
  m.def("build_info", &build_info, "How this module was built: compiler, OpenMP, block size, ISA flags.");
  m.attr("BLOCK_SIZE") = int(pyrgd::cpu::kBlock);
  m.attr("GRAD_PANEL_BYTES") = std::size_t(pyrgd::cpu::kGradPanelBytes);
  m.attr("GRAD_PANEL_ROWS_MIN") = std::size_t(pyrgd::cpu::kGradPanelRowsMin);
}
