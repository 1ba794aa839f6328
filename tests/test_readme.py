"""The README's examples run as written, and its two commands are the ones CI runs."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("i", range(len(re.findall(r"```python\n", README))))
def test_python_examples_run(i, tmp_path, monkeypatch):
    block = re.findall(r"```python\n(.*?)```", README, re.S)[i]
    monkeypatch.chdir(tmp_path)
    exec(compile(block, f"README.md python block {i}", "exec"), {"__name__": "readme"})


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second():
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    assert blocks[0].strip() == "pip install . && pyrgd train --preset quickstart"
    test_cmd = blocks[1].strip()
    assert test_cmd == 'pip install ".[test]" && pytest'
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci.splitlines()
    assert README.index(blocks[0]) < README.index("\n## ")  # they come before any section
