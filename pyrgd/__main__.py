"""``python -m pyrgd``: the same command line as ``pyrgd`` (see :mod:`pyrgd.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
