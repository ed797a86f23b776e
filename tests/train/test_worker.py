"""Tests of the worker's command line and of run spec validation (no training)."""

import json
import subprocess
import sys

import pytest

from repro_lits.config import load_experiment
from repro_lits.errors import ConfigError
from repro_lits.train import parse_spec


def _spec(tmp_path, **changes) -> dict:
    spec = {
        "config": load_experiment("smoke").to_dict(),
        "setup": "seed",
        "run_index": 1,
        "cache_dir": str(tmp_path / "cache"),
        "run_dir": str(tmp_path / "run"),
    }
    spec.update(changes)
    return spec


def test_spec_resolves_threads_and_run_id(tmp_path):
    run = parse_spec(_spec(tmp_path, threads=3))
    assert run.run_id == "seed-001"
    assert (run.intra_op_threads, run.inter_op_threads) == (3, 1)
    run = parse_spec(_spec(tmp_path, threads={"intra_op": 2, "inter_op": 2}))
    assert (run.intra_op_threads, run.inter_op_threads) == (2, 2)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"setup": "fast"}, "setup = 'fast'", id="unknown-setup"),
        pytest.param({"run_index": -1}, "run_index = -1", id="negative-index"),
        pytest.param({"threads": 0}, "threads.intra_op = 0", id="zero-threads"),
        pytest.param({"replay_epochs": 0}, "replay_epochs = 0", id="zero-replay-epochs"),
        pytest.param({"seeds": [1, 2]}, "seeds", id="seeds-not-object"),
    ],
)
def test_invalid_spec_rejected(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        parse_spec(_spec(tmp_path, **changes))


def test_missing_keys_rejected(tmp_path):
    spec = _spec(tmp_path)
    del spec["run_dir"]
    with pytest.raises(ConfigError, match="run_dir"):
        parse_spec(spec)


def test_worker_rejects_unreadable_spec(tmp_path):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text("{broken", encoding="utf-8")
    completed = subprocess.run([sys.executable, "-m", "repro_lits.worker", str(spec_path)],
                               capture_output=True, text=True, timeout=60)
    assert completed.returncode == 2
    assert completed.stderr.startswith("error: cannot read run spec")
    assert completed.stdout == ""


def test_worker_rejects_invalid_spec(tmp_path):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(_spec(tmp_path, setup="fast")), encoding="utf-8")
    completed = subprocess.run([sys.executable, "-m", "repro_lits.worker", str(spec_path)],
                               capture_output=True, text=True, timeout=60)
    assert completed.returncode == 2
    assert "unknown setup 'fast'" in completed.stderr
    assert not (tmp_path / "run").exists()
