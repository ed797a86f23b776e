"""Tests of the CLI's handling of user errors: one line on stderr, exit status 2."""

from pathlib import Path

from typer.testing import CliRunner

from repro_lits.cli import app


def test_results_path_under_file_is_one_line_error(tmp_path: Path):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")

    result = CliRunner().invoke(
        app, ["run", "--experiment", "smoke", "--runs", "1", "--setup", "seed", "--results", str(blocker)]
    )

    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: Not a directory")
    assert str(blocker) in lines[0]
    assert blocker.read_text() == "not a folder"
