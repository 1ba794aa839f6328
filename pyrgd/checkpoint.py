"""Checkpoints of a GD run: everything needed to continue it bit for bit, in one ``.npz`` file without pickle.

A checkpoint holds the step k, the weights and what the step engine carries (:meth:`StepEngine.state`), the update
rule's velocity (``velocity_1`` ... ``velocity_L`` for momentum and Nesterov, :mod:`pyrgd.update_rules`), the
resolved step size, the history and certificates so far, the tracker's running values, a SHA-256 of X and Y, the
run's identity (shapes, dtype, activation, multipliers, backend, method, instruction set, update rule, loss) and
versions. Arrays are stored as arrays; everything else as one JSON document (``meta``), read back with
``allow_pickle=False``. Files are written atomically (a temporary file moved into place), so a kill leaves the
previous checkpoint whole.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile

import numpy as np

from .errors import PyrgdError

#: the checkpoint's file name in a run folder
CHECKPOINT_FILE = "checkpoint.npz"
#: the format's version (bumped when the contents change incompatibly)
FORMAT = 1


def data_digest(X, Y) -> str:
    """SHA-256 (hex) of X's and Y's dtype, shape and bytes: what a resume checks its data against."""
    h = hashlib.sha256()
    for a in (X, Y):
        a = np.ascontiguousarray(a if isinstance(a, np.ndarray) else a.get())
        h.update(f"{a.dtype.str}{a.shape}".encode())
        flat = a.reshape(-1).view(np.uint8)
        for i in range(0, flat.size, 1 << 24):  # 16 MiB at a time
            h.update(flat[i:i + (1 << 24)].tobytes())
    return h.hexdigest()


def save_checkpoint(path, arrays: dict, meta: dict) -> None:
    """Write ``arrays`` (name -> NumPy array) and ``meta`` (JSON-serializable) to ``path`` atomically."""
    from .runio import atomic_write, json_safe

    doc = json.dumps(json_safe({"format": FORMAT, **meta}), allow_nan=False)
    payload = {f"a_{k}": np.ascontiguousarray(v) for k, v in arrays.items()}
    payload["meta"] = np.frombuffer(doc.encode("utf-8"), dtype=np.uint8)

    def write(f):
        np.savez(f, **payload)

    atomic_write(path, write, mode="wb")


def load_checkpoint(path) -> tuple[dict, dict]:
    """(arrays, meta) of a checkpoint file; PyrgdError naming the file and what is wrong with it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_FILE)
    try:
        with np.load(path, allow_pickle=False) as z:
            if "meta" not in z.files:
                raise PyrgdError(f"resume: {path} is not a pyrgd checkpoint (no meta)")
            meta = json.loads(bytes(z["meta"]).decode("utf-8"))
            arrays = {k[2:]: z[k] for k in z.files if k.startswith("a_")}
    except FileNotFoundError:
        raise PyrgdError(f"resume: no checkpoint at {path}") from None
    except PyrgdError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, UnicodeDecodeError, json.JSONDecodeError,
            io.UnsupportedOperation) as e:
        raise PyrgdError(f"resume: cannot read the checkpoint {path}: {type(e).__name__}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PyrgdError(f"resume: {path} has checkpoint format {meta.get('format') if isinstance(meta, dict) else '?'}"
                         f", this pyrgd reads format {FORMAT}")
    return arrays, meta


#: identity keys added after format 1 was first written, with the value a checkpoint without them had
IDENTITY_DEFAULTS = {"update": "gd", "loss": "squared"}
#: identity keys that older checkpoints lack: compared only where the checkpoint has them
IDENTITY_SINCE = {"initial_weights"}
#: what a difference in a key means, where its value does not say it
IDENTITY_HINTS = {"initial_weights": " (the network's initial weights differ: its init, seed, scale or weights)"}


def check_identity(saved: dict, now: dict, path) -> None:
    """PyrgdError listing every key of the run's identity that differs between the checkpoint and this run (a key
    of :data:`IDENTITY_DEFAULTS` missing on either side has its default value)."""
    def get(d, k):
        return d.get(k, IDENTITY_DEFAULTS.get(k))

    keys = sorted(set(now) | set(IDENTITY_DEFAULTS))
    keys = [k for k in keys if k not in IDENTITY_SINCE or k in saved]  # checkpoints written before the key
    differ = [k for k in keys if get(saved, k) != get(now, k)]
    if len(differ) > 1 and "initial_weights" in differ:  # implied by the others (other shapes, another dtype)
        differ.remove("initial_weights")
    diffs = [f"{k}: checkpoint {get(saved, k)!r}, now {get(now, k)!r}{IDENTITY_HINTS.get(k, '')}" for k in differ]
    if diffs:
        raise PyrgdError(f"resume: the checkpoint {path} is of another run (" + "; ".join(diffs) +
                         "); resume with the same data and config, or start a new run")
