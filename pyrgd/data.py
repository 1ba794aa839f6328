"""Data sets for pyrgd runs: synthetic inputs and targets, scikit-learn's digits, and arrays read from .npy/.npz.

Every function returns ``(X, Y)`` with X of shape (N, d) and Y of shape (N, n_out), both C-contiguous in the asked
dtype (float32 or float64). Random draws are made in float64 from ``numpy.random.default_rng(seed)`` and then cast,
so one seed gives the same data (up to rounding) in either dtype. Bad arguments raise
:class:`pyrgd.errors.PyrgdError` naming the argument.
"""
from __future__ import annotations

import os
import zipfile

import numpy as np

from ._validate import check_nonnegative_int, check_positive_int
from .activations import parse_activation
from .errors import BackendUnavailable, PyrgdError
from .schema import INPUT_KINDS, SOURCES, TARGET_KINDS, resolve_config  # noqa: F401  (SOURCES: re-exported)

__all__ = ["synthetic", "digits", "load_arrays", "make_dataset", "INPUT_KINDS", "TARGET_KINDS", "SOURCES"]

_DIGITS_N = 1797  # rows of sklearn.datasets.load_digits


def _float_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise PyrgdError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
    return dt


def _finish(X, Y, dt, sources=("the inputs", "the targets")):
    """Cast to ``dt``, C-contiguous, and check that every value is finite after the cast."""
    with np.errstate(over="ignore", invalid="ignore"):  # overflow in the cast is reported just below
        X = np.ascontiguousarray(X, dtype=dt)
        Y = np.ascontiguousarray(Y, dtype=dt)
    for name, a, src in (("X", X, sources[0]), ("Y", Y, sources[1])):
        if not np.isfinite(a).all():
            raise PyrgdError(f"{name}: {src} contains NaN or infinite values (in {dt.name})")
    return X, Y


def _unit_rows(X):
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise PyrgdError("X: a row of the inputs is zero and cannot be scaled to unit norm")
    return X / norms


def synthetic(N, d, n_out=1, inputs="sphere", targets="gaussian", seed=0, dtype="float64", teacher_width=64,
              teacher_activation="tanh"):
    """A synthetic regression problem.

    Parameters
    ----------
    N, d : int
        Number of samples and input dimension.
    n_out : int
        Number of target columns n_L.
    inputs : 'sphere' or 'gaussian'
        ``sphere``: rows drawn uniformly on the unit sphere S^{d-1} (||x_i|| = 1, the setting of Du et al. 2019);
        ``gaussian``: entries i.i.d. N(0, 1).
    targets : 'gaussian' or 'teacher'
        ``gaussian``: entries i.i.d. N(0, 1), independent of X;
        ``teacher``: Y = sigma(X A) B of a random two-layer network (A (d, teacher_width) ~ N(0, 1/d),
        B (teacher_width, n_out) ~ N(0, 1/teacher_width), sigma = ``teacher_activation``), each column then
        centered and scaled to unit variance (for N = 1 only scaled to unit magnitude).
    seed : int
        Seed of numpy's default_rng; X is drawn first, then the targets.
    dtype : 'float32' or 'float64'

    Returns
    -------
    X : (N, d) array;  Y : (N, n_out) array.
    """
    N = check_positive_int("N", N)
    d = check_positive_int("d", d)
    n_out = check_positive_int("n_out", n_out)
    seed = check_nonnegative_int("seed", seed)
    dt = _float_dtype(dtype)
    if inputs not in INPUT_KINDS:
        raise PyrgdError(f"inputs: expected one of {', '.join(INPUT_KINDS)}, got {inputs!r}")
    if targets not in TARGET_KINDS:
        raise PyrgdError(f"targets: expected one of {', '.join(TARGET_KINDS)}, got {targets!r}")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, d))
    if inputs == "sphere":
        X = _unit_rows(X)
    if targets == "gaussian":
        Y = rng.standard_normal((N, n_out))
    else:
        width = check_positive_int("teacher_width", teacher_width)
        act = parse_activation(teacher_activation)
        A = rng.standard_normal((d, width)) / np.sqrt(d)
        B = rng.standard_normal((width, n_out)) / np.sqrt(width)
        Y = act.sigma(X @ A) @ B
        if N >= 2:
            Y = Y - Y.mean(axis=0)
            scale = Y.std(axis=0)
        else:
            scale = np.abs(Y[0])
        if np.any(scale == 0):
            raise PyrgdError(f"teacher_activation: the teacher ({act}) gives a constant target column; "
                             "pick another activation or seed")
        Y = Y / scale
    return _finish(X, Y, dt)


def digits(n_samples=None, n_out=10, dtype="float64", seed=0):
    """scikit-learn's 8x8 handwritten digits (1797 samples, d = 64); needs scikit-learn.

    Inputs are the 64 pixel values of each image, scaled so that every row has unit norm. Targets: the one-hot
    code of the digit (n_out = 10) or the digit label minus its mean over the returned samples (n_out = 1).
    ``n_samples`` (None: all 1797) takes a random subset without replacement, drawn with ``seed``, in the
    original order.
    """
    dt = _float_dtype(dtype)
    seed = check_nonnegative_int("seed", seed)
    if n_samples is not None:
        n_samples = check_positive_int("n_samples", n_samples)
        if n_samples > _DIGITS_N:
            raise PyrgdError(f"n_samples: the digits data set has {_DIGITS_N} samples, asked for {n_samples}")
    if isinstance(n_out, bool) or n_out not in (1, 10):
        raise PyrgdError(f"n_out: digits offers n_out = 10 (one-hot) or n_out = 1 (centered label), got {n_out!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise BackendUnavailable(
            "the digits data set needs scikit-learn, which is not installed: pip install scikit-learn "
            "(or pip install 'pyrgd[data]')") from None
    bunch = load_digits()
    X = np.asarray(bunch.data, dtype=np.float64)
    labels = np.asarray(bunch.target, dtype=np.int64)
    if n_samples is not None:
        idx = np.sort(np.random.default_rng(seed).choice(X.shape[0], size=n_samples, replace=False))
        X, labels = X[idx], labels[idx]
    X = _unit_rows(X)
    if n_out == 10:
        Y = np.zeros((labels.shape[0], 10))
        Y[np.arange(labels.shape[0]), labels] = 1.0
    else:
        Y = (labels - labels.mean()).astype(np.float64).reshape(-1, 1)
    return _finish(X, Y, dt)


def _read_npy(path, name):
    try:
        a = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise PyrgdError(f"{name}: file not found: {path}") from None
    except IsADirectoryError:
        raise PyrgdError(f"{name}: {path} is a folder, expected a .npy file") from None
    except ValueError as e:
        raise PyrgdError(f"{name}: cannot read {path} as a .npy array without pickle ({e})") from None
    except OSError as e:
        raise PyrgdError(f"{name}: cannot read {path}: {e}") from None
    if not isinstance(a, np.ndarray):  # an .npz given where a .npy was expected
        a.close()
        raise PyrgdError(f"{name}: {path} is an .npz archive; pass it as the only path and name its arrays "
                         "with x_key / y_key")
    return a


def _read_npz(path, x_key, y_key):
    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise PyrgdError(f"path: file not found: {path}") from None
    except IsADirectoryError:
        raise PyrgdError(f"path: {path} is a folder, expected an .npz file") from None
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise PyrgdError(f"path: cannot read {path} as .npz/.npy ({e})") from None
    if isinstance(z, np.ndarray):
        raise PyrgdError(f"path: {path} holds a single array (.npy); give the targets as y_path=... "
                         "(a second .npy file) or store both in one .npz")
    with z:
        keys = list(z.files)
        out = []
        for arg, key in (("x_key", x_key), ("y_key", y_key)):
            if key not in keys:
                raise PyrgdError(f"{arg}: no array named {key!r} in {path}; it holds: {', '.join(keys) or 'nothing'}")
            try:
                out.append(z[key])
            except ValueError as e:
                raise PyrgdError(f"{arg}: cannot read array {key!r} of {path} without pickle ({e})") from None
    return out


def load_arrays(path, y_path=None, x_key="X", y_key="Y", dtype="float64"):
    """Read inputs and targets from files, without ever unpickling.

    ``load_arrays("data.npz", x_key="X", y_key="Y")``: two arrays of one .npz archive.
    ``load_arrays("X.npy", y_path="Y.npy")``: two .npy files.

    X must be 2-D (N, d); Y 2-D (N, n_out) or 1-D (N,) (read as one column). Both need the same number of rows, a
    real numeric dtype (integers are converted) and finite values after the cast to ``dtype``.
    """
    dt = _float_dtype(dtype)
    if not isinstance(path, (str, os.PathLike)):
        raise PyrgdError(f"path: expected a file path, got {path!r}")
    path = os.fspath(path)
    if y_path is None:
        for arg, key in (("x_key", x_key), ("y_key", y_key)):
            if not isinstance(key, str) or not key:
                raise PyrgdError(f"{arg}: expected the name of an array in the .npz, got {key!r}")
        X, Y = _read_npz(path, x_key, y_key)
        where = (f"{path}[{x_key}]", f"{path}[{y_key}]")
    else:
        if not isinstance(y_path, (str, os.PathLike)):
            raise PyrgdError(f"y_path: expected a file path, got {y_path!r}")
        y_path = os.fspath(y_path)
        X = _read_npy(path, "path")
        Y = _read_npy(y_path, "y_path")
        where = (path, y_path)
    for name, a, src in (("X", X, where[0]), ("Y", Y, where[1])):
        if a.dtype.kind not in "iuf":
            raise PyrgdError(f"{name}: {src} has dtype {a.dtype}; expected real numbers (float or integer)")
    if X.ndim != 2:
        raise PyrgdError(f"X: {where[0]} has shape {X.shape}; expected a 2-D array (N, d)")
    if Y.ndim == 1:
        Y = Y.reshape(-1, 1)
    if Y.ndim != 2:
        raise PyrgdError(f"Y: {where[1]} has shape {Y.shape}; expected a 2-D array (N, n_out) or 1-D (N,)")
    if X.shape[0] != Y.shape[0]:
        raise PyrgdError(f"Y: {where[1]} has {Y.shape[0]} rows but X ({where[0]}) has {X.shape[0]}; "
                         "expected one target row per sample")
    if X.size == 0 or Y.size == 0:
        raise PyrgdError(f"X: empty data (X {X.shape}, Y {Y.shape})")
    return _finish(X, Y, dt, sources=where)


def make_dataset(data_cfg: dict, dtype="float64"):
    """(X, Y) from a config's [data] table (see :mod:`pyrgd.schema`; missing keys take their defaults).

    source = 'synthetic': :func:`synthetic` with N, d, n_out, inputs, targets, seed, teacher_width,
    teacher_activation.  source = 'digits': :func:`digits` with n_samples = N, n_out, seed (d is 64).
    source = 'file': :func:`load_arrays` with path, y_path ('' for none), x_key, y_key (N, d, n_out come from the
    file).
    """
    if not isinstance(data_cfg, dict):
        raise PyrgdError(f"data: expected a dict (the [data] table of a config), got {type(data_cfg).__name__}")
    c = resolve_config(overrides={"data": data_cfg})["data"]
    try:
        if c["source"] == "synthetic":
            return synthetic(c["N"], c["d"], n_out=c["n_out"], inputs=c["inputs"], targets=c["targets"],
                             seed=c["seed"], dtype=dtype, teacher_width=c["teacher_width"],
                             teacher_activation=c["teacher_activation"])
        if c["source"] == "digits":
            return digits(n_samples=c["N"], n_out=c["n_out"], dtype=dtype, seed=c["seed"])
        if not c["path"]:
            raise PyrgdError("path: source = 'file' needs a path (an .npz, or an .npy with y_path)")
        return load_arrays(c["path"], y_path=c["y_path"] or None, x_key=c["x_key"], y_key=c["y_key"], dtype=dtype)
    except PyrgdError as e:  # name the config key: "N: ..." -> "data.N: ..."
        msg = str(e)
        head = msg.split(":", 1)[0]
        key = _ARG_TO_KEY.get(head, head)
        if key in c:
            msg = f"data.{key}{msg[len(head):]}"
        raise PyrgdError(msg) from None


_ARG_TO_KEY = {"n_samples": "N"}
