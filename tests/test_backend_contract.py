"""Every backend module offers the same door (pyrgd.backends.CONTRACT), with the same signatures, and code outside
pyrgd/backends reaches the kernels only through pyrgd.ops and the step engine."""
import importlib
import inspect
import pathlib
import re

import pytest

from pyrgd.backends import BACKENDS, CONTRACT

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "pyrgd"


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_module_has_the_whole_contract(name):
    """Imports without its library (CuPy for cuda); defines every name of the contract."""
    mod = importlib.import_module(f"pyrgd.backends.{name}")
    missing = [c for c in CONTRACT if not hasattr(mod, c)]
    assert not missing, f"pyrgd.backends.{name} lacks {missing}"
    assert mod.name == name
    assert "neurons" in mod.METHODS


@pytest.mark.parametrize("fn", ["forward", "step", "wide_grad", "gram", "tail", "network_gradients", "engine",
                                "plan_step"])
def test_backend_signatures_agree(fn):
    """The functions of the contract take the same parameters, by name and order, on every backend."""
    sigs = {n: list(inspect.signature(getattr(importlib.import_module(f"pyrgd.backends.{n}"), fn)).parameters)
            for n in BACKENDS}
    assert len({tuple(v) for v in sigs.values()}) == 1, sigs


def test_nothing_outside_the_backends_reaches_into_them():
    """No module outside pyrgd/backends imports the extension, calls a backend's private module accessor or
    branches on the cpu backend's name."""
    pattern = re.compile(r'_module\(\)|backend == "cpu"|import _cpu')
    hits = []
    for path in PACKAGE.rglob("*.py"):
        if "backends" in path.relative_to(PACKAGE).parts:
            continue
        for i, line in enumerate(path.read_text().splitlines(), start=1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(PACKAGE.parent)}:{i}: {line.strip()}")
    assert not hits, "\n".join(hits)
