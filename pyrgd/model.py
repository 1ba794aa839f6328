"""The network: one wide first layer followed by a pyramidal tail (docs/theory.md section 1).

F_0 = X;  Z_l = F_{l-1} W_l;  F_l = a_l sigma(Z_l) for l = 1..L-1;  F_L = F_{L-1} W_L (linear output).
W_l has shape (n_{l-1}, n_l) with n_0 = d. No biases.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence

import numpy as np

from ._validate import all_finite, check_positive_int, check_scalar
from .activations import Activation, parse_activation
from .errors import PyrgdError

#: the initialization schemes; see :meth:`PyramidalNet.__init__`
INIT_SCHEMES = ("lecun", "he", "xavier", "normal", "zero_scaled", "lecun_last_n43")

_FORMAT = "pyrgd-weights-1"


def _dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dtype is None or dt is None or dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        # (dtype is None first: numpy reads np.dtype(None) and "x == None" as float64)
        raise PyrgdError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
    return dt


class PyramidalNet:
    """A deep network with a wide first layer and a pyramidal tail.

    Parameters
    ----------
    d : int
        Input dimension n_0.
    widths : sequence of int
        [n_1, ..., n_L]; n_L is the output dimension. L >= 2 (the wide layer and at least the output layer).
    activation : str or Activation
        sigma of every hidden layer: relu, leaky_relu(gamma), smooth_leaky_relu(gamma), softplus, tanh, erf,
        identity (docs/theory.md section 3).
    init : str
        ``lecun``: N(0, 1/n_{l-1});  ``he``: N(0, 2/n_{l-1});  ``xavier``: N(0, 2/(n_{l-1}+n_l));
        ``normal``: N(0, init_std^2), ``init_std`` a float or one float per layer;
        ``zero_scaled``: W_{zero_layer} = 0 and every other layer LeCun times ``beta`` (the "width N suffices"
        constructions: zero_layer=L for Nguyen 2021 Sec 3.1, zero_layer=2 for Nguyen & Mondelli 2020);
        ``lecun_last_n43``: LeCun for layers 1..L-1 and (W_L)_ij ~ N(0, n_{L-1}^{-4/3}) (Nguyen 2021 Sec 3.3).
    seed : int
        Seed of numpy's default_rng; the same seed gives the same weights in either dtype (drawn in float64).
    dtype : 'float32' or 'float64'
    multipliers : sequence of float, optional
        a_1..a_{L-1}, the fixed per-layer multipliers of the hidden layers (default all 1).
    allow_non_pyramidal : bool
        By default n_2 >= n_3 >= ... >= n_L is required (Nguyen & Mondelli, Assumption 2.1); True accepts any tail.
    """

    def __init__(self, d, widths, activation="relu", init="lecun", seed=0, dtype="float64", multipliers=None,
                 init_std=None, beta=1.0, zero_layer=None, allow_non_pyramidal=False, _weights=None):
        self.d = check_positive_int("d", d)
        if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) and not isinstance(widths, np.ndarray):
            raise PyrgdError(f"widths: expected a list of positive integers [n_1, ..., n_L], got {widths!r}")
        widths = list(widths)
        if len(widths) < 2:
            raise PyrgdError(f"widths: expected at least two layers [n_1, ..., n_L] (L >= 2), got {widths!r}")
        self.widths = [check_positive_int(f"widths[{i}]", w) for i, w in enumerate(widths)]
        tail = self.widths[1:]
        if not isinstance(allow_non_pyramidal, (bool, np.bool_)):
            raise PyrgdError(f"allow_non_pyramidal: expected True or False, got {allow_non_pyramidal!r}")
        if not allow_non_pyramidal and any(a < b for a, b in zip(tail, tail[1:])):
            raise PyrgdError(
                f"widths: the tail n_2 >= n_3 >= ... >= n_L must be pyramidal (non-increasing), got {self.widths}; "
                "pass allow_non_pyramidal=True to accept other shapes"
            )
        self.allow_non_pyramidal = bool(allow_non_pyramidal)
        self.activation: Activation = parse_activation(activation)
        self.dtype = _dtype(dtype)
        if multipliers is None:
            multipliers = [1.0] * (self.L - 1)
        if isinstance(multipliers, (int, float)) and not isinstance(multipliers, bool):
            multipliers = [float(multipliers)] * (self.L - 1)
        multipliers = list(multipliers)
        if len(multipliers) != self.L - 1:
            raise PyrgdError(f"multipliers: expected {self.L - 1} values a_1..a_(L-1), got {len(multipliers)}")
        self.multipliers = [check_scalar(f"multipliers[{i}]", a, positive=True) for i, a in enumerate(multipliers)]
        if seed is not None and (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer))
                                 or seed < 0):
            raise PyrgdError(f"seed: expected None or a non-negative integer, got {seed!r}")
        self.seed = int(seed) if seed is not None else None
        if init not in INIT_SCHEMES:
            raise PyrgdError(f"init: unknown scheme {init!r}; expected one of {', '.join(INIT_SCHEMES)}")
        self.init = init
        self.init_std = init_std
        self.beta = check_scalar("beta", beta, positive=True)
        self.zero_layer = zero_layer
        self.weights = self._initial_weights() if _weights is None else _weights

    # ----------------------------------------------------------------------------------------------- shapes
    @property
    def L(self) -> int:
        """Number of weight layers."""
        return len(self.widths)

    @property
    def dims(self) -> list[int]:
        """[n_0 = d, n_1, ..., n_L]."""
        return [self.d] + self.widths

    @property
    def n_params(self) -> int:
        return sum(a * b for a, b in zip(self.dims, self.dims[1:]))

    def __repr__(self) -> str:
        return (f"PyramidalNet(d={self.d}, widths={self.widths}, activation='{self.activation}', "
                f"init='{self.init}', seed={self.seed}, dtype='{self.dtype.name}')")

    # ----------------------------------------------------------------------------------------------- init
    def _stds(self) -> list[float]:
        dims, L = self.dims, self.L
        lecun = [1.0 / math.sqrt(dims[l]) for l in range(L)]
        if self.init == "lecun":
            return lecun
        if self.init == "he":
            return [math.sqrt(2.0 / dims[l]) for l in range(L)]
        if self.init == "xavier":
            return [math.sqrt(2.0 / (dims[l] + dims[l + 1])) for l in range(L)]
        if self.init == "normal":
            s = self.init_std
            if s is None:
                raise PyrgdError("init_std: init='normal' needs init_std (a float, or one float per layer)")
            if isinstance(s, (int, float)) and not isinstance(s, bool):
                s = [s] * L
            s = list(s)
            if len(s) != L:
                raise PyrgdError(f"init_std: expected one standard deviation per layer ({L}), got {len(s)}")
            return [check_scalar(f"init_std[{i}]", v, nonnegative=True) for i, v in enumerate(s)]
        if self.init == "zero_scaled":
            z = self.zero_layer if self.zero_layer is not None else L
            if isinstance(z, bool) or not isinstance(z, int) or not 1 <= z <= L:
                raise PyrgdError(f"zero_layer: expected a layer index in 1..{L}, got {self.zero_layer!r}")
            return [0.0 if l + 1 == z else self.beta * lecun[l] for l in range(L)]
        if self.init == "lecun_last_n43":
            return lecun[:-1] + [dims[L - 1] ** (-2.0 / 3.0)]
        raise AssertionError(self.init)  # pragma: no cover

    def _initial_weights(self) -> list[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        out = []
        for l, std in enumerate(self._stds()):
            W = rng.standard_normal((self.dims[l], self.dims[l + 1]))
            out.append(np.ascontiguousarray(W * std, dtype=self.dtype))
        return out

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, X, *, backend="auto"):
        """F_L for inputs X (N, d), as an array of X's module (NumPy or CuPy) and of the net's dtype."""
        from . import ops
        from .tail import tail_forward

        X = self.check_inputs(X)
        xp = np if isinstance(X, np.ndarray) else __import__("cupy")
        W = [xp.asarray(w) for w in self.weights]
        H = ops.wide_forward(X, W[0], W[1], activation=self.activation, a1=self.multipliers[0], backend=backend)
        return tail_forward(H, W, self.activation, self.multipliers)[-1]

    __call__ = forward

    def check_inputs(self, X, name="X"):
        from ._validate import check_float_array

        return check_float_array(name, X, 2, dtype=self.dtype, shape=(None, self.d))

    def copy(self) -> "PyramidalNet":
        new = object.__new__(PyramidalNet)
        new.__dict__.update(self.__dict__)
        new.weights = [w.copy() for w in self.weights]
        return new

    # ----------------------------------------------------------------------------------------------- I/O
    def config(self) -> dict:
        """The constructor arguments, as plain JSON/TOML-friendly values."""
        return {
            "d": self.d, "widths": list(self.widths), "activation": str(self.activation), "init": self.init,
            "seed": self.seed, "dtype": self.dtype.name, "multipliers": list(self.multipliers),
            "init_std": self.init_std, "beta": self.beta, "zero_layer": self.zero_layer,
            "allow_non_pyramidal": self.allow_non_pyramidal,
        }

    def save(self, path) -> None:
        """Write the weights and the configuration to an .npz file (no pickle), atomically."""
        path = os.fspath(path)
        arrays = {f"W{l + 1}": np.asarray(_to_host(w)) for l, w in enumerate(self.weights)}
        meta = json.dumps({"format": _FORMAT, **self.config()})
        from ._atomic import atomic_write

        atomic_write(path, lambda f: np.savez(f, __meta__=np.array(meta), **arrays), mode="wb")

    @classmethod
    def load(cls, path, allow_nonfinite=False) -> "PyramidalNet":
        """Read a network written by :meth:`save` (never unpickles).

        Every array's shape and dtype are read from its header and checked against the configuration, and the file's
        sizes against them, before anything is allocated; weights with NaN or infinities are refused unless
        ``allow_nonfinite``. Any failure is a PyrgdError naming the file and what is wrong with it."""
        path = os.fspath(path)
        try:
            meta, weights = _read_weights_file(path)
        except PyrgdError:
            raise
        except FileNotFoundError:
            raise PyrgdError(f"path: no file {path}") from None
        except Exception as e:  # a truncated or corrupted file: zipfile, zlib, numpy's header parser, json, ...
            raise PyrgdError(f"path: cannot read pyrgd weights from {path}: {type(e).__name__}: {e}") from None
        if not allow_nonfinite:
            for l, w in enumerate(weights, start=1):
                if not all_finite(w):
                    raise PyrgdError(f"path: W{l} in {path} contains NaN or infinite values (a diverged run?); "
                                     "pass allow_nonfinite=True to load it anyway")
        return cls(**meta, _weights=[np.ascontiguousarray(w) for w in weights])

    def warn_if_narrow(self, N: int) -> None:
        """Warn when the wide layer is narrower than the number of samples (the theory needs n_1 >= N)."""
        if self.widths[0] < N:
            warnings.warn(f"n_1 = {self.widths[0]} < N = {N}: the convergence theory needs the first layer at least "
                          "as wide as the number of samples", UserWarning, stacklevel=3)


def _to_host(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else a


#: the largest __meta__ record :meth:`PyramidalNet.load` reads (bytes)
_MAX_META_BYTES = 1 << 20


def _read_weights_file(path):
    """(constructor arguments, [W_1, ..., W_L]) of a weights file, checked header by header before reading."""
    import zipfile

    with zipfile.ZipFile(path) as zf:
        members = {i.filename: i for i in zf.infolist()}
        info = members.get("__meta__.npy")
        if info is None:
            raise PyrgdError(f"path: {path} is not a pyrgd weights file (no __meta__)")
        if info.file_size > _MAX_META_BYTES:
            raise PyrgdError(f"path: {path} has a __meta__ record of {info.file_size} bytes; expected at most "
                             f"{_MAX_META_BYTES}")
        with zf.open(info) as f:
            meta = json.loads(str(np.lib.format.read_array(f, allow_pickle=False)))
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise PyrgdError(f"path: {path} is not a pyrgd weights file (format "
                             f"{meta.get('format') if isinstance(meta, dict) else None!r})")
        meta.pop("format")
        d, widths, dtype = meta.get("d"), meta.get("widths"), _dtype(meta.get("dtype"))
        if not isinstance(d, int) or not isinstance(widths, list) or not widths or \
                not all(isinstance(w, int) and w > 0 for w in widths) or d <= 0:
            raise PyrgdError(f"path: {path} has a malformed configuration (d {d!r}, widths {widths!r})")
        dims = [d] + widths
        weights = []
        for l in range(1, len(dims)):
            info = members.get(f"W{l}.npy")
            if info is None:
                raise PyrgdError(f"path: {path} lacks W{l}")
            want = (dims[l - 1], dims[l])
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dt = read_header(f, max_header_size=10000)
                header = f.tell()
            if tuple(shape) != want or np.dtype(dt) != dtype or fortran:
                raise PyrgdError(f"path: W{l} in {path} has shape {tuple(shape)} {np.dtype(dt)}, expected {want} "
                                 f"{dtype} (C order)")
            if info.file_size != header + want[0] * want[1] * dtype.itemsize:
                raise PyrgdError(f"path: W{l} in {path} is {info.file_size} bytes, its header says "
                                 f"{header + want[0] * want[1] * dtype.itemsize}")
            with zf.open(info) as f:
                weights.append(np.lib.format.read_array(f, allow_pickle=False))
    return meta, weights
