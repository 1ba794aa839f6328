"""Writing a file atomically: a temporary file beside it, then os.replace (no other pyrgd module imported, so that
every module that writes files can use it)."""
from __future__ import annotations

import os
import tempfile


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: the process's umask, read once at import (reading it means setting it, which is not thread-safe later)
_UMASK = _read_umask()


def atomic_write(path, write, mode="w"):
    """Call ``write(f)`` on a temporary file beside ``path``, then move it onto ``path`` with os.replace.

    On any exception (including KeyboardInterrupt) the temporary file is removed and ``path`` is left untouched.
    mode: 'w' (text, UTF-8, newline='') or 'wb'. The file gets the permissions a plain open() would give it: those
    of the file it replaces, else 0o666 less the umask (mkstemp's own are 0o600, private to the user).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        try:
            perms = os.stat(path).st_mode & 0o7777
        except OSError:
            perms = 0o666 & ~_UMASK
        if hasattr(os, "fchmod"):
            os.fchmod(fd, perms)
        if mode == "wb":
            f = os.fdopen(fd, "wb")
        else:
            f = os.fdopen(fd, "w", encoding="utf-8", newline="")
        with f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.replace(tmp, path)
        except OSError as e:  # name the file the caller asked for, not the temporary one
            raise OSError(e.errno, f"cannot write {path}: {e.strerror}") from None
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
