"""Fixtures of the verify tests: a deterministic smoke run, trained once per module in a fresh worker process."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from repro_lits.cli.verify import env, verify
from repro_lits.config import load_experiment
from repro_lits.data.cache import ensure_dataset

RUN_ID = "deterministic-000"


def make_app() -> typer.Typer:
    """Register the two commands as the repro-lits application does."""
    app = typer.Typer()
    app.command("verify")(verify)
    app.command("env")(env)
    return app


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    """Train a deterministic smoke run into ``RESULTS/smoke/runs/deterministic-000`` and return RESULTS."""
    results = tmp_path_factory.mktemp("results")
    config = load_experiment("smoke")
    dataset = ensure_dataset(config, cache_root=results / ".cache")
    run_dir = results / "smoke" / "runs" / RUN_ID
    spec = {
        "config": config.to_dict(),
        "setup": "deterministic",
        "run_index": 0,
        "cache_dir": str(dataset.root.resolve()),
        "run_dir": str(run_dir),
    }
    spec_path = results / "spec.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    subprocess.run([sys.executable, "-m", "repro_lits.worker", str(spec_path)], check=True,
                   stdout=subprocess.DEVNULL, timeout=600)
    return results
