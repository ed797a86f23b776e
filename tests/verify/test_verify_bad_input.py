"""``repro-lits verify`` on edited records: one-line errors with exit status 2, before any training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from repro_lits.config import load_experiment

from .conftest import make_app


def _finished_record(config: dict) -> dict:
    """A finished record with every key a replay reads, of the right JSON type."""
    return {
        "schema_version": 1, "run_id": "seed-000", "experiment": "smoke", "config_hash": "c" * 64,
        "config": config, "setup": "seed", "run_index": 0,
        "seeds": {"mode": "set", "run_seed": 42}, "switches": {}, "threads": {"intra_op": 1, "inter_op": 1},
        "environment": {}, "device": "cpu", "status": "finished", "error": None,
        "epochs": [{"epoch": 1, "weights_sha256": "a" * 64}], "test": {"iou": {}},
        "weights_sha256": "a" * 64, "predictions_sha256": "b" * 64,
        "files": {"weights": "weights.safetensors", "predictions": "predictions.npz"},
        "dataset_fingerprint": "d" * 64,
    }


def _verify(tmp_path: Path, record: dict):
    run_dir = tmp_path / "seed-000"
    run_dir.mkdir()
    (run_dir / "record.json").write_text(json.dumps(record), encoding="utf-8")
    return CliRunner().invoke(make_app(), ["verify", str(run_dir), "--results", str(tmp_path / "results")])


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("config", "x", 'config is "x"; expected an object'),
        ("config", {"run": 5}, "config.run is 5; expected an object"),
        ("epochs", 5, "epochs is 5; expected an array"),
        ("epochs", [1, 2], "epochs[0] is 1; expected an object"),
        ("threads", "x", 'threads is "x"; expected an object'),
        ("seeds", "x", 'seeds is "x"; expected an object'),
        ("run_index", "x", 'run_index is "x"; expected an integer'),
        ("run_index", -1, "run_index is -1; expected 0 or more"),
        ("weights_sha256", "abc", 'weights_sha256 is "abc"; expected a SHA-256 as 64 lowercase hex digits'),
        ("weights_sha256", 5, "weights_sha256 is 5; expected a SHA-256"),
        ("predictions_sha256", "B" * 64, "predictions_sha256 is"),
    ],
)
def test_edited_record_exit_2(tmp_path, key, value, expected):
    record = _finished_record(load_experiment("smoke").to_dict())
    record[key] = value

    result = _verify(tmp_path, record)

    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: invalid run record")
    assert expected in lines[0]


def test_missing_dataset_exit_2(tmp_path):
    config = load_experiment("smoke").to_dict()
    config["data"]["source"] = str(tmp_path / "gone")

    result = _verify(tmp_path, _finished_record(config))

    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: the run's dataset {tmp_path / 'gone'} does not exist on this machine")
    assert "Traceback" not in result.output


def test_output_below_file_exit_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    config = load_experiment("smoke").to_dict()
    record = _finished_record(config)
    run_dir = tmp_path / "seed-000"
    run_dir.mkdir()
    (run_dir / "record.json").write_text(json.dumps(record), encoding="utf-8")

    result = CliRunner().invoke(make_app(), [
        "verify", str(run_dir), "--results", str(tmp_path / "results"), "--output", str(blocker / "sub"),
    ])

    assert result.exit_code == 2
    assert f"error: --output {blocker / 'sub'}: cannot create the folder because {blocker} is a file" in result.stderr
    assert "Traceback" not in result.output
