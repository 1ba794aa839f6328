"""How the C++ kernels' OpenMP threads wait at a barrier: the libgomp settings pyrgd chooses before its extension
loads (imported by :mod:`pyrgd.backends.cpu`; imports nothing of pyrgd)."""
from __future__ import annotations

import os

#: GOMP_SPINCOUNT pyrgd sets, unless the user set it or OMP_WAIT_POLICY, before its C++ extension loads libgomp:
#: how long (in spins of a pause instruction) a thread that reaches a barrier early spins before it sleeps.
#: libgomp's default (300000 spins, about a millisecond) is meant for a machine of one's own; on a shared one
#: (another process on a core) the spinning thread holds its core while its partner, preempted, waits for one,
#: and every barrier waits a scheduler's time slice: two threads ran B1 5x slower than one (docs/performance.md,
#: "Under load"). A short spin covers the imbalance of a barrier on a quiet machine and gives the core up soon.
DEFAULT_SPINCOUNT = "10000"


def set_default_wait_policy(environ=None) -> str:
    """Set GOMP_SPINCOUNT to :data:`DEFAULT_SPINCOUNT` in ``environ`` (os.environ) unless GOMP_SPINCOUNT or
    OMP_WAIT_POLICY is already there; returns the policy in force, e.g. 'GOMP_SPINCOUNT=10000 (pyrgd's default)'.

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
