"""Reading TOML files (configs, sweep grids, experiment files) with one set of errors."""
from __future__ import annotations

import os
import sys

from .errors import PyrgdError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def read_toml(path, name: str) -> dict:
    """The TOML file at ``path`` as a dict; PyrgdError naming the argument ``name`` and the file when the path is not
    a path, is missing, is a folder, cannot be read, is not UTF-8 or holds a TOML syntax error (the message names
    the line)."""
    if not isinstance(path, (str, os.PathLike)):
        raise PyrgdError(f"{name}: expected the path of a TOML file, got {path!r}")
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise PyrgdError(f"{name}: file not found: {path}") from None
    except IsADirectoryError:
        raise PyrgdError(f"{name}: {path} is a folder, expected a TOML file") from None
    except OSError as e:
        raise PyrgdError(f"{name}: cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise PyrgdError(f"{name}: {path} is not UTF-8 text ({e.reason})") from None
    except tomllib.TOMLDecodeError as e:
        raise PyrgdError(f"{name}: TOML syntax error in {path}: {e}") from None
