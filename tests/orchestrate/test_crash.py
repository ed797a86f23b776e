"""Crash safety: an orchestrator killed with SIGKILL at random moments, and two orchestrators on one folder."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import psutil
import pytest

from repro_lits.record import read_record

pytestmark = pytest.mark.slow

EXPECTED = [f"deterministic-{index:03d}" for index in range(2)]


def cli_command(results: Path, *options: str) -> list[str]:
    """Return the command line of ``repro-lits run`` on the one-epoch smoke experiment."""
    return [
        sys.executable, "-c", "from repro_lits.cli import app; app()", "run", "--experiment", "smoke",
        "--set", "training.epochs=1", "--results", str(results), *options,
    ]


def run_cli(results: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(results, *options), capture_output=True, text=True, timeout=300)


def assert_published_runs_valid(experiment_dir):
    """Check that every folder in runs/ contains a complete, readable record."""
    runs_dir = experiment_dir / "runs"
    for run_dir in runs_dir.iterdir() if runs_dir.is_dir() else []:
        assert read_record(run_dir)["run_id"] == run_dir.name


def processes_using(path) -> list[str]:
    """Return the command lines of live processes that name ``path`` (worker processes of that folder)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if str(path) in cmdline and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(cmdline)
    return found


def test_sigkill_then_rerun_gives_each_run_once(tmp_path):
    results = tmp_path / "results"
    command = cli_command(results, "--setup", "deterministic", "--runs", "2", "--jobs", "2")
    # Seeded moments between start-up (imports, data preparation) and the first runs' records.
    moments = [random.Random(20261204 + attempt).uniform(1.0, 10.0) for attempt in range(3)]

    killed_in_flight = 0
    for attempt, moment in enumerate(moments):
        log_path = tmp_path / f"attempt-{attempt}.log"
        with open(log_path, "w") as log:
            orchestrator = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
            time.sleep(moment)
            orchestrator.kill()
            orchestrator.wait()
        time.sleep(0.5)  # the kernel delivers the workers' parent-death signal
        assert processes_using(results) == [], f"workers outlived the orchestrator killed after {moment:.1f} s"
        assert_published_runs_valid(results / "smoke")
        log_text = log_path.read_text()
        started = set(re.findall(r"(deterministic-\d{3}) started \(pid", log_text))
        published = set(re.findall(r"(deterministic-\d{3}) finished \(weights", log_text))
        killed_in_flight += bool(started - published)
    assert killed_in_flight >= 1, "no kill hit a run in flight; the kill moments no longer test that case"

    final = run_cli(results, "--setup", "deterministic", "--runs", "2", "--jobs", "2")
    assert final.returncode == 0, final.stderr

    experiment_dir = results / "smoke"
    assert sorted(path.name for path in (experiment_dir / "runs").iterdir()) == EXPECTED
    for run_id in EXPECTED:
        assert read_record(experiment_dir / "runs" / run_id)["status"] == "finished"
    assert list((experiment_dir / ".staging").iterdir()) == []
    assert [path.name for path in (experiment_dir / ".claims").iterdir()] == [".lock"]
    assert pd.read_parquet(experiment_dir / "runs.parquet")["run_id"].tolist() == EXPECTED
    counted = duckdb.sql(
        f"SELECT count(*), count(DISTINCT run_id) FROM read_parquet('{experiment_dir / 'runs.parquet'}')"
    ).fetchall()
    assert counted == [(2, 2)]


def test_two_orchestrators_train_each_run_once(tmp_path):
    results = tmp_path / "results"
    command = cli_command(results, "--setup", "deterministic", "--runs", "2", "--jobs", "1")
    orchestrators = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)
    ]
    outputs = [orchestrator.communicate(timeout=300)[0] for orchestrator in orchestrators]

    for orchestrator, output in zip(orchestrators, outputs):
        assert orchestrator.returncode == 0, output
    started = [re.findall(r"(deterministic-\d{3}) started", output) for output in outputs]
    assert sorted(started[0] + started[1]) == EXPECTED
    runs = pd.read_parquet(results / "smoke" / "runs.parquet")
    assert runs["run_id"].tolist() == EXPECTED


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_stops_runs_and_cleans_up(tmp_path, sig):
    results = tmp_path / "results"
    command = cli_command(results, "--setup", "deterministic", "--runs", "2", "--jobs", "2")
    orchestrator = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in orchestrator.stderr:
        if "started (pid" in line:
            break
    orchestrator.send_signal(sig)
    rest = orchestrator.communicate(timeout=60)[1]

    assert orchestrator.returncode == 130, rest
    assert "interrupted" in rest
    experiment_dir = results / "smoke"
    assert processes_using(results) == []
    assert list((experiment_dir / ".staging").iterdir()) == []
    assert [path.name for path in (experiment_dir / ".claims").iterdir()] == [".lock"]
    assert list((experiment_dir / "runs").iterdir()) == []
