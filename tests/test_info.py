"""pyrgd.info: the health check behind `pyrgd info`."""
import json
import sys
import types

import numpy as np
import pytest

from pyrgd import cli, info
from pyrgd.backends import BACKENDS


def test_collect_info_names_every_backend_and_is_json():
    d = info.collect_info()
    json.dumps(d, allow_nan=False)
    assert set(BACKENDS) <= set(d["backends"])
    for name in BACKENDS:
        e = d["backends"][name]
        assert isinstance(e["ok"], bool) and isinstance(e["detail"], str)
        assert ("install" in e) == (not e["ok"])  # what to install, exactly when missing
    assert d["backends"]["reference"]["ok"] is True
    v = d["versions"]
    assert v["numpy"] == np.__version__ and v["python"].count(".") == 2
    for key in ("pyrgd", "scipy", "matplotlib"):
        assert v[key]
    assert isinstance(d["blas"]["ok"], bool)


def test_format_info_has_one_line_per_backend():
    d = info.collect_info()
    lines = info.format_info(d).splitlines()
    assert lines[0].startswith("pyrgd ") and "numpy" in lines[0]
    assert [ln.split()[0] for ln in lines[1:]] == list(info.BACKEND_ORDER)
    for ln, name in zip(lines[1:], info.BACKEND_ORDER):
        state = ln.split()[1]
        ok = d["blas"]["ok"] if name == "blas" else d["backends"][name]["ok"]
        assert state == ("ok" if ok else "missing")


def test_a_missing_backend_module_is_reported_with_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyrgd.backends.cuda", None)  # import fails
    d = info.collect_info()
    e = d["backends"]["cuda"]
    assert e["ok"] is False and "cannot be imported" in e["detail"] and "CuPy" in e["install"]
    line = [ln for ln in info.format_info(d).splitlines() if ln.startswith("cuda")][0]
    assert "missing" in line and "to install:" in line


def test_available_false_and_a_crashing_check(monkeypatch):
    down = types.ModuleType("pyrgd.backends.cpu")
    down.available = lambda: (False, "pyrgd._cpu was not built")
    monkeypatch.setitem(sys.modules, "pyrgd.backends.cpu", down)
    broken = types.ModuleType("pyrgd.backends.cuda")

    def boom():
        raise RuntimeError("driver exploded")

    broken.available = boom
    monkeypatch.setitem(sys.modules, "pyrgd.backends.cuda", broken)
    d = info.collect_info()
    assert d["backends"]["cpu"] == {"ok": False, "detail": "pyrgd._cpu was not built",
                                    "install": d["backends"]["cpu"]["install"]}
    assert "pip install" in d["backends"]["cpu"]["install"]
    assert d["backends"]["cuda"]["ok"] is False and "driver exploded" in d["backends"]["cuda"]["detail"]


def test_working_backend_reports_its_build_and_device_info(monkeypatch):
    cpu = types.ModuleType("pyrgd.backends.cpu")
    cpu.available = lambda: (True, "")
    cpu.build_info = lambda: {"compiler": "gcc", "max_threads": 4, "dtypes": ("float32", "float64")}
    cuda = types.ModuleType("pyrgd.backends.cuda")
    cuda.available = lambda: (True, "CuPy 13")
    cuda.device_info = lambda: {"name": "Fake GPU", "cuda_version": "12.4", "kernels_compile": True}
    monkeypatch.setitem(sys.modules, "pyrgd.backends.cpu", cpu)
    monkeypatch.setitem(sys.modules, "pyrgd.backends.cuda", cuda)
    d = info.collect_info()
    assert d["backends"]["cpu"]["build_info"]["dtypes"] == ["float32", "float64"]
    assert d["backends"]["cuda"]["device_info"]["name"] == "Fake GPU"
    assert "install" not in d["backends"]["cuda"]
    text = info.format_info(d)
    assert "Fake GPU" in text and "cuda_version 12.4" in text and "gcc" in text


def test_info_command_text_and_json(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith("reference")
    assert cli.main(["info", "--json"]) == 0
    assert set(BACKENDS) <= set(json.loads(capsys.readouterr().out)["backends"])


@pytest.mark.parametrize("bad", [["info", "--verbose"], ["info", "extra"]])
def test_info_bad_flags(capsys, bad):
    assert cli.main(bad) == 2
    assert capsys.readouterr().err.startswith("pyrgd: error: ")


def test_cpu_backend_reports_the_panel_budget_the_auto_method_reads():
    from pyrgd.backends import cpu

    d = info.collect_info()
    if not cpu.available()[0]:
        assert "grad_panel_bytes" not in d["backends"]["cpu"]
        return
    e = d["backends"]["cpu"]
    assert e["grad_panel_bytes"] == cpu._module().GRAD_PANEL_BYTES > 0
    assert e["grad_panel_rows_min"] == cpu._module().GRAD_PANEL_ROWS_MIN > 0
    assert f"panels of at most {e['grad_panel_bytes'] / 2**20:.0f} MiB" in info.format_info(d)