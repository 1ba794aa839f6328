"""The import graph of the pyrgd package has no cycle.

Every .py file under pyrgd/ is parsed with ``ast`` (nothing is imported); each ``import`` and ``from ... import``
of a pyrgd module counts, at module level or inside a function alike (a lazy import is still a dependency).
Relative imports are resolved against the importing module. ``from pkg import name`` is an edge to the submodule
``pkg.name`` when that is a module (a compiled extension such as pyrgd._cpu too: a leaf), otherwise to ``pkg``
itself (its ``__init__``) when that binds the name; a name it does not bind is a submodule that is not here (an
extension not built) and gives no edge. ``import a.b.c`` is an edge to ``a.b.c`` only: the parent packages a
Python import runs first are not counted, so a package ``__init__`` that imports its own submodules is no cycle by
itself. Imports by a computed name (``importlib.import_module(f"...")``) cannot be seen and are not counted.
"""
from __future__ import annotations

import ast
import os

import pytest

PKG = "pyrgd"
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PKG)


# --------------------------------------------------------------------------------------------- the graph
def module_files(root: str = ROOT, pkg: str = PKG) -> dict:
    """{dotted module name: (path, is_package)} of every module under ``root`` (a package named ``pkg``): the .py
    files and the compiled extensions (``_cpu.cpython-311-x86_64-linux-gnu.so``: a leaf, never parsed)."""
    mods = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        rel = os.path.relpath(dirpath, root)
        parts = [pkg] + ([] if rel == "." else rel.split(os.sep))
        for f in sorted(filenames):
            if f == "__init__.py":
                mods[".".join(parts)] = (os.path.join(dirpath, f), True)
            elif f.endswith(".py") or f.endswith((".so", ".pyd")):
                mods[".".join(parts + [f.split(".", 1)[0]])] = (os.path.join(dirpath, f), False)
    return mods


def _resolve_base(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute module name that ``from <'.' * level><target> import ...`` in ``module`` starts from."""
    if level == 0:
        return target or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 > len(parts) - 1:
        raise ImportError(f"{module}: relative import beyond the top-level package (level {level})")
    parts = parts[:len(parts) - (level - 1)]
    return ".".join(parts + ([target] if target else []))


def _parse(path: str):
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), filename=path)


def bound_names(tree) -> set | None:
    """The names a module binds at its top level (also inside if/try/with blocks, not in functions or classes);
    None when it cannot be known (``from x import *`` or a module ``__getattr__``)."""
    names = set()
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == "__getattr__":
                return None
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                if a.name == "*":
                    return None
                names.add(a.asname or a.name.split(".")[0])
        else:
            for sub in ast.walk(node):
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    names.add(sub.id)
            for field in ("body", "orelse", "finalbody", "handlers"):
                todo.extend(getattr(node, field, None) or [])
    return names


def imports_of(module: str, tree, is_package: bool, mods: dict, bound) -> set:
    """The pyrgd modules (names in ``mods``) that ``module`` (its parsed source ``tree``) imports anywhere.

    ``bound(pkg)``: the names the package ``pkg``'s ``__init__`` binds (None: unknown). ``from pkg import name``
    of a name it does not bind is a submodule that is not here (an extension not built): no edge to ``pkg``."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in mods:
                    out.add(a.name)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_base(module, is_package, node.level, node.module)
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in mods:
                    out.add(sub)  # a submodule imported by name
                elif base in mods:
                    names = bound(base) if mods[base][1] else None
                    if names is None or a.name in names:
                        out.add(base)  # a name of the module (of a package's __init__ for a package)
    out.discard(module)
    return out


def import_graph(root: str = ROOT, pkg: str = PKG) -> dict:
    """{module: sorted list of the pyrgd modules it imports} for every module of the package at ``root``."""
    mods = module_files(root, pkg)
    trees = {m: _parse(p) for m, (p, _) in mods.items() if p.endswith(".py")}
    cache: dict = {}

    def bound(m):
        if m not in cache:
            cache[m] = bound_names(trees[m])
        return cache[m]

    return {m: sorted(imports_of(m, trees[m], is_pkg, mods, bound)) if m in trees else []
            for m, (_p, is_pkg) in mods.items()}


def strongly_connected(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan), as sorted lists, sorted."""
    index, low, on_stack, stack, comps = {}, {}, set(), [], []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return sorted(comps)


def _shortest_cycle(graph: dict, start: str, comp: set) -> list:
    """A shortest cycle [start, ..., start] within ``comp`` (breadth-first)."""
    prev = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in graph[v]:
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return path[::-1] + [start]  # start, ..., v, start
            if w in comp and w not in prev:
                prev[w] = v
                queue.append(w)
    raise AssertionError(f"no cycle through {start} in {sorted(comp)}")  # pragma: no cover


def find_cycles(graph: dict) -> list:
    """The import cycles: a shortest cycle [a, ..., a] through every module that is on one, each cycle once
    (written from its smallest name), grouped by strongly connected component. Empty for an acyclic graph."""
    out = []
    for comp in strongly_connected(graph):
        seen = set()
        for v in comp:
            c = _shortest_cycle(graph, v, set(comp))[:-1]
            k = c.index(min(c))
            c = c[k:] + c[:k]
            if tuple(c) not in seen:
                seen.add(tuple(c))
                out.append(c + [c[0]])
    return out


# --------------------------------------------------------------------------------------------- the checker itself
def _write(root, files: dict):
    for rel, text in files.items():
        p = os.path.join(root, *rel.split("/"))
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w", encoding="utf-8") as f:
            f.write(text)


def test_checker_resolves_relative_lazy_and_submodule_imports(tmp_path):
    _write(tmp_path, {
        "__init__.py": "__version__ = '1'\nfrom .a import f\n",
        "a.py": "def f():\n    from .sub import leaf\n    from . import b\n",
        "b.py": "import pkg.sub.leaf\nfrom pkg import __version__\n",
        "sub/__init__.py": "from .leaf import g\nfrom . import other\n",
        "sub/leaf.py": "from .. import a\nfrom ..b import x\nimport os\n"
                       "try:\n    from .. import _ext, _missing\nexcept ImportError:\n    pass\n",
        "sub/other.py": "from ..sub import leaf\nfrom . import g\n",
        "_ext.cpython-311-x86_64-linux-gnu.so": "",
        "notes.txt": "import pkg.a\n",
    })
    g = import_graph(str(tmp_path), "pkg")
    assert g == {
        "pkg": ["pkg.a"],
        "pkg._ext": [],  # a compiled extension: a leaf
        "pkg.a": ["pkg.b", "pkg.sub.leaf"],  # inside a function; `from . import b` is the submodule pkg.b
        "pkg.b": ["pkg", "pkg.sub.leaf"],  # `from pkg import __version__` is an edge to the package
        "pkg.sub": ["pkg.sub.leaf", "pkg.sub.other"],
        "pkg.sub.leaf": ["pkg._ext", "pkg.a", "pkg.b"],  # _missing: not bound by pkg, not here: no edge
        "pkg.sub.other": ["pkg.sub", "pkg.sub.leaf"],  # g is a name of pkg.sub's __init__
    }
    # pkg.sub.other takes a name from its own package's __init__, which imports it: a cycle too
    assert strongly_connected(g) == [["pkg", "pkg.a", "pkg.b", "pkg.sub.leaf"], ["pkg.sub", "pkg.sub.other"]]
    cycles = find_cycles(g)
    assert ["pkg", "pkg.a", "pkg.b", "pkg"] in cycles and ["pkg.sub", "pkg.sub.other", "pkg.sub"] in cycles
    assert ["pkg.a", "pkg.sub.leaf", "pkg.a"] in cycles and ["pkg.b", "pkg.sub.leaf", "pkg.b"] in cycles
    for c in cycles:  # every listed cycle is made of edges of the graph
        assert c[0] == c[-1] and len(set(c)) == len(c) - 1 and all(w in g[v] for v, w in zip(c, c[1:]))


def test_bound_names_of_a_package_init():
    tree = ast.parse("import os.path\nfrom .a import f as g\nX = 1\nif X:\n    Y, (Z, W) = 1, (2, 3)\n"
                     "try:\n    import numpy as np\nexcept ImportError:\n    np = None\n"
                     "def h():\n    inner = 1\nclass K:\n    attr = 2\n")
    assert bound_names(tree) == {"os", "g", "X", "Y", "Z", "W", "np", "h", "K"}
    assert bound_names(ast.parse("from .a import *\n")) is None
    assert bound_names(ast.parse("def __getattr__(name):\n    return 1\n")) is None


def test_checker_finds_no_cycle_in_a_package_importing_its_submodules(tmp_path):
    _write(tmp_path, {
        "__init__.py": "from .a import f\nfrom .sub import g\n",
        "a.py": "from .sub.leaf import g\n",
        "sub/__init__.py": "from .leaf import g\n",
        "sub/leaf.py": "import os\nfrom ..c import h\n",
        "c.py": "def h():\n    return 1\n",
    })
    assert find_cycles(import_graph(str(tmp_path), "pkg")) == []


def test_checker_finds_a_lazy_two_module_cycle(tmp_path):
    _write(tmp_path, {"__init__.py": "", "x.py": "from .y import f\n", "y.py": "def f():\n    from . import x\n"})
    assert find_cycles(import_graph(str(tmp_path), "pkg")) == [["pkg.x", "pkg.y", "pkg.x"]]


# --------------------------------------------------------------------------------------------- pyrgd
def test_the_checker_sees_pyrgd():
    g = import_graph()
    assert len(g) > 20 and "pyrgd.config" in g and "pyrgd.errors" in g["pyrgd.data"]


def test_pyrgd_import_graph_has_no_cycle():
    g = import_graph()
    comps = strongly_connected(g)
    if comps:
        text = "\n".join("  " + " -> ".join(c) for c in find_cycles(g))
        groups = "\n".join("  " + ", ".join(c) for c in comps)
        pytest.fail(f"import cycles in pyrgd (a shortest one through every module on one):\n{text}\n"
                    f"modules that import each other (strongly connected groups):\n{groups}")
