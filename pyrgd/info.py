"""``pyrgd info``: what works on this machine (versions, backends, BLAS), as a dict and as text.

Nothing here raises: a backend whose module is missing or whose check fails is reported as missing, with the
reason and what to install.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import sys

__all__ = ["collect_info", "format_info", "BACKEND_ORDER"]

#: the lines of the report, in order (blas is not a backend of pyrgd, but what the tail and reference run on)
BACKEND_ORDER = ("reference", "cpu", "blas", "cuda")

_HINTS = {
    "cpu": "reinstall pyrgd from source so that its C++ extension pyrgd._cpu is built (pip install .; needs a C++ "
    "compiler with OpenMP)",
    "cuda": "install CuPy for your CUDA version (pip install 'pyrgd[gpu]' or cupy-cuda12x) on a machine with an "
    "NVIDIA GPU",
}


def _install_hint(name: str) -> str:
    try:
        from .ops import _INSTALL_HINT  # the same words as the errors of pyrgd.ops

        return _INSTALL_HINT.get(name, _HINTS.get(name, ""))
    except Exception:
        return _HINTS.get(name, "")


def _version(dist: str, module: str | None = None):
    """Installed version of a distribution, or of an importable module; None when absent."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        pass
    if module is None:
        return None
    try:
        return getattr(importlib.import_module(module), "__version__", "unknown")
    except Exception:
        return None


def _pyrgd_version() -> str:
    v = _version("pyrgd")
    if v is not None:
        return v
    try:
        import pyrgd

        return getattr(pyrgd, "__version__", "unknown (not installed)")
    except Exception:
        return "unknown (not installed)"


def _plain(obj):
    """Make build_info()/device_info() values JSON-friendly."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return str(obj)


def _check_available(mod):
    res = mod.available()
    if isinstance(res, tuple):
        ok = bool(res[0])
        why = str(res[1]) if len(res) > 1 and res[1] else ""
    else:
        ok, why = bool(res), ""
    return ok, why


def _backend_module_info(name: str, extra_fn: str) -> dict:
    entry: dict = {"ok": False, "detail": "", "install": _install_hint(name)}
    try:
        mod = importlib.import_module(f"pyrgd.backends.{name}")
    except Exception as e:  # ImportError, or a broken module
        entry["detail"] = f"pyrgd.backends.{name} cannot be imported ({type(e).__name__}: {e})"
        return entry
    try:
        ok, why = _check_available(mod)
    except Exception as e:
        ok, why = False, f"{type(e).__name__}: {e}"
    entry["ok"] = ok
    entry["detail"] = why
    fn = getattr(mod, extra_fn, None)
    if ok and fn is not None:
        try:
            entry[extra_fn] = _plain(fn())
        except Exception as e:
            entry[extra_fn] = {"error": f"{type(e).__name__}: {e}"}
    if ok:
        entry.pop("install")
    return entry


def _blas_info() -> dict:
    import numpy as np

    entry: dict = {"ok": False, "detail": ""}
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        entry["name"] = blas.get("name")
        entry["version"] = blas.get("version")
        entry["ok"] = bool(blas.get("found", False))
    except Exception as e:  # older NumPy without mode="dicts"
        entry["detail"] = f"numpy.show_config(mode='dicts') failed ({type(e).__name__})"
    try:
        from threadpoolctl import threadpool_info

        pools = [p for p in threadpool_info() if p.get("user_api") in ("blas", "openmp")]
        entry["threadpools"] = [{k: p.get(k) for k in ("user_api", "internal_api", "version", "num_threads",
                                                         "threading_layer", "filepath")} for p in pools]
        blas_pools = [p for p in pools if p.get("user_api") == "blas"]
        if blas_pools:
            entry["ok"] = True
            entry["threads"] = blas_pools[0].get("num_threads")
            entry.setdefault("name", None)
            if not entry.get("name"):
                entry["name"] = blas_pools[0].get("internal_api")
            if not entry.get("version"):
                entry["version"] = blas_pools[0].get("version")
    except ImportError:
        pass
    except Exception as e:
        entry["detail"] = f"threadpoolctl failed ({type(e).__name__}: {e})"
    if not entry["ok"] and not entry["detail"]:
        entry["detail"] = "NumPy reports no BLAS library"
    return entry


def collect_info() -> dict:
    """Versions, the state of every backend, and the BLAS NumPy uses, as a JSON-friendly dict.

    Keys: ``versions`` {package: version or None}, ``platform`` {system, machine, cpu_count, python},
    ``backends`` {reference, cpu, cuda: {ok, detail, install (when missing), build_info / device_info}; cpu also
    grad_panel_bytes and grad_panel_rows_min, the panel budget of the GD step's rows method},
    ``blas`` {ok, name, version, threads, threadpools}.
    """
    import numpy as np

    versions = {
        "pyrgd": _pyrgd_version(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": _version("scipy", "scipy"),
        "matplotlib": _version("matplotlib", "matplotlib"),
        "tqdm": _version("tqdm", "tqdm"),
    }
    for dist, mod in (("numba", "numba"), ("scikit-learn", None), ("threadpoolctl", None), ("tomli-w", None)):
        v = _version(dist, mod)
        if v is not None:
            versions[dist] = v
    cupy_v = None
    for dist in ("cupy", "cupy-cuda12x", "cupy-cuda13x", "cupy-cuda11x"):
        cupy_v = _version(dist)
        if cupy_v is not None:
            break
    if cupy_v is not None:
        versions["cupy"] = cupy_v
    backends = {
        "reference": {"ok": True, "detail": f"NumPy {np.__version__} (the float64 oracle; slow)"},
        "cpu": _backend_module_info("cpu", "build_info"),
        "cuda": _backend_module_info("cuda", "device_info"),
    }
    if backends["cpu"].get("ok"):  # what the rows method's choice reads (pyrgd.backends.cpu.rows_kept)
        from .backends import cpu

        budget = cpu.panel_budget()
        backends["cpu"]["grad_panel_bytes"] = budget["bytes"]
        backends["cpu"]["grad_panel_rows_min"] = budget["rows_min"]
    if backends["cuda"]["ok"] is False and cupy_v is None and "cannot be imported" not in backends["cuda"]["detail"]:
        backends["cuda"]["detail"] = backends["cuda"]["detail"] or "CuPy is not installed"
    return {
        "versions": versions,
        "platform": {"system": platform.system(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
                     "python": sys.executable},
        "backends": backends,
        "blas": _blas_info(),
    }


def _short(d, keys) -> str:
    parts = []
    for k in keys:
        if isinstance(d, dict) and d.get(k) not in (None, "", [], {}):
            parts.append(f"{k} {d[k]}")
    return ", ".join(parts)


def _extra_text(name: str, entry: dict) -> str:
    if name == "cpu" and isinstance(entry.get("build_info"), dict):
        bi = entry["build_info"]
        text = _short(bi, ("openmp_threads", "threads", "openmp", "compiler", "flags"))
        return text or ", ".join(f"{k} {v}" for k, v in list(bi.items())[:4])
    if name == "cuda" and isinstance(entry.get("device_info"), dict):
        di = entry["device_info"]
        text = _short(di, ("name", "gpu", "compute_capability", "cuda_version", "cuda_runtime_version",
                           "cuda_driver_version", "cuda", "kernels_compile", "compile"))
        return text or ", ".join(f"{k} {v}" for k, v in list(di.items())[:4])
    return ""


def format_info(d: dict) -> str:
    """The report of :func:`collect_info` as text: one line of versions, then one line per backend."""
    v = d.get("versions", {})
    head = "  ".join(f"{k} {val}" for k, val in v.items() if val is not None)
    lines = [head]
    backends = d.get("backends", {})
    for name in BACKEND_ORDER:
        if name == "blas":
            b = d.get("blas", {})
            detail = " ".join(str(x) for x in (b.get("name"), b.get("version")) if x)
            if b.get("threads") is not None:
                detail += f", {b['threads']} threads"
            if not b.get("ok"):
                detail = b.get("detail") or detail
            lines.append(f"{'blas':<10} {'ok' if b.get('ok') else 'missing':<8} {detail}".rstrip())
            continue
        e = backends.get(name, {})
        ok = bool(e.get("ok"))
        detail = e.get("detail") or ""
        extra = _extra_text(name, e) if (name == "cuda" or not detail) else ""
        if extra:
            detail = f"{detail}; {extra}" if detail else extra
        if e.get("grad_panel_bytes"):
            detail += (f"; GD step panels of at most {e['grad_panel_bytes'] / 2**20:.0f} MiB, at least "
                       f"{e['grad_panel_rows_min']} rows (wider layers recompute some neurons: pyrgd.backends.cpu.rows_kept)")
        if not ok and e.get("install"):
            detail = f"{detail}; to install: {e['install']}" if detail else f"to install: {e['install']}"
        lines.append(f"{name:<10} {'ok' if ok else 'missing':<8} {detail}".rstrip())
    return "\n".join(lines)
