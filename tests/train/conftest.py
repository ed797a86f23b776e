"""Fixtures for the training tests: the smoke preset's prepared data and runs in fresh worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from repro_lits.config import load_experiment
from repro_lits.data.cache import ensure_dataset
from repro_lits.record import read_record

# Variables the setups set; removed so that a worker starts as it would from a clean shell.
SETUP_VARIABLES = ("PYTHONHASHSEED", "CUBLAS_WORKSPACE_CONFIG")


@pytest.fixture(scope="session")
def smoke_config():
    return load_experiment("smoke")


@pytest.fixture(scope="session")
def smoke_dataset(smoke_config, tmp_path_factory):
    return ensure_dataset(smoke_config, cache_root=tmp_path_factory.mktemp("smoke-cache"))


class WorkerRunner:
    """Start runs of the smoke preset through ``python -m repro_lits.worker``, several at once."""

    def __init__(self, config, dataset, root: Path) -> None:
        self.config = config
        self.dataset = dataset
        self.root = root
        self.count = 0

    def spec(self, setup: str, run_index: int = 0, **extra) -> dict:
        self.count += 1
        run_dir = self.root / f"{self.count:02d}-{setup}-{run_index:03d}"
        spec = {
            "config": self.config.to_dict(),
            "setup": setup,
            "run_index": run_index,
            "cache_dir": str(self.dataset.root),
            "run_dir": str(run_dir),
        }
        spec.update(extra)
        return spec

    def run(self, specs: list[dict]) -> list[tuple[int, list[dict], dict | None]]:
        """Run the specs in parallel worker processes; return (exit status, events, record) per spec."""
        environment = {k: v for k, v in os.environ.items() if k not in SETUP_VARIABLES}
        processes = []
        for spec in specs:
            run_dir = Path(spec["run_dir"])
            run_dir.mkdir(parents=True, exist_ok=True)
            spec_path = run_dir.parent / f"{run_dir.name}.json"
            spec_path.write_text(json.dumps(spec), encoding="utf-8")
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "repro_lits.worker", str(spec_path)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
            ))
        results = []
        for spec, process in zip(specs, processes):
            stdout, stderr = process.communicate(timeout=300)
            events = [json.loads(line) for line in stdout.splitlines() if line.strip()]
            record_path = Path(spec["run_dir"]) / "record.json"
            record = read_record(record_path) if record_path.exists() else None
            if process.returncode not in (0, 1):
                raise AssertionError(f"worker exited with {process.returncode}: {stderr}")
            results.append((process.returncode, events, record))
        return results


@pytest.fixture
def worker(smoke_config, smoke_dataset, tmp_path):
    return WorkerRunner(smoke_config, smoke_dataset, tmp_path)
