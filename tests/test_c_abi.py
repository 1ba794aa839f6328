"""pyrgd's C ABI (pyrgd/pyrgd.h, libpyrgd): a C program compiled with `cc` and a C++ program built with CMake
(find_package(pyrgd CONFIG), pyrgd::pyrgd) against the built package give pyrgd.ops' bits; errors are codes with a
message."""
import os
import pathlib
import re
import shutil
import subprocess

import numpy as np
import pytest

import pyrgd
import pyrgd.native as native
import pyrgd.ops as ops
from pyrgd.activations import parse_activation

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Reads X, W1, W2, G (raw, row-major) from argv[6], runs every function of the ABI, writes the results beside them.
C_PROGRAM = r"""
#include <pyrgd/pyrgd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SUFFIX)

static const char* dir;
static REAL* load(const char* name, long n) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s.bin", dir, name);
  FILE* f = fopen(path, "rb");
  REAL* a = malloc(sizeof(REAL) * n);
  if (!f || fread(a, sizeof(REAL), n, f) != (size_t)n) { fprintf(stderr, "cannot read %s\n", path); exit(2); }
  fclose(f);
  return a;
}
static void save(const char* name, const REAL* a, long n) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s.out", dir, name);
  FILE* f = fopen(path, "wb");
  fwrite(a, sizeof(REAL), n, f);
  fclose(f);
}
#define CHECK(call) do { int rc_ = (call); if (rc_) { printf("error %d: %s\n", rc_, pyrgd_last_error()); return 1; } } while (0)

int main(int argc, char** argv) {
  long N = atol(argv[1]), d = atol(argv[2]), n1 = atol(argv[3]), n2 = atol(argv[4]);
  const char* act = argv[5];
  dir = argv[6];
  REAL a1 = (REAL)atof(argv[7]), lr = (REAL)atof(argv[8]);
  REAL *X = load("X", N * d), *W1 = load("W1", d * n1), *W2 = load("W2", n1 * n2), *G = load("G", N * n2);
  REAL *H = malloc(sizeof(REAL) * N * n2), *dW1 = malloc(sizeof(REAL) * d * n1);
  REAL *dW2 = malloc(sizeof(REAL) * n1 * n2), *dX = malloc(sizeof(REAL) * N * d);
  CHECK(FN(pyrgd_wide_forward_)(X, W1, W2, H, N, d, n1, n2, act, a1));
  save("H", H, N * n2);
  CHECK(FN(pyrgd_wide_grad_)(X, W1, W2, G, dW1, dW2, N, d, n1, n2, act, a1));
  save("dW1", dW1, d * n1);
  save("dW2", dW2, n1 * n2);
  CHECK(FN(pyrgd_wide_grad_dx_)(X, W1, W2, G, dW1, dW2, dX, N, d, n1, n2, act, a1));
  save("dX", dX, N * d);
  CHECK(pyrgd_set_num_threads(1));
  CHECK(FN(pyrgd_wide_step_)(X, W1, W2, G, lr, G, N, d, n1, n2, act, a1)); /* H_next into G itself */
  save("W1s", W1, d * n1);
  save("W2s", W2, n1 * n2);
  save("Hnext", G, N * n2);
  printf("ok %s threads %d\n", pyrgd_version(), pyrgd_get_num_threads());
  return 0;
}
"""

# Every kind of bad call: the code and the message of each.
C_ERRORS = r"""
#include <pyrgd/pyrgd.h>
#include <stdio.h>

static void report(const char* what, int rc) { printf("%s|%d|%s\n", what, rc, pyrgd_last_error()); }

int main(void) {
  double X[6] = {1, 2, 3, 4, 5, 6}, W1[6] = {1, 0, 0, 1, 1, 1}, W2[2] = {1, 1}, H[2], G[2] = {1, 1};
  double dW1[6], dW2[2];
  report("first", 0);
  report("act", pyrgd_wide_forward_f64(X, W1, W2, H, 2, 3, 2, 1, "sigmoid", 1.0));
  report("slope", pyrgd_wide_forward_f64(X, W1, W2, H, 2, 3, 2, 1, "leaky_relu(1.5)", 1.0));
  report("noslope", pyrgd_wide_forward_f64(X, W1, W2, H, 2, 3, 2, 1, "tanh(0.1)", 1.0));
  report("null", pyrgd_wide_forward_f64(X, NULL, W2, H, 2, 3, 2, 1, "relu", 1.0));
  report("dim", pyrgd_wide_forward_f64(X, W1, W2, H, 0, 3, 2, 1, "relu", 1.0));
  report("overlap", pyrgd_wide_forward_f64(X, W1, W2, X, 2, 3, 2, 1, "relu", 1.0));
  report("a1", pyrgd_wide_forward_f64(X, W1, W2, H, 2, 3, 2, 1, "relu", 1.0 / 0.0));
  report("step", pyrgd_wide_step_f64(X, W1, W1, G, 0.1, NULL, 2, 3, 2, 1, "relu", 1.0));
  report("grad", pyrgd_wide_grad_f64(X, W1, W2, G, dW1, dW1, 2, 3, 2, 1, "relu", 1.0));
  report("threads", pyrgd_set_num_threads(-1));
  report("fine", pyrgd_wide_forward_f64(X, W1, W2, H, 2, 3, 2, 1, " Smooth_Leaky_ReLU( 0.3 ) ", 1.0));
  report("hex", pyrgd_wide_forward_f64(X, W1, W2, H, 2, 3, 2, 1, "leaky_relu(0x1p-2)", 1.0));
  report("comma", pyrgd_wide_forward_f64(X, W1, W2, H, 2, 3, 2, 1, "leaky_relu(0,5)", 1.0));
  float Xf[6] = {1, 2, 3, 4, 5, 6}, W1f[6] = {1, 0, 0, 1, 1, 1}, W2f[2] = {1, 1}, Hf[2];
  report("f32slope", pyrgd_wide_forward_f32(Xf, W1f, W2f, Hf, 2, 3, 2, 1, "leaky_relu(1e-50)", 1.0f));
  report("f64slope", pyrgd_wide_forward_f64(X, W1, W2, H, 2, 3, 2, 1, "leaky_relu(1e-50)", 1.0));
  return 0;
}
"""

C_LOCALE = r"""
#include <pyrgd/pyrgd.h>
#include <locale.h>
#include <stdio.h>

int main(void) {  /* a locale whose decimal point is a comma: the slope is still read as Python reads it */
  double X[6] = {1, 2, 3, 4, 5, 6}, W1[6] = {1, 0, 0, 1, 1, 1}, W2[2] = {1, 1}, H[2];
  if (!setlocale(LC_ALL, "de_DE.UTF-8")) { puts("no locale"); return 2; }
  printf("%d %d\n", pyrgd_wide_forward_f64(X, W1, W2, H, 2, 3, 2, 1, "leaky_relu(0.5)", 1.0),
         pyrgd_wide_forward_f64(X, W1, W2, H, 2, 3, 2, 1, "leaky_relu(0,5)", 1.0));
  return 0;
}
"""


def _cc():
    cc = shutil.which(os.environ.get("CC", "cc"))
    assert cc, "a C compiler (cc) is needed to build pyrgd; none found"
    return cc


def _build_c(tmp_path, source, name, defines=()):
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    exe = tmp_path / name
    lib = native.get_library_dir()
    cmd = [_cc(), "-std=c99", "-O1", *defines, f"-I{native.get_include()}", str(src), "-o", str(exe), f"-L{lib}",
           "-lpyrgd", f"-Wl,-rpath,{lib}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return exe


def _write_case(folder, dtype, shape, act, seed=0):
    N, d, n1, n2 = shape
    rng = np.random.default_rng(seed)
    arrs = dict(X=rng.standard_normal((N, d)), W1=rng.standard_normal((d, n1)) / np.sqrt(d),
                W2=rng.standard_normal((n1, n2)) / np.sqrt(n1), G=rng.standard_normal((N, n2)))
    arrs = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in arrs.items()}
    folder.mkdir(parents=True, exist_ok=True)
    for k, v in arrs.items():
        v.tofile(folder / f"{k}.bin")
    return arrs


def _expected(arrs, act, a1, lr):
    X, W1, W2, G = (arrs[k].copy() for k in ("X", "W1", "W2", "G"))
    H = ops.wide_forward(X, W1, W2, activation=act, a1=a1, backend="cpu")
    dW1, dW2, dX = ops.wide_grad(X, W1, W2, G, activation=act, a1=a1, input_grad=True, backend="cpu")
    res = ops.wide_step(X, W1, W2, G, lr, activation=act, a1=a1, next_forward=True, backend="cpu")
    return dict(H=H, dW1=dW1, dW2=dW2, dX=dX, W1s=W1, W2s=W2, Hnext=res.H_next)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_c_program_gives_the_bits_of_ops(tmp_path, dtype):
    real, suffix = ("double", "f64") if dtype == np.float64 else ("float", "f32")
    exe = _build_c(tmp_path, C_PROGRAM, "wide", [f"-DREAL={real}", f"-DSUFFIX={suffix}"])
    for k, (shape, spec, a1) in enumerate([((37, 5, 130, 3), "smooth_leaky_relu(0.2)", 0.7),
                                          ((300, 2, 1100, 1), "tanh", 1.0),
                                          ((3, 1, 1, 1), "leaky_relu(0.1)", 2.0)]):
        folder = tmp_path / f"case{k}"
        arrs = _write_case(folder, dtype, shape, parse_activation(spec), seed=k)
        lr = 0.05
        r = subprocess.run([str(exe), *map(str, shape), spec, str(folder), repr(a1), repr(lr)], capture_output=True,
                           text=True)
        assert r.returncode == 0 and r.stdout.strip() == f"ok {pyrgd.__version__} threads 1", r.stdout + r.stderr
        for name, want in _expected(arrs, spec, dtype(a1), float(dtype(lr))).items():
            got = np.fromfile(folder / f"{name}.out", dtype=dtype).reshape(want.shape)
            assert np.array_equal(got, want), (shape, name)


def test_c_errors_are_codes_with_messages(tmp_path):
    exe = _build_c(tmp_path, C_ERRORS, "errors")
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    rows = {w: (int(rc), msg) for w, rc, msg in (line.split("|", 2) for line in out.splitlines())}
    assert rows["first"] == (0, "")
    expect = {
        "act": "activation: unknown activation \"sigmoid\"",
        "slope": "activation: slope gamma of leaky_relu must lie in (0, 1)",
        "noslope": "activation: tanh takes no slope",
        "null": "W1: expected an array, got NULL",
        "dim": "N: expected a dimension >= 1, got 0",
        "overlap": "H, X: must not share memory",
        "a1": "a1: expected a finite number",
        "step": "W1, W2: must not share memory",
        "grad": "dW2, dW1: must not share memory",
        "threads": "n: expected 0",
        "hex": "activation: slope in \"leaky_relu(0x1p-2)\" is not a number",  # as Python's float() of it
        "comma": "activation: slope in \"leaky_relu(0,5)\" is not a number",
        "f32slope": "activation: the slope of \"leaky_relu(1e-50)\" is 0.000000 in float, outside (0, 1)",
    }
    for what, start in expect.items():
        rc, msg = rows[what]
        assert rc == 1 and msg.startswith(start), (what, rc, msg)
    assert rows["fine"][0] == 0  # names as Python takes them: any case, spaces around the parts
    assert rows["f64slope"][0] == 0  # a double holds 1e-50


def test_c_slope_is_read_in_the_c_locale_whatever_the_callers(tmp_path):
    """strtod would follow the caller's LC_NUMERIC: under de_DE it refused "0.5" and took "0,5". The locale is made
    with glibc's localedef from its sources (on machines of this project's kind)."""
    locales = tmp_path / "locales"
    locales.mkdir()
    made = subprocess.run(["localedef", "-i", "de_DE", "-f", "UTF-8", str(locales / "de_DE.UTF-8")],
                          capture_output=True, text=True)
    assert (locales / "de_DE.UTF-8").exists(), made.stderr
    exe = _build_c(tmp_path, C_LOCALE, "locale")
    r = subprocess.run([str(exe)], capture_output=True, text=True, env=dict(os.environ, LOCPATH=str(locales)))
    assert r.returncode == 0 and r.stdout.split() == ["0", "1"], r.stdout + r.stderr


def test_native_paths_and_the_readme_c_example(tmp_path):
    """get_include / get_library_dir / get_cmake_dir point at the files; the README's C example builds and runs."""
    assert (pathlib.Path(native.get_include()) / "pyrgd" / "pyrgd.h").is_file()
    assert pathlib.Path(native.get_library()).is_file()
    assert (pathlib.Path(native.get_cmake_dir()) / "pyrgdConfig.cmake").is_file()
    readme = (ROOT / "README.md").read_text()
    (block,) = re.findall(r"```c\n(.*?)```", readme, re.S)
    exe = _build_c(tmp_path, block, "readme")
    r = subprocess.run([str(exe)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


CMAKE_LISTS = """
cmake_minimum_required(VERSION 3.15)
project(pyrgd_consumer CXX)
set(CMAKE_CXX_STANDARD 17)
find_package(pyrgd CONFIG REQUIRED)
add_executable(app main.cpp)
target_link_libraries(app PRIVATE pyrgd::pyrgd)
"""

CPP_PROGRAM = r"""
#include <pyrgd/pyrgd.h>
#include <cstdio>
#include <fstream>
#include <vector>

int main(int argc, char** argv) {
  const long N = 40, d = 6, n1 = 200, n2 = 2;
  auto load = [&](const char* name, long n) {
    std::vector<double> v(n);
    std::ifstream(std::string(argv[1]) + "/" + name + ".bin", std::ios::binary)
        .read(reinterpret_cast<char*>(v.data()), n * sizeof(double));
    return v;
  };
  auto X = load("X", N * d), W1 = load("W1", d * n1), W2 = load("W2", n1 * n2), G = load("G", N * n2);
  std::vector<double> H(N * n2), dW1(d * n1), dW2(n1 * n2);
  if (pyrgd_wide_forward_f64(X.data(), W1.data(), W2.data(), H.data(), N, d, n1, n2, "erf", 0.5) ||
      pyrgd_wide_grad_f64(X.data(), W1.data(), W2.data(), G.data(), dW1.data(), dW2.data(), N, d, n1, n2, "erf",
                          0.5)) {
    std::printf("%s\n", pyrgd_last_error());
    return 1;
  }
  std::ofstream(std::string(argv[1]) + "/H.out", std::ios::binary)
      .write(reinterpret_cast<const char*>(H.data()), H.size() * sizeof(double));
  std::ofstream(std::string(argv[1]) + "/dW1.out", std::ios::binary)
      .write(reinterpret_cast<const char*>(dW1.data()), dW1.size() * sizeof(double));
  return 0;
}
"""


def test_cmake_cpp_program_gives_the_bits_of_ops(tmp_path):
    cmake = pytest.importorskip("cmake")
    exe_cmake = str(pathlib.Path(cmake.CMAKE_BIN_DIR) / "cmake")
    src, build = tmp_path / "src", tmp_path / "build"
    src.mkdir()
    (src / "CMakeLists.txt").write_text(CMAKE_LISTS)
    (src / "main.cpp").write_text(CPP_PROGRAM)
    r = subprocess.run([exe_cmake, "-S", str(src), "-B", str(build), f"-Dpyrgd_DIR={native.get_cmake_dir()}"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([exe_cmake, "--build", str(build)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    arrs = _write_case(tmp_path / "data", np.float64, (40, 6, 200, 2), parse_activation("erf"), seed=5)
    exe = build / "app"
    r = subprocess.run([str(exe), str(tmp_path / "data")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    H = ops.wide_forward(arrs["X"], arrs["W1"], arrs["W2"], activation="erf", a1=0.5, backend="cpu")
    dW1, _ = ops.wide_grad(arrs["X"], arrs["W1"], arrs["W2"], arrs["G"], activation="erf", a1=0.5, backend="cpu")
    assert np.array_equal(np.fromfile(tmp_path / "data" / "H.out").reshape(H.shape), H)
    assert np.array_equal(np.fromfile(tmp_path / "data" / "dW1.out").reshape(dW1.shape), dW1)
