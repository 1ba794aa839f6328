"""``python -m pyrgd.bench``: the same as ``pyrgd bench``."""
import sys

from . import main

sys.exit(main())
