// pybind11 binding of pyrgd's C++ API (pyrgd/kernels.h): the extension module pyrgd._cpu.
//
// The raw module checks its input itself (pyrgd.ops checks first, but calling pyrgd._cpu directly must never crash
// the interpreter). Arrays are taken as plain objects and never converted or copied (a silent copy of W1 would not
// be updated in place). Every argument goes through the checks of the first section below, one line per argument:
// an array's type, dtype (float32/float64, native byte order, one dtype per call), ndim, shape, non-emptiness,
// C-contiguity, alignment and writeability; a number's finiteness or range; the activation code; and no memory shared
// between what a kernel writes and what it reads. A failed check is a TypeError or ValueError that names the
// argument and what was expected, raised before anything is written. The kernels run with the GIL released and
// touch no Python object meanwhile; their own exceptions become Python ones (std::invalid_argument and
// std::length_error: ValueError, std::bad_alloc: MemoryError).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <pyrgd/kernels.h>

#include "fma_probe.h"

namespace py = pybind11;
using pyrgd::cpu::WideShape;
using ssize = py::ssize_t;

namespace {

// ================================================================================================ argument checks
enum class DType { f32, f64 };

const char* dtype_name(DType t) { return t == DType::f32 ? "float32" : "float64"; }
std::string type_name(const py::handle& o) { return py::str(py::type::handle_of(o).attr("__name__")); }
std::string num(ssize v) { return std::to_string(v); }
std::string item(const char* list, std::size_t i) { return std::string(list) + "[" + std::to_string(i) + "]"; }

[[noreturn]] void type_error(const std::string& name, const std::string& what) {
  throw py::type_error(name + ": " + what);
}
[[noreturn]] void value_error(const std::string& name, const std::string& what) {
  throw py::value_error(name + ": " + what);
}

// One call's arrays share one dtype: the first array checked sets it (and is named in the others' messages).
struct Call {
  DType t = DType::f32;
  std::string first;  // empty until an array is checked
};

// How a kernel uses an array: reads it, updates it in place (a copy would lose the update), or writes it.
enum class Access { read, update, write };

// An expected 2-D shape: rows and cols (-1: any) and how the messages state it.
struct Shape {
  ssize rows, cols;
  std::string text;
};

// "(N, n2) = (5, 2)" with both sizes known, "(d, n1) with d = 3" with one, "(N, d)" with neither.
Shape shape(const std::string& r, ssize rows, const std::string& c, ssize cols) {
  std::string t = "(" + r + ", " + c + ")";
  if (rows >= 0 && cols >= 0)
    t += " = (" + num(rows) + ", " + num(cols) + ")";
  else if (rows >= 0 || cols >= 0)
    t += " with " + (rows >= 0 ? r + " = " + num(rows) : c + " = " + num(cols));
  return {rows, cols, t};
}

// The shape of another argument: "(3, 70) like weights[0]".
Shape like(const py::array& a, const std::string& name) {
  return {a.shape(0), a.shape(1), "(" + num(a.shape(0)) + ", " + num(a.shape(1)) + ") like " + name};
}

bool native_order(char bo) {
  if (bo == '=' || bo == '|') return true;
  const std::uint16_t one = 1;
  const bool little = *reinterpret_cast<const unsigned char*>(&one) == 1;
  return little ? bo == '<' : bo == '>';
}

constexpr int kAlignedFlag = 0x0100;  // numpy's NPY_ARRAY_ALIGNED

// The checks of every array argument, in this order: a numpy.ndarray; `ndim` dimensions (-1: any); dtype float32 or
// float64 in native byte order, and the call's dtype; with `s` (a matrix), the shape and non-empty; C-contiguous;
// aligned; writeable unless only read. Returns the array itself (borrowed, never a copy).
py::array check_array(Call& call, const std::string& name, const py::handle& o, int ndim, const Shape* s,
                      Access access) {
  if (!py::isinstance<py::array>(o))
    type_error(name, "expected a numpy.ndarray of float32 or float64, got " + type_name(o));
  py::array a = py::reinterpret_borrow<py::array>(o);
  if (ndim >= 0 && a.ndim() != ndim)
    value_error(name, "expected a " + std::to_string(ndim) + "-D array" + (s ? " " + s->text : "") + ", got " +
                          num(a.ndim()) + " dimensions");
  const py::dtype dt = a.dtype();
  if (dt.kind() != 'f' || (dt.itemsize() != 4 && dt.itemsize() != 8))
    type_error(name, "expected dtype float32 or float64, got " + std::string(py::str(dt)));
  if (!native_order(dt.byteorder()))
    type_error(name, "expected native byte order, got dtype " + std::string(py::str(dt)));
  const DType t = dt.itemsize() == 4 ? DType::f32 : DType::f64;
  if (call.first.empty()) {
    call.t = t;
    call.first = name;
  } else if (t != call.t) {
    type_error(name, std::string("expected dtype ") + dtype_name(call.t) + " like " + call.first +
                         " (all arrays of one call share one dtype), got " + dtype_name(t));
  }
  if (s) {
    const std::string got = "(" + num(a.shape(0)) + ", " + num(a.shape(1)) + ")";
    if ((s->rows >= 0 && a.shape(0) != s->rows) || (s->cols >= 0 && a.shape(1) != s->cols))
      value_error(name, "expected shape " + s->text + ", got " + got);
    if (a.size() == 0) value_error(name, "expected a non-empty array, got shape " + got);
  }
  const bool update = access == Access::update;
  if (!(a.flags() & py::array::c_style))
    value_error(name, std::string("expected a C-contiguous array (numpy.ascontiguousarray)") +
                          (update ? "; it is updated in place, so it cannot be copied silently" : ""));
  if (!(a.flags() & kAlignedFlag)) value_error(name, "expected an aligned array");
  if (access != Access::read && !a.writeable())
    value_error(name, update ? "is updated in place but is read-only" : "is written but is read-only");
  return a;
}

// A matrix argument (2-D, of shape s).
py::array check_matrix(Call& call, const std::string& name, const py::handle& o, const Shape& s,
                       Access access = Access::read) {
  return check_array(call, name, o, 2, &s, access);
}

bool overlap(const py::array& a, const py::array& b) {
  const auto pa = reinterpret_cast<std::uintptr_t>(a.data()), pb = reinterpret_cast<std::uintptr_t>(b.data());
  return pa < pb + std::uintptr_t(b.nbytes()) && pb < pa + std::uintptr_t(a.nbytes());
}

// ValueError "a, b: must not share memory<why>" when they do.
void check_disjoint(const py::array& a, const std::string& an, const py::array& b, const std::string& bn,
                    const std::string& why = "") {
  if (overlap(a, b)) value_error(an + ", " + bn, "must not share memory" + why);
}

double check_finite(const char* name, double v) {
  if (!std::isfinite(v)) value_error(name, "expected a finite number, got " + std::to_string(v));
  return v;
}

// ValueError "name: expected <what>, got v" outside [lo, hi].
void check_range(const char* name, ssize v, ssize lo, ssize hi, const std::string& what) {
  if (v < lo || v > hi) value_error(name, "expected " + what + ", got " + num(v));
}

int check_act(int code) {
  if (!pyrgd::cpu::is_activation_code(code))
    value_error("act_code", "unknown activation code " + std::to_string(code) +
                                " (see pyrgd.activations.ACTIVATION_CODES)");
  return code;
}

// A list argument (any sequence but a string): TypeError "name: expected <what>, got <type>" otherwise.
py::sequence check_list(const char* name, const py::object& o, const std::string& what) {
  if (!py::isinstance<py::sequence>(o) || py::isinstance<py::str>(o))
    type_error(name, "expected " + what + ", got " + type_name(o));
  return py::reinterpret_borrow<py::sequence>(o);
}

// ValueError "name: expected <what>, got <length>" unless the list holds n items.
void check_len(const char* name, const py::sequence& s, std::size_t n, const std::string& what) {
  if (std::size_t(py::len(s)) != n) value_error(name, "expected " + what + ", got " + num(ssize(py::len(s))));
}

// Every item of a list as a finite float (TypeError / ValueError naming name[j] otherwise).
std::vector<double> check_floats(const char* name, const py::sequence& s) {
  std::vector<double> v;
  for (std::size_t j = 0; j < std::size_t(py::len(s)); ++j) {
    const py::object x = s[j];
    const std::string nj = item(name, j);
    try {
      v.push_back(x.cast<double>());
    } catch (const py::cast_error&) {
      type_error(nj, "expected a float, got " + type_name(x));
    }
    check_finite(nj.c_str(), v.back());
  }
  return v;
}

// X (N, d), W1 (d, n1) and, when given, W2 (n1, n2) of the wide layer, and their shape (n2 = 0 without W2).
struct Wide {
  py::array X, W1, W2;
  WideShape s;
};

Wide check_wide(Call& call, const py::handle& X, const py::handle& W1, const py::handle* W2, Access weights) {
  Wide w;
  w.X = check_matrix(call, "X", X, shape("N", -1, "d", -1));
  w.W1 = check_matrix(call, "W1", W1, shape("d", w.X.shape(1), "n1", -1), weights);
  if (W2) w.W2 = check_matrix(call, "W2", *W2, shape("n1", w.W1.shape(1), "n2", -1), weights);
  w.s = WideShape{std::size_t(w.X.shape(0)), std::size_t(w.X.shape(1)), std::size_t(w.W1.shape(1)),
                  W2 ? std::size_t(w.W2.shape(1)) : 0};
  return w;
}

// weights[j] = W_{j + k} for j >= j0 of a pyramid, each (n_{k-1}, n_k) with n_{k-1} the last of `dims`: appended to
// Ws, their widths to dims.
void check_chain(Call& call, const py::sequence& ws, std::size_t j0, std::size_t k, std::vector<py::array>& Ws,
                 std::vector<std::size_t>& dims) {
  for (std::size_t j = j0; j < std::size_t(py::len(ws)); ++j) {
    const std::string l = std::to_string(j + k);
    const std::string name = item("weights", j) + " (W_" + l + ")";
    const std::string prev = "n" + std::to_string(j + k - 1);
    Ws.push_back(check_matrix(call, name, ws[j], shape(prev, ssize(dims.back()), "n" + l, -1)));
    dims.push_back(std::size_t(Ws.back().shape(1)));
  }
}

// A new (uninitialized) rows x cols array of the call's dtype.
py::array new_matrix(DType t, std::size_t rows, std::size_t cols) {
  const std::vector<ssize> sh{ssize(rows), ssize(cols)};
  return t == DType::f32 ? py::array(py::array_t<float>(sh)) : py::array(py::array_t<double>(sh));
}

// The output H (N, n2) of the wide layer: `out` checked (it is written while X, W1, W2 are read: it must share no
// memory with them), or a new array when `out` is None.
py::array check_output(Call& call, const Wide& w, const py::object& out) {
  if (out.is_none()) return new_matrix(call.t, w.s.N, w.s.n2);
  py::array o = check_matrix(call, "out", out, shape("N", ssize(w.s.N), "n2", ssize(w.s.n2)), Access::update);
  const std::pair<const py::array*, const char*> read[] = {{&w.X, "X"}, {&w.W1, "W1"}, {&w.W2, "W2"}};
  for (const auto& r : read)
    check_disjoint(o, "out", *r.first, r.second, std::string(" (") + r.second + " is read while out is written)");
  return o;
}

// f(float()) or f(double()) by the call's dtype: the typed part of a binding, written once as a generic lambda.
template <class F>
auto by_dtype(DType t, F&& f) {
  return t == DType::f32 ? f(float()) : f(double());
}

template <class T>
const T* in(const py::array& a) {
  return static_cast<const T*>(a.data());
}
template <class T>
T* out(const py::array& a) {  // checked writeable (mutable_data raises otherwise)
  return static_cast<T*>(const_cast<py::array&>(a).mutable_data());
}

// ======================================================================================================= bindings
py::array forward(const py::object& X, const py::object& W1, const py::object& W2, int act_code, double gamma,
                  double a1, const py::object& out_obj) {
  Call call;
  const Wide w = check_wide(call, X, W1, &W2, Access::read);
  check_act(act_code);
  check_finite("gamma", gamma);
  check_finite("a1", a1);
  const py::array H = check_output(call, w, out_obj);
  by_dtype(call.t, [&](auto z) {
    using T = decltype(z);
    const T *x = in<T>(w.X), *w1 = in<T>(w.W1), *w2 = in<T>(w.W2);
    T* h = out<T>(H);
    py::gil_scoped_release nogil;
    pyrgd::cpu::forward<T>(w.s, x, w1, w2, act_code, T(gamma), T(a1), h);
  });
  return H;
}

py::tuple step(const py::object& X, const py::object& W1, const py::object& W2, const py::object& G, double lr,
               int act_code, double gamma, double a1, bool next_forward, const py::object& out_obj) {
  if (!out_obj.is_none() && !next_forward) value_error("out", "only with next_forward=True (it receives H_next)");
  Call call;
  const Wide w = check_wide(call, X, W1, &W2, Access::update);
  const py::array g = check_matrix(call, "G", G, shape("N", ssize(w.s.N), "n2", ssize(w.s.n2)));
  check_act(act_code);
  check_finite("lr", lr);
  check_finite("gamma", gamma);
  check_finite("a1", a1);
  check_disjoint(w.W1, "W1", w.W2, "W2", " (both are updated in place)");
  const std::pair<const py::array*, const char*> inputs[] = {{&w.X, "X"}, {&g, "G"}};
  for (const auto& i : inputs) {
    check_disjoint(*i.first, i.second, w.W1, "W1", " (W1 is updated in place)");
    check_disjoint(*i.first, i.second, w.W2, "W2", " (W2 is updated in place)");
  }
  py::array H;
  if (next_forward) H = check_output(call, w, out_obj);
  double q1 = 0.0, q2 = 0.0;
  by_dtype(call.t, [&](auto z) {
    using T = decltype(z);
    const T *x = in<T>(w.X), *gp = in<T>(g);
    T *w1 = out<T>(w.W1), *w2 = out<T>(w.W2), *h = next_forward ? out<T>(H) : nullptr;
    py::gil_scoped_release nogil;
    pyrgd::cpu::step<T>(w.s, x, w1, w2, gp, T(lr), act_code, T(gamma), T(a1), h, &q1, &q2);
  });
  return py::make_tuple(next_forward ? py::object(H) : py::object(py::none()), q1, q2);
}

// The wide layer's gradients given G = dPhi/dH, nothing applied: (dW1, dW2) or (dW1, dW2, dX) with input_grad;
// see pyrgd/wide_grad.h. out: None (new arrays) or a list of 2 (3 with input_grad) writeable arrays of the shapes,
// sharing no memory with the inputs or each other.
py::tuple wide_grad(const py::object& X, const py::object& W1, const py::object& W2, const py::object& G,
                    int act_code, double gamma, double a1, bool input_grad, const py::object& out_obj) {
  Call call;
  const Wide w = check_wide(call, X, W1, &W2, Access::read);
  const py::array g = check_matrix(call, "G", G, shape("N", ssize(w.s.N), "n2", ssize(w.s.n2)));
  check_act(act_code);
  check_finite("gamma", gamma);
  check_finite("a1", a1);
  const std::size_t nout = input_grad ? 3 : 2;
  const char* names[] = {"out[0] (dW1)", "out[1] (dW2)", "out[2] (dX)"};
  const std::size_t rows[] = {w.s.d, w.s.n1, w.s.N}, cols[] = {w.s.n1, w.s.n2, w.s.d};
  std::vector<py::array> outs;
  if (out_obj.is_none()) {
    for (std::size_t i = 0; i < nout; ++i) outs.push_back(new_matrix(call.t, rows[i], cols[i]));
  } else {
    const py::sequence os = check_list("out", out_obj, "None or a list of arrays [dW1, dW2] (and dX)");
    check_len("out", os, nout, std::to_string(nout) + " arrays (dW1, dW2" + (input_grad ? ", dX)" : ")"));
    const char* rn[] = {"d", "n1", "N"};
    const char* cn[] = {"n1", "n2", "d"};
    for (std::size_t i = 0; i < nout; ++i)
      outs.push_back(check_matrix(call, names[i], os[i], shape(rn[i], ssize(rows[i]), cn[i], ssize(cols[i])),
                                  Access::write));
    const std::pair<const py::array*, const char*> read[] = {{&w.X, "X"}, {&w.W1, "W1"}, {&w.W2, "W2"}, {&g, "G"}};
    for (std::size_t i = 0; i < nout; ++i) {
      for (const auto& r : read) check_disjoint(outs[i], names[i], *r.first, r.second);
      for (std::size_t k = 0; k < i; ++k) check_disjoint(outs[i], names[i], outs[k], names[k]);
    }
  }
  by_dtype(call.t, [&](auto z) {
    using T = decltype(z);
    const T *x = in<T>(w.X), *w1 = in<T>(w.W1), *w2 = in<T>(w.W2), *gp = in<T>(g);
    T *g1 = out<T>(outs[0]), *g2 = out<T>(outs[1]), *gx = input_grad ? out<T>(outs[2]) : nullptr;
    py::gil_scoped_release nogil;
    pyrgd::cpu::wide_grad<T>(w.s, x, w1, w2, gp, act_code, T(gamma), T(a1), g1, g2, gx);
  });
  py::tuple res(nout);
  for (std::size_t i = 0; i < nout; ++i) res[i] = outs[i];
  return res;
}

py::array gram(const py::object& X, const py::object& W1, const py::object& W2, const py::object& B2, int act_code,
               double gamma, double a1) {
  if (W2.is_none() != B2.is_none()) value_error("W2, B2", "give both (for B1 B1^T) or neither (for F1 F1^T)");
  const bool backward = !B2.is_none();
  Call call;
  const Wide w = check_wide(call, X, W1, backward ? &W2 : nullptr, Access::read);
  py::array b2;
  if (backward) b2 = check_matrix(call, "B2", B2, shape("N", ssize(w.s.N), "n2", ssize(w.s.n2)));
  check_act(act_code);
  check_finite("gamma", gamma);
  check_finite("a1", a1);
  const py::array K = new_matrix(call.t, w.s.N, w.s.N);
  by_dtype(call.t, [&](auto z) {
    using T = decltype(z);
    const T *x = in<T>(w.X), *w1 = in<T>(w.W1), *w2 = backward ? in<T>(w.W2) : nullptr;
    const T* b = backward ? in<T>(b2) : nullptr;
    T* k = out<T>(K);
    py::gil_scoped_release nogil;
    pyrgd::cpu::gram<T>(w.s, x, w1, w2, b, act_code, T(gamma), T(a1), k);
  });
  return K;
}

// (sigma(Z) or None, sigma'(Z) or None) by the kernels' own activation code; Z: a C-contiguous float array, any
// shape (empty included).
py::tuple activation(const py::object& Zobj, int act_code, double gamma, bool value, bool derivative) {
  Call call;
  const py::array Z = check_array(call, "Z", Zobj, -1, nullptr, Access::read);
  check_act(act_code);
  check_finite("gamma", gamma);
  const std::vector<ssize> sh(Z.shape(), Z.shape() + Z.ndim());
  py::object S = py::none(), D = py::none();
  by_dtype(call.t, [&](auto z) {
    using T = decltype(z);
    const py::array Sa = value ? py::array(py::array_t<T>(sh)) : py::array();
    const py::array Da = derivative ? py::array(py::array_t<T>(sh)) : py::array();
    T* sp = value ? out<T>(Sa) : nullptr;
    T* dp = derivative ? out<T>(Da) : nullptr;
    if (value) S = Sa;
    if (derivative) D = Da;
    const T* zp = in<T>(Z);
    const std::size_t count = std::size_t(Z.size());
    py::gil_scoped_release nogil;
    pyrgd::cpu::activation<T>(count, zp, act_code, T(gamma), sp, dp);
  });
  return py::make_tuple(S, D);
}

// The tail (layers 2..L) from H: (loss, G = dPhi/dZ_2, [dPhi/dW_3, ..., dPhi/dW_L]); see pyrgd/tail.h.
py::tuple tail(const py::object& H_obj, const py::object& Y_obj, const py::object& W_obj, int act_code, double gamma,
               const py::object& m_obj, const py::object& out_obj) {
  Call call;
  const py::array H = check_matrix(call, "H", H_obj, shape("N", -1, "n2", -1));
  const ssize N = H.shape(0);
  const py::sequence ws = check_list("weights", W_obj, "a list of the tail's weights [W_3, ..., W_L]");
  const py::sequence ms = check_list("multipliers", m_obj, "a list of floats [a_2, ..., a_{L-1}]");
  const std::size_t nt = std::size_t(py::len(ws));
  check_len("multipliers", ms, nt, "one per tail weight (" + std::to_string(nt) + " values a_2..)");
  std::vector<py::array> Ws;
  std::vector<std::size_t> dims{std::size_t(H.shape(1))};
  check_chain(call, ws, 0, 3, Ws, dims);
  const std::vector<double> mult = check_floats("multipliers", ms);
  const py::array Y = check_matrix(call, "Y", Y_obj, shape("N", N, "n_L", ssize(dims.back())));
  check_act(act_code);
  check_finite("gamma", gamma);
  py::array G;
  if (out_obj.is_none()) {
    G = new_matrix(call.t, std::size_t(N), dims[0]);
  } else {
    G = check_matrix(call, "out", out_obj, shape("N", N, "n2", ssize(dims[0])), Access::update);
    check_disjoint(G, "out", H, "H", " (H is read while out is written)");
    check_disjoint(G, "out", Y, "Y", " (Y is read while out is written)");
    for (std::size_t j = 0; j < nt; ++j) check_disjoint(G, "out", Ws[j], item("weights", j));
  }
  py::list grads;
  double loss = 0.0;
  by_dtype(call.t, [&](auto z) {
    using T = decltype(z);
    std::vector<const T*> wp(nt);
    std::vector<T*> gp(nt);
    const std::vector<T> mt(mult.begin(), mult.end());
    for (std::size_t j = 0; j < nt; ++j) {
      wp[j] = in<T>(Ws[j]);
      const py::array gj = new_matrix(call.t, dims[j], dims[j + 1]);
      gp[j] = out<T>(gj);
      grads.append(gj);
    }
    const T *h = in<T>(H), *y = in<T>(Y);
    T* g = out<T>(G);
    py::gil_scoped_release nogil;
    loss = pyrgd::cpu::tail<T>(std::size_t(N), nt, dims.data(), h, y, wp.data(), mt.data(), act_code, T(gamma), g,
                               gp.data());
  });
  return py::make_tuple(loss, G, grads);
}

// The loss and every gradient of the network in one pass over panels of rows: (loss, [dPhi/dW_1, ...,
// dPhi/dW_L], [||dPhi/dW_l||^2]); see pyrgd/grad.h (network_grad).
// With `combine` (not None): one rank's share, network_grad_shard (pyrgd/grad.h): weights[0], weights[1] the
// shard's; lane_blocks, groups and panel_rows the whole layer's; combine(r0, rows, lanes, f2) a Python function
// writing the panel's whole Z_2 into f2 (rows, n2) from its lanes' parts `lanes` (nlanes, rows, n2, read-only);
// block_sq: None or a float64 array of 2 x (the shard's blocks of 64) receiving the per-block squared norms.
py::tuple network_grad(const py::object& X, const py::object& Y_obj, const py::object& W_obj, int act_code,
                       double gamma, const py::object& m_obj, const py::object& g_obj, ssize panel_rows,
                       ssize kept_neurons, const py::object& work_obj, ssize lane_blocks, ssize groups,
                       const py::object& combine, const py::object& block_sq_obj) {
  const py::sequence ws = check_list("weights", W_obj, "a list of the weights [W_1, ..., W_L]");
  const py::sequence ms = check_list("multipliers", m_obj, "a list of floats [a_1, ..., a_{L-1}]");
  const std::size_t L = std::size_t(py::len(ws));
  if (L < 2) value_error("weights", "expected at least two weights [W_1, W_2, ...], got " + std::to_string(L));
  check_len("multipliers", ms, L - 1, "L - 1 = " + std::to_string(L - 1) + " values a_1..");
  Call call;
  const py::object w1 = ws[0], w2 = ws[1];
  const Wide w = check_wide(call, X, w1, &w2, Access::read);
  std::vector<py::array> Ws{w.W1, w.W2};
  std::vector<std::size_t> tdims{w.s.n2};
  check_chain(call, ws, 2, 1, Ws, tdims);
  const std::vector<double> mult = check_floats("multipliers", ms);
  const py::array Y = check_matrix(call, "Y", Y_obj, shape("N", ssize(w.s.N), "n_L", ssize(tdims.back())));
  check_act(act_code);
  check_finite("gamma", gamma);
  check_range("panel_rows", panel_rows, 0, ssize(1) << 20, "0 (automatic) or 1..2^20 rows");
  check_range("kept_neurons", kept_neurons, -1, ssize(w.s.n1), "-1 (all) or 0..n1 = " + std::to_string(w.s.n1));
  const std::size_t kept = kept_neurons < 0 ? w.s.n1 : std::size_t(kept_neurons);
  const bool sharded = !combine.is_none();
  if (sharded && !PyCallable_Check(combine.ptr())) type_error("combine", "expected None or a callable");
  if (sharded) {
    check_range("lane_blocks", lane_blocks, 1, ssize(1) << 40, "the whole layer's blocks per lane (>= 1)");
    check_range("groups", groups, 1, ssize(1) << 20, "the whole layer's row groups (>= 1)");
  }
  py::array block_sq;  // (a default py::array is an empty array, not None: has_block_sq says whether one was given)
  const bool has_block_sq = !block_sq_obj.is_none();
  const std::size_t nblocks = (w.s.n1 + 63) / 64;
  if (has_block_sq) {
    if (!sharded) value_error("block_sq", "expected None unless combine is given (a shard)");
    // an ndarray itself, not anything py::array::ensure would copy (the norms would land in the copy)
    if (!py::isinstance<py::array>(block_sq_obj))
      type_error("block_sq", "expected None or a numpy.ndarray, got " +
                                 std::string(py::str(py::type::of(block_sq_obj).attr("__name__"))));
    block_sq = py::reinterpret_borrow<py::array>(block_sq_obj);
    if (!block_sq.dtype().is(py::dtype::of<double>()) || block_sq.ndim() != 1 ||
        std::size_t(block_sq.shape(0)) != 2 * nblocks || !(block_sq.flags() & py::array::c_style) ||
        !(block_sq.flags() & kAlignedFlag) || !block_sq.writeable())
      value_error("block_sq", "expected None or a writeable, aligned, contiguous float64 array of " +
                                  std::to_string(2 * nblocks) + " values (2 x the shard's blocks of 64)");
    check_disjoint(block_sq, "block_sq", w.X, "X");
    check_disjoint(block_sq, "block_sq", Y, "Y");
    for (std::size_t l = 0; l < L; ++l) check_disjoint(block_sq, "block_sq", Ws[l], item("weights", l));
  }
  std::vector<py::array> G;
  if (g_obj.is_none()) {
    for (const auto& a : Ws) G.push_back(new_matrix(call.t, std::size_t(a.shape(0)), std::size_t(a.shape(1))));
  } else {
    const py::sequence gs = check_list("grads", g_obj, "None or a list of L arrays shaped like the weights");
    check_len("grads", gs, L, std::to_string(L) + " arrays (one per weight)");
    for (std::size_t l = 0; l < L; ++l)
      G.push_back(check_matrix(call, item("grads", l), gs[l], like(Ws[l], item("weights", l)), Access::update));
    for (std::size_t l = 0; l < L; ++l) {
      check_disjoint(G[l], item("grads", l), w.X, "X");
      check_disjoint(G[l], item("grads", l), Y, "Y");
      for (std::size_t k = 0; k < L; ++k) {
        check_disjoint(G[l], item("grads", l), Ws[k], item("weights", k));
        if (k < l) check_disjoint(G[l], item("grads", l), G[k], item("grads", k));
      }
    }
  }
  // the workspace: a 1-D writeable array of the call's dtype, large enough, sharing no memory with any other array
  py::array work;
  const bool has_work = !work_obj.is_none();
  if (has_work) {
    work = check_array(call, "workspace", work_obj, 1, nullptr, Access::write);
    const std::size_t isz = call.t == DType::f32 ? 4 : 8;
    const std::size_t need = sharded ? pyrgd::cpu::grad_shard_workspace_elems(w.s, act_code, isz,
                                                                             std::size_t(panel_rows),
                                                                             std::size_t(lane_blocks),
                                                                             std::size_t(groups))
                                     : pyrgd::cpu::grad_workspace_elems(w.s, act_code, isz, std::size_t(panel_rows),
                                                                        kept);
    if (std::size_t(work.size()) < need)
      value_error("workspace", "expected at least " + std::to_string(need) + " elements (" +
                                   (sharded ? "grad_shard_workspace_size" : "grad_workspace_size") + "), got " +
                                   num(work.size()));
    check_disjoint(work, "workspace", w.X, "X");
    check_disjoint(work, "workspace", Y, "Y");
    for (std::size_t l = 0; l < L; ++l) {
      check_disjoint(work, "workspace", Ws[l], item("weights", l));
      check_disjoint(work, "workspace", G[l], item("grads", l));
    }
  }
  if (has_block_sq) {
    for (std::size_t l = 0; l < L; ++l) check_disjoint(block_sq, "block_sq", G[l], item("grads", l));
    if (has_work) check_disjoint(block_sq, "block_sq", work, "workspace");
  }
  // a shard without a workspace gets one here, a NumPy array: combine's views of the kernel's memory keep it alive
  // (a view kept past the call, in a traceback or by the callback, never points into freed memory)
  bool own_work = false;
  if (sharded && !has_work) {
    const std::size_t n = pyrgd::cpu::grad_shard_workspace_elems(w.s, act_code, call.t == DType::f32 ? 4 : 8,
                                                                 std::size_t(panel_rows), std::size_t(lane_blocks),
                                                                 std::size_t(groups));
    work = call.t == DType::f32 ? py::array(py::array_t<float>(ssize(n))) : py::array(py::array_t<double>(ssize(n)));
    own_work = true;
  }
  const bool use_work = has_work || own_work;
  const std::size_t nt = L - 2;
  std::vector<double> sq(L, 0.0);
  double loss = 0.0;
  by_dtype(call.t, [&](auto z) {
    using T = decltype(z);
    std::vector<const T*> wt(nt);
    std::vector<T*> gt(nt);
    for (std::size_t j = 0; j < nt; ++j) {
      wt[j] = in<T>(Ws[j + 2]);
      gt[j] = out<T>(G[j + 2]);
    }
    const std::vector<T> mt(mult.begin(), mult.end());
    const T *x = in<T>(w.X), *y = in<T>(Y), *w1 = in<T>(w.W1), *w2 = in<T>(w.W2);
    T *g1 = out<T>(G[0]), *g2 = out<T>(G[1]), *wk = use_work ? out<T>(work) : nullptr;
    const std::size_t wn = use_work ? std::size_t(work.size()) : 0;
    if (!sharded) {
      py::gil_scoped_release nogil;
      loss = pyrgd::cpu::network_grad<T>(w.s, nt, tdims.data(), x, y, w1, w2, wt.data(), mt.data(), act_code,
                                         T(gamma), g1, g2, gt.data(), sq.data(), std::size_t(panel_rows), kept, wk, wn);
      return;
    }
    // a shard: combine runs Python (with the GIL) between the panels' phases, on the calling thread; a Python
    // exception it raises is kept and raised again here, as it was
    pyrgd::cpu::GradShard<T> shard;
    shard.lane_blocks = std::size_t(lane_blocks);
    shard.groups = std::size_t(groups);
    shard.block_sq = has_block_sq ? static_cast<double*>(block_sq.mutable_data()) : nullptr;
    py::object py_error;  // the exception combine raised (set and dropped with the GIL held)
    const std::size_t n2 = w.s.n2;
    shard.combine = [&](std::size_t r0, std::size_t rows, const T* lanes, std::size_t nl, std::size_t stride, T* f2) {
      py::gil_scoped_acquire gil;
      try {
        // views of the workspace (no copy), based on it: they keep it alive however long they live
        py::array L(py::dtype::of<T>(), {nl, rows, n2}, {stride * sizeof(T), n2 * sizeof(T), sizeof(T)}, lanes, work);
        L.attr("flags").attr("writeable") = false;
        py::array F(py::dtype::of<T>(), {rows, n2}, {n2 * sizeof(T), sizeof(T)}, f2, work);
        combine(r0, rows, L, F);
      } catch (py::error_already_set& e) {
        py_error = e.value();
      }
      if (py_error) throw std::runtime_error("combine raised an exception");
    };
    {
      py::gil_scoped_release nogil;
      try {
        loss = pyrgd::cpu::network_grad_shard<T>(w.s, nt, tdims.data(), x, y, w1, w2, wt.data(), mt.data(), act_code,
                                                 T(gamma), g1, g2, gt.data(), sq.data(), std::size_t(panel_rows),
                                                 shard, wk, wn);
      } catch (const std::runtime_error&) {
        if (!py_error) throw;
      }
    }
    if (py_error) {
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(py_error.ptr())), py_error.ptr());
      throw py::error_already_set();
    }
  });
  py::list grads, sql;
  for (std::size_t l = 0; l < L; ++l) {
    grads.append(G[l]);
    sql.append(sq[l]);
  }
  return py::make_tuple(loss, grads, sql);
}

// W_l -= lr G_l for every pair, in one call without the GIL (so that a KeyboardInterrupt cannot land between two
// layers): weights and grads are lists of one dtype, pairwise of one shape, C-contiguous, weights writeable, no array
// of one list overlapping any of the other or of its own.
void sgd_update(const py::object& W_obj, const py::object& G_obj, double lr) {
  const py::sequence ws = check_list("weights", W_obj, "a list of arrays");
  const py::sequence gs = check_list("grads", G_obj, "a list of arrays");
  const std::size_t L = std::size_t(py::len(ws));
  if (L == 0) value_error("weights", "expected at least one array");
  check_len("grads", gs, L, std::to_string(L) + " arrays (one per weight)");
  check_finite("lr", lr);
  Call call;
  std::vector<py::array> W, G;
  for (std::size_t l = 0; l < L; ++l) {
    W.push_back(check_matrix(call, item("weights", l), ws[l], shape("rows", -1, "cols", -1), Access::update));
    G.push_back(check_matrix(call, item("grads", l), gs[l], like(W[l], item("weights", l))));
  }
  for (std::size_t l = 0; l < L; ++l)
    for (std::size_t k = 0; k < L; ++k) {
      check_disjoint(W[l], item("weights", l), G[k], item("grads", k));
      if (k < l) check_disjoint(W[l], item("weights", l), W[k], item("weights", k), " (both are updated)");
    }
  by_dtype(call.t, [&](auto z) {
    using T = decltype(z);
    std::vector<T*> wp(L);
    std::vector<const T*> gp(L);
    std::vector<std::size_t> n(L);
    for (std::size_t l = 0; l < L; ++l) {
      wp[l] = out<T>(W[l]);
      gp[l] = in<T>(G[l]);
      n[l] = std::size_t(W[l].size());
    }
    py::gil_scoped_release nogil;
    for (std::size_t l = 0; l < L; ++l) pyrgd::cpu::sgd_update<T>(n[l], wp[l], gp[l], T(lr));
  });
}

int isa_code(const std::string& name) {
  if (name == "generic") return 0;
  if (name == "avx2") return 1;
  if (name == "avx512") return 2;
  if (name == "auto") return -1;
  value_error("isa", "expected 'auto', 'generic', 'avx2' or 'avx512', got '" + name + "'");
}

py::list available_isas() {
  py::list l;
  for (int i = 0; i <= pyrgd::cpu::best_isa(); ++i) l.append(pyrgd::cpu::isa_name(i));
  return l;
}

// {name: code} of every activation, from the table of pyrgd/activations.h.
py::dict activation_table() {
  py::dict d;
#define PYRGD_ACT_ENTRY_(S, c) d[pyrgd::act::S::name] = (c);
  PYRGD_FOR_EACH_ACTIVATION(PYRGD_ACT_ENTRY_)
#undef PYRGD_ACT_ENTRY_
  return d;
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
  m.def("wide_grad", &wide_grad, py::arg("X"), py::arg("W1"), py::arg("W2"), py::arg("G"), py::arg("act_code"),
        py::arg("gamma") = 0.0, py::arg("a1") = 1.0, py::arg("input_grad") = false, py::arg("out") = py::none(),
        "The wide layer's gradients given G = dPhi/dH (N, n2), nothing updated: (dW1 (d, n1), dW2 (n1, n2)), and "
        "dX (N, d) with input_grad. out: None or a list of those arrays (writeable, sharing no memory with the "
        "inputs or each other), written. Nothing N x n1 is allocated; bit-identical for any number of threads.");
  m.def("gram", &gram, py::arg("X"), py::arg("W1"), py::arg("W2") = py::none(), py::arg("B2") = py::none(),
        py::arg("act_code") = 0, py::arg("gamma") = 0.0, py::arg("a1") = 1.0,
        "K (N, N) = F F^T with F = a1 sigma(X W1), or with F = a1 (B2 W2^T) (.) sigma'(X W1) when W2 and B2 are "
        "given.");
  m.def("get_num_threads", &pyrgd::cpu::get_num_threads, "Threads the kernels use.");
  m.def(
      "set_num_threads",
      [](int n) {
        check_range("n", n, 0, 4096, "0 (OpenMP's default) or 1..4096 threads");
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
          value_error("isa", "'" + name + "' is not available in this build on this CPU (available: " +
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
        py::arg("lane_blocks") = 0, py::arg("groups") = 0, py::arg("combine") = py::none(),
        py::arg("block_sq") = py::none(),
        "The loss and every gradient of the whole network at the current weights in one pass over panels of rows: "
        "returns (loss, grads, grad_sq) with loss = 1/2 ||F_L - Y||^2, grads = [dPhi/dW_1, ..., dPhi/dW_L] (written "
        "into `grads` when given: L writeable arrays shaped like the weights that share no memory with the inputs "
        "or each other) and grad_sq = [||dPhi/dW_l||_F^2]. weights: [W_1, ..., W_L] (L >= 2); multipliers: "
        "[a_1, ..., a_{L-1}]; Y (N, n_L). Nothing N x n1 is allocated (a panel of R x n1 values of sigma and "
        "sigma'; R = panel_rows, or 0: chosen from the shapes). kept_neurons: the first neurons (rounded up to a "
        "block of 64) whose sigma, sigma' the panels hold (-1: all); the others are recomputed, in a pass over the "
        "rows before the panels and one over their blocks after. workspace: None, or a 1-D array of the dtype with "
        "at least grad_workspace_size(...) elements, kept from call to call (the large work arrays live there "
        "instead of being allocated per call). Bit-identical for any number of threads. With combine (a function "
        "(r0, rows, lanes, f2)): one rank's share of a neuron-sharded run (pyrgd/grad.h, network_grad_shard), its "
        "lanes of whole-layer geometry lane_blocks, groups and panel_rows; block_sq receives per-block norms.");
  m.def(
      "grad_workspace_size",
      [](std::size_t N, std::size_t d, std::size_t n1, std::size_t n2, int act_code, std::size_t itemsize,
         std::size_t panel_rows, ssize kept_neurons, ssize threads) {
        if (N < 1 || d < 1 || n1 < 1 || n2 < 1 || (itemsize != 4 && itemsize != 8))
          value_error("grad_workspace_size", "expected N, d, n1, n2 >= 1 and itemsize 4 or 8");
        check_act(act_code);
        check_range("kept_neurons", kept_neurons, -1, ssize(n1), "-1 (all) or 0..n1 = " + std::to_string(n1));
        check_range("threads", threads, 1, ssize(1) << 16, "1..65536 threads");
        const WideShape s{N, d, n1, n2};
        return pyrgd::cpu::grad_workspace_elems(s, act_code, itemsize, panel_rows,
                                                kept_neurons < 0 ? n1 : std::size_t(kept_neurons),
                                                std::size_t(threads));
      },
      py::arg("N"), py::arg("d"), py::arg("n1"), py::arg("n2"), py::arg("act_code"), py::arg("itemsize"),
      py::arg("panel_rows") = 0, py::arg("kept_neurons") = -1, py::arg("threads") = 1,
      "The elements network_grad's `workspace` must hold for these shapes (of its dtype, itemsize 4 or 8) and "
      "threads (where they run row groups of their own, a panel's arrays for each; 1: the least it accepts).");
  m.def(
      "grad_lane_blocks",
      [](ssize n1) {
        check_range("n1", n1, 1, ssize(1) << 40, "1..2^40 neurons");
        return pyrgd::cpu::grad_lane_blocks(std::size_t(n1));
      },
      py::arg("n1"),
      "Blocks of 64 neurons per lane of network_grad for a wide layer of n1 neurons (all kept): Z_2 of a panel is "
      "the lanes' parts added in lane order, so a shard of a distributed run holds whole lanes.");
  m.def(
      "grad_shard_workspace_size",
      [](std::size_t N, std::size_t d, std::size_t n1, std::size_t n2, int act_code, std::size_t itemsize,
         std::size_t panel_rows, std::size_t lane_blocks, std::size_t groups) {
        if (N < 1 || d < 1 || n1 < 1 || n2 < 1 || (itemsize != 4 && itemsize != 8))
          value_error("grad_shard_workspace_size", "expected N, d, n1 (the shard's), n2 >= 1 and itemsize 4 or 8");
        check_act(act_code);
        return pyrgd::cpu::grad_shard_workspace_elems(WideShape{N, d, n1, n2}, act_code, itemsize, panel_rows,
                                                      lane_blocks, groups);
      },
      py::arg("N"), py::arg("d"), py::arg("n1"), py::arg("n2"), py::arg("act_code"), py::arg("itemsize"),
      py::arg("panel_rows"), py::arg("lane_blocks"), py::arg("groups"),
      "The elements network_grad's `workspace` must hold for a shard (n1: its neurons; panel_rows, lane_blocks, "
      "groups: the whole layer's).");
  m.def(
      "set_grad_schedule",
      [](const std::string& name) {
        int code = -1;
        if (name == "auto") code = pyrgd::cpu::kGradScheduleAuto;
        if (name == "team") code = pyrgd::cpu::kGradScheduleTeam;
        if (name == "groups") code = pyrgd::cpu::kGradScheduleGroups;
        if (code < 0) value_error("schedule", "expected 'auto', 'team' or 'groups', got '" + name + "'");
        pyrgd::cpu::set_grad_schedule(code);
      },
      py::arg("schedule"),
      "How network_grad's threads share a step where its workspace has a panel per thread: 'team' (all on each "
      "panel), 'groups' (whole row groups per thread) or 'auto' (the faster, measured call by call). Same bits.");
  m.def(
      "get_grad_schedule",
      [] {
        const int c = pyrgd::cpu::get_grad_schedule();
        return std::string(c == pyrgd::cpu::kGradScheduleTeam ? "team"
                           : c == pyrgd::cpu::kGradScheduleGroups ? "groups" : "auto");
      },
      "The schedule set by set_grad_schedule ('auto' by default).");
  m.def(
      "last_grad_schedule",
      []() -> py::object {
        const int c = pyrgd::cpu::last_grad_schedule();
        if (c < 0) return py::none();
        return py::str(c == pyrgd::cpu::kGradScheduleGroups ? "groups" : "team");
      },
      "What the last network_grad call ran: 'team' or 'groups' (None before any call).");
  m.def(
      "grad_row_groups",
      [](std::size_t N, std::size_t d, std::size_t n1, std::size_t n2, int act_code, std::size_t itemsize,
         std::size_t panel_rows, ssize kept_neurons) {
        if (N < 1 || d < 1 || n1 < 1 || n2 < 1 || (itemsize != 4 && itemsize != 8))
          value_error("grad_row_groups", "expected N, d, n1, n2 >= 1 and itemsize 4 or 8");
        check_act(act_code);
        check_range("kept_neurons", kept_neurons, -1, ssize(n1), "-1 (all) or 0..n1 = " + std::to_string(n1));
        const WideShape s{N, d, n1, n2};
        return pyrgd::cpu::grad_row_groups(s, act_code, itemsize, panel_rows,
                                           kept_neurons < 0 ? n1 : std::size_t(kept_neurons));
      },
      py::arg("N"), py::arg("d"), py::arg("n1"), py::arg("n2"), py::arg("act_code"), py::arg("itemsize"),
      py::arg("panel_rows") = 0, py::arg("kept_neurons") = -1,
      "The row groups of network_grad for these shapes (each accumulates its own share of the gradients; the sum "
      "over them in order is fixed by the shapes: the bits do not depend on the threads).");
  m.def(
      "grad_panel_rows",
      [](std::size_t N, std::size_t n1, std::size_t n2, std::size_t itemsize, int act_code) {
        if (N == 0 || n1 == 0 || n2 == 0 || (itemsize != 4 && itemsize != 8))
          value_error("grad_panel_rows", "expected N, n1, n2 >= 1 and itemsize 4 or 8");
        if (act_code != -1 && !pyrgd::cpu::is_activation_code(act_code))
          value_error("act_code", "expected -1 (not ReLU) or an activation code, got " + std::to_string(act_code));
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
          value_error("dtype", "expected 'float32' or 'float64', got '" + dtype + "'");
        if (!(seconds > 0.0 && seconds <= 60.0)) value_error("seconds", "expected a number in (0, 60]");
        py::gil_scoped_release nogil;
        return dtype == "float32" ? pyrgd::cpu::fma_peak_gflops<float>(seconds)
                                  : pyrgd::cpu::fma_peak_gflops<double>(seconds);
      },
      py::arg("dtype") = "float32", py::arg("seconds") = 0.2,
      "The machine's floating-point roof: GFLOP/s of independent FMA chains on registers with the kernels' "
      "instruction set, on the kernels' threads at once, over about `seconds` (no memory traffic).");
  m.def("build_info", &build_info, "How this module was built: compiler, OpenMP, block size, ISA flags.");
  m.attr("ACTIVATIONS") = activation_table();
  m.attr("BLOCK_SIZE") = int(pyrgd::cpu::kBlock);
  m.attr("GRAD_PANEL_BYTES") = std::size_t(pyrgd::cpu::kGradPanelBytes);
  m.attr("GRAD_SHARD_BATCH") = std::size_t(pyrgd::cpu::kGradShardBatch);
  m.attr("GRAD_PANEL_ROWS_MIN") = std::size_t(pyrgd::cpu::kGradPanelRowsMin);
}
