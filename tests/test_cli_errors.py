"""The command line's failures: one line on stderr, a documented exit code, never a traceback."""
import pytest

from pyrgd import cli
from pyrgd.cli import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_IO, EXIT_RESOURCES, main


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["--version"])
    assert e.value.code == 0
    from pyrgd import __version__

    assert capsys.readouterr().out.strip() == f"pyrgd {__version__}"
    assert main(["--version"]) == 0


def _one_line(err):
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("pyrgd: error: ") and "Traceback" not in err, err
    return lines[0]


def test_truncated_data_file_is_bad_input(tmp_path, capsys):
    f = tmp_path / "x.npy"
    f.write_bytes(b"")
    rc = main(["train", "--set", "data.source=file", "--set", f"data.path={f}", "--no-progress",
               "--out", str(tmp_path / "r")])
    assert rc == EXIT_BAD_INPUT
    _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("exc,code,text", [(MemoryError(), EXIT_RESOURCES, "out of memory"),
                                           (IsADirectoryError(21, "Is a directory", "/tmp/w.npz"), EXIT_IO,
                                            "/tmp/w.npz: Is a directory"),
                                           (OSError(28, "No space left on device", "/x/summary.json"), EXIT_IO,
                                            "No space left on device"),
                                           (RecursionError("deep"), EXIT_BAD_INPUT, "cannot read the input"),
                                           (ZeroDivisionError("oops"), EXIT_INTERNAL, "internal error")])
def test_each_failure_has_its_code(monkeypatch, capsys, exc, code, text):
    def boom(args):
        raise exc

    monkeypatch.setattr(cli, "_cmd_info", boom)
    monkeypatch.delenv("PYRGD_TRACEBACK", raising=False)
    assert main(["info"]) == code
    assert text in _one_line(capsys.readouterr().err)


def test_traceback_on_request(monkeypatch):
    def boom(args):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(cli, "_cmd_info", boom)
    monkeypatch.setenv("PYRGD_TRACEBACK", "1")
    with pytest.raises(ZeroDivisionError):
        main(["info"])


def test_non_empty_out_is_refused_unless_forced(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "old.csv").write_text("stale")
    args = ["train", "--N", "16", "--widths", "64,4,1", "--steps", "2", "--lr", "0.01", "--no-progress",
            "--out", str(out)]
    assert main(args) == EXIT_BAD_INPUT
    assert "is not empty" in _one_line(capsys.readouterr().err)
    assert main(args + ["--force"]) == 0
    assert (out / "summary.json").exists()
