"""The study script end to end on the smoke experiment: runs, tables, report, and an idempotent rerun."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def run_study(results: Path, figures: Path) -> subprocess.CompletedProcess:
    environment = dict(
        os.environ,
        EXPERIMENT="smoke",
        RESULTS=str(results),
        FIGURES=str(figures),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return subprocess.run(
        ["bash", str(REPO / "run_all.sh"), "--runs", "2", "--set", "training.epochs=1"],
        env=environment, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.slow
def test_run_all_writes_report_and_resumes(tmp_path: Path):
    results = tmp_path / "results"
    figures = tmp_path / "figures"

    first = run_study(results, figures)
    assert first.returncode == 0, first.stderr[-2000:]
    runs = pd.read_parquet(results / "smoke" / "runs.parquet")
    assert sorted(runs["run_id"]) == sorted(
        f"{setup}-{index:03d}" for setup in ("random", "seed", "deterministic") for index in range(2)
    )
    report = (results / "smoke" / "report.md").read_text()
    deterministic_hashes = runs.loc[runs["setup"] == "deterministic", "weights_sha256"].nunique()
    assert deterministic_hashes == 1
    assert "bitwise reproducible: yes" in report
    assert (figures / "iou_boxplots.png").stat().st_size > 0
    assert (figures / "iou_boxplots.svg").stat().st_size > 0

    records_before = {path: path.stat().st_mtime_ns for path in results.glob("smoke/runs/*/record.json")}
    second = run_study(results, figures)
    assert second.returncode == 0, second.stderr[-2000:]
    records_after = {path: path.stat().st_mtime_ns for path in results.glob("smoke/runs/*/record.json")}
    assert records_after == records_before
