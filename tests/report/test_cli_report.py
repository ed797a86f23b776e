"""``repro-lits report`` through typer's CliRunner."""

from __future__ import annotations

import pandas as pd
import typer
from typer.testing import CliRunner

from repro_lits.cli.report import report

app = typer.Typer()
app.command()(report)
runner = CliRunner()


def test_report_command_writes_outputs(study_results, tmp_path):
    figures = tmp_path / "figs"
    result = runner.invoke(
        app, ["--results", str(study_results), "--figures", str(figures), "--resamples", "300"],
        terminal_width=160,
    )
    assert result.exit_code == 0, result.output
    assert "deterministic" in result.output
    assert "report: " in result.output
    assert (study_results / "tiny" / "report.md").is_file()
    assert (study_results / "tiny" / "report.html").is_file()
    assert (figures / "iou_boxplots.png").is_file()
    assert (figures / "disagreement.svg").is_file()
    summary = pd.read_parquet(study_results / "tiny" / "summary.parquet")
    assert summary["std_ci_low"].notna().any()


def test_report_command_missing_results(tmp_path):
    result = runner.invoke(app, ["--results", str(tmp_path / "nothing"), "--figures", str(tmp_path / "f")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: results folder")
    assert "run `repro-lits run` first" in lines[0]
    assert not (tmp_path / "f").exists()


def test_report_command_empty_results(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / ".gitkeep").touch()
    result = runner.invoke(app, ["--results", str(tmp_path / "results")])
    assert result.exit_code == 2
    assert "contains no run records; run `repro-lits run` first" in result.output


def test_report_command_unknown_experiment(study_results):
    result = runner.invoke(app, ["--results", str(study_results), "--experiment", "paper"])
    assert result.exit_code == 2
    assert "experiment 'paper' not found" in result.output
