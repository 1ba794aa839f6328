"""The user documentation works as written.

- Every ```python block of README.md and docs/guide.md runs: each file's blocks in order, in one namespace per file,
  in a temporary working directory. A block preceded by the line ``<!-- skip-test -->`` is skipped (only for blocks
  that need a GPU or the network). A block preceded by ``<!-- requires: torch -->`` (any module names, separated by
  spaces) runs only where those modules can be imported: the optional extras' examples (pyrgd[torch], pyrgd[jax]);
  those are fenced as ```py, which runs here like ```python (tests/test_readme.py runs the ```python blocks of the
  README without looking at the marks).
- Every relative link of README.md and docs/*.md points to an existing file, and an ``#anchor`` to a heading of the
  file it names.
- The config key table of docs/guide.md names every key of the schema, with its default.
"""
from __future__ import annotations

import importlib.util
import pathlib
import re
import unicodedata

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUN_FILES = ["README.md", "docs/guide.md"]
LINK_FILES = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))
SKIP_MARK = "<!-- skip-test -->"
_REQUIRES = re.compile(r"^<!-- requires: ([\w. ]+) -->$")

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)


def fenced_blocks(text: str):
    """(language, code, line number, skipped) of every fenced code block of a Markdown text; skipped: marked
    skip-test, or marked ``requires:`` modules of which one cannot be imported here."""
    out = []
    for m in _FENCE.finditer(text):
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        line = text.count("\n", 0, m.start()) + 1
        req = _REQUIRES.match(before)
        missing = req is not None and any(importlib.util.find_spec(mod) is None for mod in req.group(1).split())
        out.append((m.group(1).strip(), m.group(2), line, before == SKIP_MARK or missing))
    return out


def _outside_code(text: str) -> str:
    """The text without its fenced blocks and inline code spans (links in them are not links)."""
    text = _FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def _links(text: str):
    """Targets of Markdown links and images ``[..](target)`` and of reference definitions ``[x]: target``."""
    body = _outside_code(text)
    found = re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", body)
    found += re.findall(r"^\s*\[[^\]]+\]:\s*(\S+)", body, re.M)
    return found


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    h = re.sub(r"`|\*\*|__", "", heading.strip())
    h = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", h)
    h = unicodedata.normalize("NFKC", h).lower()
    h = "".join(ch for ch in h if ch.isalnum() or ch in " -_")
    return h.replace(" ", "-")


def anchors(text: str) -> set:
    seen: dict = {}
    out = set()
    for m in re.finditer(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", _FENCE.sub("", text), re.M):
        s = slug(m.group(1))
        n = seen.get(s, 0)
        out.add(s if n == 0 else f"{s}-{n}")
        seen[s] = n + 1
    return out


@pytest.mark.parametrize("name", RUN_FILES)
def test_python_blocks_run(name, tmp_path, monkeypatch):
    text = (ROOT / name).read_text(encoding="utf-8")
    blocks = [b for b in fenced_blocks(text) if b[0] in ("python", "py")]
    assert blocks, f"{name} has no python block"
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_{pathlib.Path(name).stem}"}
    for _lang, code, line, skipped in blocks:
        if skipped:
            continue
        exec(compile(code, f"{name}, python block at line {line}", "exec"), namespace)


@pytest.mark.parametrize("name", LINK_FILES)
def test_relative_links_resolve(name):
    path = ROOT / name
    text = path.read_text(encoding="utf-8")
    bad = []
    for target in _links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            bad.append(f"{target}: {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest} does not exist")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            bad.append(f"{target}: no heading with the anchor #{anchor} in {dest.name}")
    assert not bad, f"{name}: broken links:\n" + "\n".join(bad)


def test_no_reference_outside_the_repository():
    for name in LINK_FILES:
        text = (ROOT / name).read_text(encoding="utf-8")
        assert "THEORY.md" not in text and "../shared" not in text and "shared/reference" not in text, name


def test_readme_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = fenced_blocks(text)
    assert [b[1].strip() for b in blocks[:2]] == ["pip install . && pyrgd train --preset quickstart",
                                                 'pip install ".[test]" && pytest']
    assert text.index(blocks[1][1]) < text.index("\n## ")


def test_skip_marks_only_before_code_blocks():
    for name in RUN_FILES:
        text = (ROOT / name).read_text(encoding="utf-8")
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if line.strip() == SKIP_MARK or _REQUIRES.match(line.strip()):
                assert i + 1 < len(lines) and lines[i + 1].startswith("```"), f"{name}:{i + 1}: {line.strip()} " \
                    "must stand on the line right before a code block"


def test_guide_lists_every_config_key():
    from pyrgd.config import SCHEMA

    text = (ROOT / "docs" / "guide.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(\w+\.\w+)` \| `([^`]*)` \|", text, re.M))
    missing = [f"{t}.{k}" for t, keys in SCHEMA.items() for k in keys if f"{t}.{k}" not in rows]
    assert not missing, f"docs/guide.md's key table lacks {missing}"
    unknown = [k for k in rows if k.split(".")[0] in SCHEMA and k.split(".")[1] not in SCHEMA[k.split(".")[0]]]
    assert not unknown, f"docs/guide.md's key table names keys the schema does not have: {unknown}"
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    for dotted, shown in rows.items():
        t, k = dotted.split(".")
        if t in SCHEMA and k in SCHEMA[t]:
            default = SCHEMA[t][k].default
            assert tomllib.loads(f"v = {shown}")["v"] == default, f"{dotted}: the guide says {shown}, the schema " \
                f"{default!r}"
