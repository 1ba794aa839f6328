"""The version of pyrgd (equal to [project] version in pyproject.toml) and the source commit it runs from."""
from __future__ import annotations

__version__ = "0.1.0"


def source_commit() -> str | None:
    """The git commit of the source tree pyrgd runs from (with '+dirty' for uncommitted changes), or None where it
    is not a git checkout (an installed wheel)."""
    import os
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None
