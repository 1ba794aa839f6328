"""pyrgd: fused-kernel full-batch gradient descent for deep networks with one wide first layer and a pyramidal tail.

Main entry points: :class:`PyramidalNet`, :func:`train`, the functional kernels in :mod:`pyrgd.ops`; for C and C++
programs, :func:`get_include`, :func:`get_library_dir` and :func:`get_cmake_dir` (:mod:`pyrgd.native`).
"""
from ._version import __version__  # noqa: E402

from .activations import Activation, parse_activation  # noqa: E402
from .callbacks import StopTraining  # noqa: E402
from .errors import BackendUnavailable, PyrgdError  # noqa: E402
from .model import PyramidalNet  # noqa: E402
from .native import get_cmake_dir, get_include, get_library_dir  # noqa: E402
from .train import TrainResult, train  # noqa: E402
from .update_rules import GD, Momentum, Nesterov  # noqa: E402

__all__ = ["Activation", "BackendUnavailable", "GD", "Momentum", "Nesterov", "PyramidalNet", "PyrgdError",
           "StopTraining", "TrainResult", "get_cmake_dir", "get_include", "get_library_dir", "parse_activation",
           "train", "__version__"]
