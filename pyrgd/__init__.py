"""pyrgd: fused-kernel full-batch gradient descent for deep networks with one wide first layer and a pyramidal tail.

Main entry points: :class:`PyramidalNet`, :func:`train`, the functional kernels in :mod:`pyrgd.ops`.
"""
from ._version import __version__  # noqa: E402

from .activations import Activation, parse_activation  # noqa: E402
from .callbacks import StopTraining  # noqa: E402
from .errors import BackendUnavailable, PyrgdError  # noqa: E402
from .model import PyramidalNet  # noqa: E402
from .train import TrainResult, train  # noqa: E402
from .update_rules import GD, Momentum, Nesterov  # noqa: E402

__all__ = ["Activation", "BackendUnavailable", "GD", "Momentum", "Nesterov", "PyramidalNet", "PyrgdError",
           "StopTraining", "TrainResult", "parse_activation", "train", "__version__"]
