"""Activations: names, parameters, and the array-level sigma and sigma' used by the reference backend and the tail.

The compiled backends evaluate the same functions from ``csrc/include/pyrgd/activations.h``. :data:`ACTIVATION_TABLE`
is the Python copy of that header's table (its list PYRGD_FOR_EACH_ACTIVATION and each struct's ``name``), kept here
so that the package imports without the extension; every other Python table of the activations derives from it, and
tests/test_activation_table.py checks it against the header and the extension's ``pyrgd._cpu.ACTIVATIONS``. Every
function works on NumPy and CuPy arrays alike (the array module is taken from the input), with the numerically safe
forms of docs/theory.md section 3.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from .errors import PyrgdError

#: every activation as (name, integer code, struct of pyrgd::act), in the order and with the codes of
#: PYRGD_FOR_EACH_ACTIVATION in csrc/include/pyrgd/activations.h (codes 0 .. n - 1)
ACTIVATION_TABLE = (
    ("relu", 0, "Relu"),
    ("leaky_relu", 1, "LeakyRelu"),
    ("smooth_leaky_relu", 2, "SmoothLeakyRelu"),
    ("softplus", 3, "Softplus"),
    ("tanh", 4, "Tanh"),
    ("erf", 5, "Erf"),
    ("identity", 6, "Identity"),
)
#: name -> integer code (what the kernels take as act_code)
ACTIVATION_CODES = {name: code for name, code, _ in ACTIVATION_TABLE}
#: name -> struct of csrc/include/pyrgd/activations.h (the template argument of the CUDA kernels)
ACTIVATION_STRUCTS = {name: struct for name, _, struct in ACTIVATION_TABLE}
#: default slope gamma of the activations that take one
DEFAULT_GAMMA = {"leaky_relu": 0.01, "smooth_leaky_relu": 0.2}
_LN2 = math.log(2.0)


@dataclass(frozen=True)
class Activation:
    """An activation: its name and, for ``leaky_relu`` and ``smooth_leaky_relu``, its slope ``gamma`` in (0, 1)."""

    name: str
    gamma: float = 0.0

    @property
    def code(self) -> int:
        return ACTIVATION_CODES[self.name]

    @property
    def derivative_lower_bound(self) -> float | None:
        """gamma with sigma'(x) >= gamma > 0 for every x, or None when no positive bound holds (docs/theory.md
        section 4.1)."""
        if self.name in ("leaky_relu", "smooth_leaky_relu"):
            return self.gamma
        if self.name == "identity":
            return 1.0
        return None

    def __str__(self) -> str:
        """The activation's spec string, parsed back to the same activation: gamma with 6 significant digits where
        that is exact, else its shortest round-trip form (``repr``), so that no bit of gamma is lost."""
        if self.name not in DEFAULT_GAMMA:
            return self.name
        short = f"{self.gamma:g}"
        return f"{self.name}({short if float(short) == self.gamma else repr(float(self.gamma))})"

    def sigma(self, x):
        """sigma(x), elementwise, for a NumPy or CuPy array x."""
        return sigma_and_derivative(self, x, derivative=False)[0]

    def dsigma(self, x):
        """sigma'(x), elementwise."""
        return sigma_and_derivative(self, x, value=False)[1]


_SPEC = re.compile(r"^\s*([a-z_]+)\s*(?:\(\s*([^)]*)\s*\))?\s*$")


def parse_activation(spec, gamma: float | None = None) -> Activation:
    """Turn ``"relu"``, ``"leaky_relu(0.1)"``, ``("leaky_relu", 0.1)`` or an :class:`Activation` into an Activation.

    Raises PyrgdError naming the argument and the known names when the spec is not understood.
    """
    if isinstance(spec, Activation):
        if gamma is not None:
            spec = Activation(spec.name, _gamma(gamma))
        return _checked(spec)
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str):
        spec, gamma = spec[0], spec[1] if gamma is None else gamma
    if not isinstance(spec, str):
        raise PyrgdError(f"activation: expected a name such as 'relu' or 'leaky_relu(0.1)', got {spec!r}")
    m = _SPEC.match(spec.lower())
    if m is None or m.group(1) not in ACTIVATION_CODES:
        raise PyrgdError(
            f"activation: unknown activation {spec!r}; expected one of {', '.join(ACTIVATION_CODES)}"
            " (leaky_relu and smooth_leaky_relu take a slope, e.g. 'leaky_relu(0.1)')"
        )
    name, arg = m.group(1), m.group(2)
    if arg is not None and arg != "":
        if gamma is not None:
            raise PyrgdError(f"activation: slope given twice ({spec!r} and gamma={gamma!r})")
        try:
            gamma = float(arg)
        except ValueError:
            raise PyrgdError(f"activation: slope in {spec!r} is not a number") from None
    if gamma is not None and name not in DEFAULT_GAMMA:
        raise PyrgdError(f"activation: {name} takes no slope, got {gamma!r}")
    return _checked(Activation(name, _gamma(DEFAULT_GAMMA.get(name, 0.0) if gamma is None else gamma)))


def check_activation_dtype(act: Activation, dtype) -> Activation:
    """``act`` unchanged when its slope stays in (0, 1) in the arrays' ``dtype`` (the kernels use it there);
    PyrgdError otherwise (leaky_relu(1e-50) in float32 would be relu, leaky_relu(0.99999999) the identity)."""
    if act.name in DEFAULT_GAMMA:
        with np.errstate(under="ignore"):
            stored = float(np.dtype(dtype).type(act.gamma))
        if not (0.0 < stored < 1.0):
            raise PyrgdError(f"activation: the slope {act.gamma!r} of {act.name} is {stored!r} in the arrays' dtype "
                             f"{np.dtype(dtype).name}, outside (0, 1); use a slope that dtype holds, or float64")
    return act


def _gamma(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        raise PyrgdError(f"activation: the slope must be a number, got {v!r}") from None


def _checked(a: Activation) -> Activation:
    if a.name not in ACTIVATION_CODES:
        raise PyrgdError(f"activation: unknown activation {a.name!r}; expected one of {', '.join(ACTIVATION_CODES)}")
    if a.name in DEFAULT_GAMMA and not (0.0 < a.gamma < 1.0):
        raise PyrgdError(f"activation: slope gamma of {a.name} must lie in (0, 1), got {a.gamma!r}")
    return a


def _xp(x):
    if type(x).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def _erf(x):
    if type(x).__module__.startswith("cupy"):
        from cupyx.scipy.special import erf
    else:
        from scipy.special import erf
    return erf(x)


def sigma_and_derivative(act: Activation, x, value: bool = True, derivative: bool = True):
    """Return (sigma(x), sigma'(x)) elementwise; either is None when not asked for. Safe for any finite x."""
    xp = _xp(x)
    name, g = act.name, act.gamma
    s = ds = None
    if name == "relu":
        if value:
            s = xp.maximum(x, 0)
        if derivative:
            ds = (x > 0).astype(x.dtype)
    elif name == "leaky_relu":
        if value:
            s = xp.where(x > 0, x, g * x)
        if derivative:
            ds = xp.where(x > 0, 1.0, g).astype(x.dtype)
    elif name in ("smooth_leaky_relu", "softplus"):
        e = xp.exp(-xp.abs(x))
        if value:
            sp = xp.maximum(x, 0) + xp.log1p(e)
            s = sp if name == "softplus" else g * x + (1 - g) * (sp - _LN2)
        if derivative:
            r = 1 / (1 + e)
            lg = xp.where(x >= 0, r, e * r)
            ds = lg if name == "softplus" else g + (1 - g) * lg
    elif name == "tanh":
        t = xp.tanh(x)
        s = t if value else None
        if derivative:
            ds = 1 - t * t
    elif name == "erf":
        if value:
            s = _erf(x)
        if derivative:
            ds = (2 / math.sqrt(math.pi)) * xp.exp(-x * x)
    elif name == "identity":
        if value:
            s = x.copy()
        if derivative:
            ds = xp.ones_like(x)
    else:  # pragma: no cover - parse_activation rejects unknown names
        raise PyrgdError(f"activation: unknown activation {name!r}")
    if s is not None:
        s = s.astype(x.dtype, copy=False)
    if ds is not None:
        ds = ds.astype(x.dtype, copy=False)
    return s, ds
