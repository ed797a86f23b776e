"""``repro-lits report`` on damaged results folders: one-line errors, and old tables kept on failure."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import typer
from typer.testing import CliRunner

from repro_lits import results as results_tables
from repro_lits.cli.report import report

app = typer.Typer()
app.command()(report)
runner = CliRunner()


def _report(results: Path, figures: Path):
    return runner.invoke(app, ["--results", str(results), "--figures", str(figures), "--resamples", "50"],
                         terminal_width=160)


def test_figures_below_file_keeps_tables(study_results, tmp_path):
    first = _report(study_results, tmp_path / "figures")
    assert first.exit_code == 0, first.output
    summary = study_results / "tiny" / "summary.parquet"
    before = summary.read_bytes()
    blocker = tmp_path / "file"
    blocker.write_text("x")

    result = _report(study_results, blocker / "figures")

    assert result.exit_code == 2
    assert f"error: --figures {blocker / 'figures'}: cannot create the folder (Not a directory)" in result.output
    assert "Traceback" not in result.output
    assert summary.read_bytes() == before


def test_corrupt_runs_table_read_from_records(study_results, tmp_path):
    results_tables.write_tables(study_results / "tiny")
    (study_results / "tiny" / "runs.parquet").write_bytes(b"PAR1 truncated")

    result = _report(study_results, tmp_path / "figures")

    assert result.exit_code == 0, result.output
    assert (study_results / "tiny" / "report.md").is_file()


def test_runs_table_without_columns_read_from_records(study_results, tmp_path):
    results_tables.write_tables(study_results / "tiny")
    pd.DataFrame({"other": [1]}).to_parquet(study_results / "tiny" / "runs.parquet")

    result = _report(study_results, tmp_path / "figures")

    assert result.exit_code == 0, result.output


def test_copied_results_read_own_run_files(study_results, tmp_path):
    results_tables.write_tables(study_results / "tiny")
    copy = tmp_path / "copy"
    shutil.copytree(study_results, copy)
    (copy / "tiny" / "runs" / "random-000" / "weights.safetensors").unlink()

    result = _report(copy, tmp_path / "figures")

    assert result.exit_code == 0, result.output
    pairs = pd.read_parquet(copy / "tiny" / "pairs.parquet")
    random_pairs = pairs[pairs["run_a"] == "random-000"]
    assert random_pairs["weight_distance"].isna().all()
    assert random_pairs["note"].str.contains("weights.safetensors missing in random-000").all()


def test_mixed_config_hashes_rejected(study_results, tmp_path):
    record_path = study_results / "tiny" / "runs" / "seed-001" / "record.json"
    record = json.loads(record_path.read_text())
    record["config_hash"] = "e" * 64
    record_path.write_text(json.dumps(record))

    result = _report(study_results, tmp_path / "figures")

    assert result.exit_code == 2
    assert "runs of 2 different configs" in result.output
    assert "eeeeeeeeeeee: seed-001" in result.output
    assert "expected one config hash per experiment folder" in result.output


def test_unreadable_predictions_named(study_results, tmp_path):
    (study_results / "tiny" / "runs" / "random-001" / "predictions.npz").write_text("junk")

    result = _report(study_results, tmp_path / "figures")

    assert result.exit_code == 2
    assert "random-001/predictions.npz: cannot read the predictions" in result.output
    assert "Traceback" not in result.output


def test_record_with_wrong_types_left_out(study_results, tmp_path):
    record_path = study_results / "tiny" / "runs" / "seed-001" / "record.json"
    record = json.loads(record_path.read_text())
    record["epochs"] = 5
    record_path.write_text(json.dumps(record))

    result = _report(study_results, tmp_path / "figures")

    assert result.exit_code == 0, result.output
    assert "unreadable run record skipped" in result.output
    assert "seed-001" in result.output


def test_report_path_is_folder(study_results, tmp_path):
    (study_results / "tiny" / "report.md").mkdir()

    result = _report(study_results, tmp_path / "figures")

    assert result.exit_code == 2
    assert "report.md: cannot write the report (Is a directory)" in result.output
    assert "Traceback" not in result.output
