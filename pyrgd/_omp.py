"""How the C++ kernels' OpenMP threads wait at a barrier: the libgomp settings pyrgd chooses before its extension
loads (imported by :mod:`pyrgd.backends.cpu`; imports nothing of pyrgd)."""
from __future__ import annotations

import os

#: GOMP_SPINCOUNT pyrgd sets, unless the user set it or OMP_WAIT_POLICY, before its C++ extension loads libgomp:
#: how long (in pause instructions) a thread waiting at one of libgomp's barriers or for the next parallel region
#: spins before it sleeps. libgomp's default (300000) holds a core for milliseconds: beside a busy process, two
#: threads ran B1 at 0.78x one thread with it, 0.91-0.95x with 30000; 10000 and less made two threads no faster
#: than one on a quiet machine (wake-ups from sleep cost more than the barriers' usual imbalance in a VM).
#: docs/performance.md, "Under load", has the measurements. (The panels' barriers of network_grad are pyrgd's own,
#: csrc/cpu/kernel_util.h: they spin, then yield.)
DEFAULT_SPINCOUNT = "30000"


def set_default_wait_policy(environ=None) -> str:
    """Set GOMP_SPINCOUNT to :data:`DEFAULT_SPINCOUNT` in ``environ`` (os.environ) unless GOMP_SPINCOUNT or
    OMP_WAIT_POLICY is already there; returns the policy in force, e.g. 'GOMP_SPINCOUNT=30000 (pyrgd's default)'.

    libgomp reads the variables once, when it loads: this must run before the extension (or anything else using
    libgomp) is imported, and it changes nothing where libgomp is already loaded."""
    env = os.environ if environ is None else environ
    for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        if env.get(key):
            return f"{key}={env[key]} (set by the user)"
    if _libgomp_loaded():
        return "libgomp's default (it was loaded before pyrgd)"
    env["GOMP_SPINCOUNT"] = DEFAULT_SPINCOUNT
    return f"GOMP_SPINCOUNT={DEFAULT_SPINCOUNT} (pyrgd's default)"


def _libgomp_loaded() -> bool:
    try:
        with open("/proc/self/maps") as f:
            return any("libgomp" in line for line in f)
    except OSError:
        return False
