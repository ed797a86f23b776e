"""``repro-lits run`` through typer's CliRunner: exit codes, summary, tables and one-line errors."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from repro_lits.cli import app


def invoke(*args: str):
    return CliRunner().invoke(app, ["run", *args])


@pytest.mark.slow
def test_finished_study_exits_zero(local_study, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(local_study.experiment_dir.parent, results)
    outcome = invoke("--experiment", "smoke", "--set", "training.epochs=1", "--results", str(results),
                     "--setup", "all", "--runs", "1")
    assert outcome.exit_code == 0, outcome.output
    assert outcome.output.count("1/1") == 3
    assert str(results / "smoke" / "runs.parquet") in outcome.output


@pytest.mark.slow
def test_failed_run_exits_one(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("run.device=cuda succeeds on this machine, so it cannot make a run fail")
    outcome = invoke("--experiment", "smoke", "--set", "training.epochs=1", "--set", "run.device=cuda",
                     "--results", str(tmp_path), "--setup", "seed", "--runs", "1")
    assert outcome.exit_code == 1, outcome.output
    assert "0/1" in outcome.output
    assert (tmp_path / "smoke" / "runs" / "seed-000" / "record.json").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(("--setup", "fixed"), "unknown setup 'fixed'", id="setup"),
        pytest.param(("--backend", "dask"), "needs --scheduler", id="dask-without-scheduler"),
        pytest.param(("--backend", "slurm"), "--backend 'slurm'", id="backend"),
        pytest.param(("--set", "training.epochs"), "expected section.key=value", id="override"),
        pytest.param(("--experiment", "absent.toml"), "experiment file not found", id="experiment"),
    ],
)
def test_invalid_option_exits_two(tmp_path, args, message):
    outcome = invoke("--experiment", "smoke", "--results", str(tmp_path), "--runs", "1", *args)
    assert outcome.exit_code == 2, outcome.output
    assert "error: " in outcome.output
    assert message in outcome.output


def test_results_of_other_config_exit_two(tmp_path):
    first = invoke("--experiment", "smoke", "--set", "training.epochs=3", "--results", str(tmp_path),
                   "--backend", "dask")
    assert first.exit_code == 2
    from repro_lits.config import load_experiment
    from repro_lits.orchestrate import layout_for
    from repro_lits.orchestrate.plan import bind_experiment

    config = load_experiment("smoke", ["training.epochs=3"])
    bind_experiment(layout_for(tmp_path, config), config)
    outcome = invoke("--experiment", "smoke", "--set", "training.epochs=5", "--results", str(tmp_path),
                     "--backend", "dask", "--scheduler", "tcp://127.0.0.1:9")
    assert outcome.exit_code == 2, outcome.output
    assert "use another --results folder" in outcome.output
