"""The table of the activations is one table: the header's list, the extension's table and the Python tables agree.

csrc/include/pyrgd/activations.h defines it (PYRGD_FOR_EACH_ACTIVATION: one line M(Struct, code) per activation,
each struct's ``code`` and ``name`` beside it); the extension exposes what it was compiled from as
``pyrgd._cpu.ACTIVATIONS``; pyrgd.activations.ACTIVATION_TABLE is the Python copy (the package imports without the
extension), from which ACTIVATION_CODES and the CUDA backend's ACTIVATION_STRUCTS derive. The header is read as text,
so these checks need neither a compiler nor the extension (only the extension's own check skips without it).
"""
import re
from pathlib import Path

import numpy as np
import pytest

from pyrgd import activations
from pyrgd.activations import ACTIVATION_CODES, ACTIVATION_STRUCTS, ACTIVATION_TABLE, parse_activation
from pyrgd.backends import cuda as cuda_backend

HEADER = Path(__file__).resolve().parents[1] / "csrc" / "include" / "pyrgd" / "activations.h"


def header_list():
    """[(Struct, code)] of the X-macro PYRGD_FOR_EACH_ACTIVATION, in its order."""
    text = HEADER.read_text()
    m = re.search(r"^#define PYRGD_FOR_EACH_ACTIVATION\(M\)((?:.*\\\n)+.*)$", text, re.M)
    assert m, "no #define PYRGD_FOR_EACH_ACTIVATION(M) in the header"
    body = m.group(1).replace("\\\n", "\n")
    entries = re.findall(r"\bM\((\w+),\s*(\d+)\)", body)
    assert entries and len(entries) == body.count("M("), body
    return [(s, int(c)) for s, c in entries]


def header_structs():
    """{Struct: (code member, name member)} of the structs of namespace pyrgd::act."""
    text = HEADER.read_text()
    found = re.findall(r"struct (\w+) \{\s*static constexpr int code = (\d+);\s*"
                       r"static constexpr const char\* name = \"(\w+)\";", text)
    return {s: (int(c), n) for s, c, n in found}


def test_python_table_is_well_formed():
    names = [n for n, _, _ in ACTIVATION_TABLE]
    structs = [s for _, _, s in ACTIVATION_TABLE]
    assert len(set(names)) == len(names) and len(set(structs)) == len(structs)
    assert [c for _, c, _ in ACTIVATION_TABLE] == list(range(len(ACTIVATION_TABLE)))  # codes 0 .. n - 1, in order
    assert ACTIVATION_CODES == {n: c for n, c, _ in ACTIVATION_TABLE}
    assert list(ACTIVATION_CODES) == names  # error messages list the names in table order
    assert ACTIVATION_STRUCTS == {n: s for n, _, s in ACTIVATION_TABLE}
    assert set(activations.DEFAULT_GAMMA) <= set(names)


def test_cuda_structs_derive_from_the_python_table():
    assert cuda_backend.ACTIVATION_STRUCTS == ACTIVATION_STRUCTS


def test_header_list_matches_the_python_table():
    """The X-macro list, line by line: the same structs with the same codes in the same order."""
    assert header_list() == [(s, c) for _, c, s in ACTIVATION_TABLE]


def test_header_structs_match_the_list_and_the_python_names():
    """Each struct's `code` member is its line's code and its `name` member the Python name (the compiler checks the
    codes too, with static_assert; this checks the names)."""
    structs = header_structs()
    by_struct = {s: (c, n) for n, c, s in ACTIVATION_TABLE}
    assert set(structs) == {s for s, _ in header_list()}, "a struct of the list lacks `code`/`name` members"
    assert structs == by_struct


def test_cuda_struct_names_exist_in_the_header():
    text = HEADER.read_text()
    listed = {s for s, _ in header_list()}
    for name, struct in cuda_backend.ACTIVATION_STRUCTS.items():
        assert re.search(rf"^struct {struct} \{{", text, re.M), f"{name}: no struct {struct} in {HEADER.name}"
        assert struct in listed, f"{name}: struct {struct} is not in PYRGD_FOR_EACH_ACTIVATION"


def test_extension_table_matches_the_python_table():
    _cpu = pytest.importorskip("pyrgd._cpu", reason="the C++ extension is not built")
    assert _cpu.ACTIVATIONS == ACTIVATION_CODES
    assert list(_cpu.ACTIVATIONS) == list(ACTIVATION_CODES)  # generated from the list, in its order
    z = np.linspace(-2.0, 2.0, 9)
    for name, code in ACTIVATION_CODES.items():  # every code of the table is accepted, and none outside it
        s, ds = _cpu.activation(z, code, 0.1)
        assert s.shape == z.shape and ds.shape == z.shape, name
    for bad in (-1, len(ACTIVATION_CODES)):
        with pytest.raises(ValueError, match="act_code"):
            _cpu.activation(z, bad)


def test_every_name_has_its_numpy_formulas():
    """A table entry without its formulas in pyrgd.activations.sigma_and_derivative would fail at the first use."""
    z = np.linspace(-2.0, 2.0, 9)
    for name in ACTIVATION_CODES:
        act = parse_activation(name)
        s, ds = activations.sigma_and_derivative(act, z)
        assert s.shape == z.shape and ds.shape == z.shape and np.all(np.isfinite(s)) and np.all(np.isfinite(ds))
