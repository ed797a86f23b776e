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


def kill_during_run(command: list[str], rng: random.Random, *, wait_for_start: bool) -> str:
    """Start an orchestrator and SIGKILL it; return its log.

    With ``wait_for_start`` the kill comes 0 to 2 s after the first run started,
    else 0.3 to 1.5 s after launch (during imports and data preparation).
    """
    orchestrator = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    if wait_for_start:
        for line in orchestrator.stderr:
            lines.append(line)
            if "started (pid" in line:
                break
        time.sleep(rng.uniform(0.0, 2.0))
    else:
        time.sleep(rng.uniform(0.3, 1.5))
    orchestrator.kill()
    lines.append(orchestrator.communicate()[1])
    return "".join(lines)


def test_sigkill_then_rerun_gives_each_run_once(tmp_path):
    results = tmp_path / "results"
    command = cli_command(results, "--setup", "deterministic", "--runs", "2", "--jobs", "2")
    rng = random.Random(20261204)

    killed_in_flight = 0
    for wait_for_start in (False, True, True):
        log_text = kill_during_run(command, rng, wait_for_start=wait_for_start)
        time.sleep(0.5)  # the kernel delivers the workers' parent-death signal
        assert processes_using(results) == [], "workers outlived the orchestrator killed with SIGKILL"
        assert_published_runs_valid(results / "smoke")
        started = set(re.findall(r"(deterministic-\d{3}) started \(pid", log_text))
        published = set(re.findall(r"(deterministic-\d{3}) finished \(weights", log_text))
        killed_in_flight += bool(started - published)
    assert killed_in_flight >= 1, "no kill hit a run in flight"

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
