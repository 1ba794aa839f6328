"""Update rules of :func:`pyrgd.train`: plain gradient descent (the default), heavy-ball momentum and Nesterov.

With g_k = dPhi/dW at the weights W_k (every layer, the engine's gradients) and a constant step ``lr``:

- :class:`GD`: W_{k+1} = W_k - lr g_k (the engine's own fused step: the same bits as without an update rule);
- :class:`Momentum` (heavy ball): v_{k+1} = beta v_k + g_k, W_{k+1} = W_k - lr v_{k+1};
- :class:`Nesterov`: v_{k+1} = beta v_k + g_k, W_{k+1} = W_k - lr (g_k + beta v_{k+1}),

with v_0 = 0 (PyTorch's ``SGD(momentum=beta, nesterov=...)`` without dampening). The velocity v (arrays shaped like
the weights, on their device) is part of a run's checkpoint, so a resumed run continues bit for bit.

A rule is an immutable description (:meth:`UpdateRule.spec` gives its text, e.g. ``"momentum(0.9)"``);
:meth:`UpdateRule.start` makes the :class:`Stepper` that holds a run's state. :func:`parse_update` reads the text
forms ``"gd"``, ``"momentum"``, ``"nesterov"``, ``"momentum(0.95)"`` and ``"nesterov(0.95)"``.
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass

import numpy as np

from .errors import PyrgdError

__all__ = ["UpdateRule", "GD", "Momentum", "Nesterov", "Stepper", "parse_update", "UPDATE_NAMES", "DEFAULT_BETA"]

#: the rules' names (the config key train.update)
UPDATE_NAMES = ("gd", "momentum", "nesterov")
#: beta when a rule is named without one
DEFAULT_BETA = 0.9


def _check_beta(beta) -> float:
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not math.isfinite(float(beta)) \
            or not 0.0 <= float(beta) < 1.0:
        raise PyrgdError(f"beta: expected a number in [0, 1), got {beta!r}")
    return float(beta)


class UpdateRule:
    """Base of the update rules: ``name``, :meth:`spec` and :meth:`start`."""

    name = ""

    def spec(self) -> str:
        """The rule as text (what the run's summary and checkpoint record; :func:`parse_update` reads it back)."""
        raise NotImplementedError

    def start(self, weights) -> "Stepper":
        """The state of one run over ``weights`` ([W_1, ..., W_L], NumPy or CuPy): a :class:`Stepper`."""
        raise NotImplementedError

    def __str__(self) -> str:
        return self.spec()


@dataclass(frozen=True)
class GD(UpdateRule):
    """Gradient descent, W <- W - lr dPhi/dW: the step engine's own update (the default)."""

    name = "gd"

    def spec(self) -> str:
        return "gd"

    def start(self, weights) -> "Stepper":
        return _GDStepper()


@dataclass(frozen=True)
class Momentum(UpdateRule):
    """Heavy-ball momentum: v <- beta v + dPhi/dW, W <- W - lr v (v starts at 0); beta in [0, 1)."""

    beta: float = DEFAULT_BETA
    name = "momentum"

    def __post_init__(self):
        object.__setattr__(self, "beta", _check_beta(self.beta))

    def spec(self) -> str:
        return f"{self.name}({self.beta!r})"

    def start(self, weights) -> "Stepper":
        return _VelocityStepper(weights, self.beta, nesterov=False)


@dataclass(frozen=True)
class Nesterov(Momentum):
    """Nesterov momentum: v <- beta v + g, W <- W - lr (g + beta v) with g = dPhi/dW (v starts at 0); beta in
    [0, 1)."""

    name = "nesterov"

    def start(self, weights) -> "Stepper":
        return _VelocityStepper(weights, self.beta, nesterov=True)


_SPEC = re.compile(r"^\s*([a-z_]+)\s*(?:\(\s*([^()]*?)\s*\))?\s*$")


def parse_update(update) -> UpdateRule:
    """An :class:`UpdateRule` from a rule or its text ("gd", "momentum", "nesterov", "momentum(0.95)", ...);
    PyrgdError naming ``update`` otherwise."""
    if isinstance(update, UpdateRule):
        return update
    if not isinstance(update, str):
        raise PyrgdError(f"update: expected 'gd', 'momentum', 'nesterov' (optionally with beta: 'momentum(0.95)') or "
                         f"a pyrgd.Momentum / pyrgd.Nesterov, got {update!r}")
    m = _SPEC.match(update.lower())
    if m is None or m.group(1) not in UPDATE_NAMES:
        raise PyrgdError(f"update: expected one of {', '.join(UPDATE_NAMES)} (optionally with beta: "
                         f"'momentum(0.95)'), got {update!r}")
    name, arg = m.group(1), m.group(2)
    if name == "gd":
        if arg:
            raise PyrgdError(f"update: 'gd' takes no parameter, got {update!r}")
        return GD()
    beta = DEFAULT_BETA
    if arg:
        try:
            beta = float(arg)
        except ValueError:
            raise PyrgdError(f"update: expected a number in [0, 1) for beta, got {update!r}") from None
    try:
        return (Momentum if name == "momentum" else Nesterov)(beta)
    except PyrgdError as e:
        raise PyrgdError(f"update: {e} (in {update!r})") from None


class Stepper:
    """One run's update: :meth:`step` applies one update through a step engine and returns the squared gradient
    norms ||dPhi/dW_l||_F^2 (floats) at the weights before it; :meth:`state` / :meth:`load_state` are what a
    checkpoint keeps (name -> host array)."""

    def step(self, engine, lr: float) -> list[float]:
        raise NotImplementedError

    def state(self) -> dict:
        return {}

    def load_state(self, arrays: dict) -> None:
        pass


class _GDStepper(Stepper):
    def step(self, engine, lr):
        return engine.update(lr)


class _VelocityStepper(Stepper):
    """The velocity v (one array per layer, zeros at the start) and the update of Momentum or Nesterov."""

    def __init__(self, weights, beta, nesterov):
        xp = np if isinstance(weights[0], np.ndarray) else __import__("cupy")
        self.beta, self.nesterov, self._xp = float(beta), bool(nesterov), xp
        self.v = [xp.zeros_like(w) for w in weights]
        self._dir = [xp.empty_like(w) for w in weights] if nesterov else None

    def step(self, engine, lr):
        g = engine.step_gradients()
        sq = [float((gl * gl).sum()) for gl in g]
        beta = self.v[0].dtype.type(self.beta)
        for v, gl in zip(self.v, g):  # v <- beta v + g (the gradients may be buffers the next evaluate overwrites)
            v *= beta
            v += gl
        if self.nesterov:
            for d, v, gl in zip(self._dir, self.v, g):  # g + beta v
                self._xp.multiply(v, beta, out=d)
                d += gl
            engine.apply(self._dir, lr)
        else:
            engine.apply(self.v, lr)
        return sq

    def state(self) -> dict:
        return {f"velocity_{l}": v if isinstance(v, np.ndarray) else v.get() for l, v in enumerate(self.v, start=1)}

    def load_state(self, arrays: dict) -> None:
        for l, v in enumerate(self.v, start=1):
            a = arrays.get(f"velocity_{l}")
            if a is None:
                raise PyrgdError(f"resume: the checkpoint has no velocity_{l} (the run's update rule keeps a velocity)")
            if tuple(a.shape) != tuple(v.shape):
                raise PyrgdError(f"resume: velocity_{l} has shape {tuple(a.shape)}, expected {tuple(v.shape)}")
            v[...] = self._xp.asarray(a, dtype=v.dtype)
