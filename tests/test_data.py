"""pyrgd.data: synthetic data, digits, arrays from files, and datasets from a config table."""
import sys

import numpy as np
import pytest

from pyrgd import data
from pyrgd.errors import BackendUnavailable, PyrgdError


# --------------------------------------------------------------------------------------------- synthetic
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("targets", ["gaussian", "teacher"])
def test_synthetic_shapes_dtypes_contiguous(dtype, targets):
    X, Y = data.synthetic(12, 5, n_out=3, targets=targets, dtype=dtype)
    assert X.shape == (12, 5) and Y.shape == (12, 3)
    assert X.dtype == np.dtype(dtype) and Y.dtype == np.dtype(dtype)
    assert X.flags.c_contiguous and Y.flags.c_contiguous
    assert np.isfinite(X).all() and np.isfinite(Y).all()


def test_sphere_rows_have_unit_norm_and_gaussian_rows_do_not():
    X, _ = data.synthetic(50, 7, inputs="sphere")
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, rtol=1e-12)
    G, _ = data.synthetic(50, 7, inputs="gaussian")
    assert not np.allclose(np.linalg.norm(G, axis=1), 1.0)
    # i.i.d. N(0, 1) entries: the mean square is near 1
    assert 0.7 < float(np.mean(G**2)) < 1.3


def test_seed_reproduces_and_changes_data():
    a = data.synthetic(10, 4, n_out=2, seed=3)
    b = data.synthetic(10, 4, n_out=2, seed=3)
    c = data.synthetic(10, 4, n_out=2, seed=4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.allclose(a[0], c[0])
    assert not np.allclose(a[1], c[1])


def test_same_seed_same_data_in_both_dtypes():
    X64, Y64 = data.synthetic(9, 4, targets="teacher", dtype="float64", seed=1)
    X32, Y32 = data.synthetic(9, 4, targets="teacher", dtype="float32", seed=1)
    np.testing.assert_allclose(X32, X64, rtol=1e-6)
    np.testing.assert_allclose(Y32, Y64, rtol=1e-5, atol=1e-6)


def test_teacher_targets_are_centered_unit_variance_and_depend_on_the_inputs():
    X, Y = data.synthetic(200, 6, n_out=2, targets="teacher", seed=0)
    np.testing.assert_allclose(Y.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(Y.std(axis=0), 1.0, rtol=1e-12)
    X2, Y2 = data.synthetic(200, 6, n_out=2, targets="teacher", seed=0, teacher_activation="relu")
    assert not np.allclose(Y, Y2)  # the teacher's activation matters


def test_teacher_single_sample_is_unit_magnitude():
    _, Y = data.synthetic(1, 3, n_out=2, targets="teacher")
    np.testing.assert_allclose(np.abs(Y), 1.0)


@pytest.mark.parametrize("kwargs, name", [
    (dict(N=0, d=3), "N"), (dict(N=2.5, d=3), "N"), (dict(N=True, d=3), "N"), (dict(N=4, d=-1), "d"),
    (dict(N=4, d=3, n_out=0), "n_out"), (dict(N=4, d=3, inputs="cube"), "inputs"),
    (dict(N=4, d=3, targets="labels"), "targets"), (dict(N=4, d=3, dtype="int32"), "dtype"),
    (dict(N=4, d=3, dtype="float16"), "dtype"), (dict(N=4, d=3, seed=-1), "seed"),
    (dict(N=4, d=3, targets="teacher", teacher_activation="nope"), "activation"),
    (dict(N=4, d=3, targets="teacher", teacher_width=0), "teacher_width"),
])
def test_synthetic_bad_arguments(kwargs, name):
    with pytest.raises(PyrgdError, match=rf"^{name}: "):
        data.synthetic(**kwargs)


# --------------------------------------------------------------------------------------------- digits
def test_digits_one_hot():
    pytest.importorskip("sklearn")
    X, Y = data.digits(dtype="float32")
    assert X.shape == (1797, 64) and Y.shape == (1797, 10)
    assert X.dtype == np.float32 and Y.dtype == np.float32 and X.flags.c_contiguous and Y.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(Y.sum(axis=1), 1.0)
    assert set(np.unique(Y)) == {0.0, 1.0}
    assert (Y.sum(axis=0) > 150).all()  # every digit is present


def test_digits_scalar_label_is_centered():
    pytest.importorskip("sklearn")
    X, Y = data.digits(n_samples=100, n_out=1, seed=2)
    assert X.shape == (100, 64) and Y.shape == (100, 1)
    assert abs(float(Y.mean())) < 1e-12
    steps = np.unique(np.round(Y[:, 0] - Y[:, 0].min(), 9))
    np.testing.assert_allclose(steps, np.round(steps))  # labels differ by whole digits


def test_digits_subset_is_seeded():
    pytest.importorskip("sklearn")
    a, _ = data.digits(n_samples=50, seed=1)
    b, _ = data.digits(n_samples=50, seed=1)
    c, _ = data.digits(n_samples=50, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("kwargs, name", [
    (dict(n_samples=0), "n_samples"), (dict(n_samples=5000), "n_samples"), (dict(n_out=3), "n_out"),
    (dict(dtype="float16"), "dtype"), (dict(seed=-2), "seed"),
])
def test_digits_bad_arguments(kwargs, name):
    with pytest.raises(PyrgdError, match=rf"^{name}: "):
        data.digits(**kwargs)


def test_digits_without_sklearn_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(BackendUnavailable, match="pip install scikit-learn"):
        data.digits()


# --------------------------------------------------------------------------------------------- files
def _xy(N=6, d=3, k=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, d)), rng.standard_normal((N, k))


def test_load_npz_roundtrip_and_dtype(tmp_path):
    X, Y = _xy()
    p = tmp_path / "d.npz"
    np.savez(p, inputs=X, labels=Y)
    X2, Y2 = data.load_arrays(p, x_key="inputs", y_key="labels")
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(Y2, Y)
    X3, Y3 = data.load_arrays(str(p), x_key="inputs", y_key="labels", dtype="float32")
    assert X3.dtype == np.float32 and Y3.dtype == np.float32 and X3.flags.c_contiguous


def test_load_two_npy_files_with_1d_targets_and_integers(tmp_path):
    X = np.asfortranarray(np.arange(12, dtype=np.int64).reshape(4, 3))
    y = np.array([1.0, 2.0, 3.0, 4.0])
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", y)
    X2, Y2 = data.load_arrays(tmp_path / "x.npy", y_path=tmp_path / "y.npy")
    assert X2.dtype == np.float64 and X2.flags.c_contiguous
    np.testing.assert_array_equal(X2, X)
    assert Y2.shape == (4, 1)
    np.testing.assert_array_equal(Y2[:, 0], y)


def test_load_missing_files(tmp_path):
    with pytest.raises(PyrgdError, match=r"^path: file not found"):
        data.load_arrays(tmp_path / "nope.npz")
    np.save(tmp_path / "x.npy", np.ones((3, 2)))
    with pytest.raises(PyrgdError, match=r"^y_path: file not found"):
        data.load_arrays(tmp_path / "x.npy", y_path=tmp_path / "nope.npy")
    with pytest.raises(PyrgdError, match=r"^path: .* is a folder"):
        data.load_arrays(tmp_path)


def test_load_missing_key_lists_the_arrays(tmp_path):
    X, Y = _xy()
    np.savez(tmp_path / "d.npz", A=X, B=Y)
    with pytest.raises(PyrgdError, match=r"^x_key: no array named 'X' .* holds: A, B"):
        data.load_arrays(tmp_path / "d.npz")
    with pytest.raises(PyrgdError, match=r"^y_key: no array named 'Y'"):
        data.load_arrays(tmp_path / "d.npz", x_key="A")


def test_load_single_npy_without_targets(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((3, 2)))
    with pytest.raises(PyrgdError, match=r"^path: .*single array.*y_path"):
        data.load_arrays(tmp_path / "x.npy")


@pytest.mark.parametrize("X, Y, pattern", [
    (np.ones(5), np.ones((5, 1)), r"^X: .*2-D"),
    (np.ones((5, 2, 2)), np.ones((5, 1)), r"^X: .*2-D"),
    (np.ones((5, 2)), np.ones((5, 1, 1)), r"^Y: .*2-D"),
    (np.ones((5, 2)), np.ones((4, 1)), r"^Y: .*4 rows but X .* has 5"),
    (np.array([[1.0, np.nan]]), np.ones((1, 1)), r"^X: .*NaN or infinite"),
    (np.ones((2, 2)), np.array([[np.inf], [1.0]]), r"^Y: .*NaN or infinite"),
    (np.array([["a", "b"]]), np.ones((1, 1)), r"^X: .*dtype"),
    (np.ones((2, 2), dtype=complex), np.ones((2, 1)), r"^X: .*dtype"),
    (np.ones((0, 2)), np.ones((0, 1)), r"^X: empty"),
])
def test_load_bad_arrays(tmp_path, X, Y, pattern):
    np.savez(tmp_path / "d.npz", X=X, Y=Y)
    with pytest.raises(PyrgdError, match=pattern):
        data.load_arrays(tmp_path / "d.npz")


def test_load_values_that_overflow_float32(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.full((2, 2), 1e300), Y=np.ones((2, 1)))
    data.load_arrays(tmp_path / "d.npz")  # fine in float64
    with pytest.raises(PyrgdError, match=r"^X: .*NaN or infinite .*float32"):
        data.load_arrays(tmp_path / "d.npz", dtype="float32")


def test_load_never_unpickles(tmp_path):
    obj = np.empty(2, dtype=object)
    obj[:] = [1, 2]
    np.save(tmp_path / "x.npy", obj, allow_pickle=True)
    np.save(tmp_path / "y.npy", np.ones(2))
    with pytest.raises(PyrgdError, match=r"^path: .*without pickle"):
        data.load_arrays(tmp_path / "x.npy", y_path=tmp_path / "y.npy")
    np.savez(tmp_path / "d.npz", X=obj, Y=np.ones(2))
    with pytest.raises(PyrgdError, match=r"^x_key: .*without pickle"):
        data.load_arrays(tmp_path / "d.npz")


def test_load_not_an_array_file(tmp_path):
    (tmp_path / "junk.npz").write_text("hello")
    with pytest.raises(PyrgdError, match=r"^path: cannot read"):
        data.load_arrays(tmp_path / "junk.npz")
    with pytest.raises(PyrgdError, match=r"^path: expected a file path"):
        data.load_arrays(3)


# --------------------------------------------------------------------------------------------- make_dataset
def test_make_dataset_synthetic_matches_synthetic():
    X, Y = data.make_dataset({"N": 7, "d": 2, "n_out": 2, "targets": "teacher", "seed": 5}, dtype="float32")
    X2, Y2 = data.synthetic(7, 2, n_out=2, targets="teacher", seed=5, dtype="float32")
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(Y, Y2)


def test_make_dataset_digits_and_file(tmp_path):
    pytest.importorskip("sklearn")
    X, Y = data.make_dataset({"source": "digits", "N": 30, "n_out": 10})
    assert X.shape == (30, 64) and Y.shape == (30, 10)
    Xf, Yf = _xy(5, 2, 1)
    np.savez(tmp_path / "d.npz", X=Xf, Y=Yf)
    X, Y = data.make_dataset({"source": "file", "path": str(tmp_path / "d.npz")})
    np.testing.assert_array_equal(X, Xf)


@pytest.mark.parametrize("cfg, pattern", [
    ({"source": "file"}, r"^data\.path: .*needs a path"),
    ({"source": "web"}, r"^data\.source: expected one of synthetic, digits, file"),
    ({"N": 0}, r"^data\.N: "),
    ({"Nn": 3}, r"^data\.Nn: unknown key; valid keys of \[data\] are: source, N, d"),
    ({"source": "digits", "N": 5000}, r"^data\.N: "),
    ({"source": "file", "path": "/nonexistent/x.npz"}, r"^data\.path: file not found"),
])
def test_make_dataset_errors_name_the_key(cfg, pattern):
    with pytest.raises(PyrgdError, match=pattern):
        data.make_dataset(cfg)
