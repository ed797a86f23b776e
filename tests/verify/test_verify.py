"""Tests of repro-lits verify: replays of a deterministic smoke run, a changed dataset, tampered records, bad input."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from repro_lits.config import load_experiment
from repro_lits.record import read_record
from repro_lits.verify import (
    EXIT_DIFFERENT,
    EXIT_IDENTICAL,
    ReplayError,
    compare_predictions,
    compare_runs,
    compare_weights,
    run_replay,
    verify_run,
)

from .conftest import RUN_ID, make_app


def invoke(*args: str):
    return CliRunner().invoke(make_app(), ["verify", *args])


@pytest.fixture(scope="module")
def identical_replay(smoke_run, tmp_path_factory):
    """Verify the smoke run by run id through the CLI, keeping the replay; return the result and the replay folder."""
    output = tmp_path_factory.mktemp("replay")
    result = invoke(RUN_ID, "--results", str(smoke_run), "--output", str(output), "--json")
    return result, output / RUN_ID


@pytest.mark.slow
def test_deterministic_run_verifies_identical(identical_replay):
    cli_result, replay_dir = identical_replay

    assert cli_result.exit_code == EXIT_IDENTICAL, cli_result.output
    report = json.loads(cli_result.stdout)
    assert report["verdict"] == "identical"
    assert report["weights_recorded"] == report["weights_replayed"]
    assert report["predictions_recorded"] == report["predictions_replayed"]
    assert report["epochs_compared"] == report["epochs_recorded"] == 2
    assert report["first_differing_tensor"] is None
    assert (replay_dir / "record.json").is_file()


@pytest.mark.slow
def test_tampered_weights_hash_verifies_different(smoke_run, identical_replay, tmp_path):
    _, replay_dir = identical_replay
    tampered_dir = tmp_path / RUN_ID
    shutil.copytree(smoke_run / "smoke" / "runs" / RUN_ID, tampered_dir)
    record_path = tampered_dir / "record.json"
    record = json.loads(record_path.read_text())
    original_hash = record["weights_sha256"]
    record["weights_sha256"] = ("0" if original_hash[0] != "0" else "1") + original_hash[1:]
    record_path.write_text(json.dumps(record))

    result = compare_runs(read_record(record_path), record_path, read_record(replay_dir), replay_dir, epochs=None)

    assert result.verdict == "different"
    assert result.exit_code == EXIT_DIFFERENT
    assert result.weights_replayed == original_hash
    assert result.tensors_compared
    assert result.first_differing_tensor is None
    assert result.relative_l2 == 0.0
    assert any("does not match its own weights file" in note for note in result.notes)


@pytest.mark.slow
def test_thread_change_verifies_different(smoke_run):
    # Measured on the 2-core AVX-512 development machine: 1 and 2 intra-op threads give different weights.
    result = invoke(str(smoke_run / "smoke" / "runs" / RUN_ID), "--results", str(smoke_run), "--threads", "2")

    assert result.exit_code == EXIT_DIFFERENT, result.output
    lines = result.stdout.splitlines()
    assert "verdict: different" in lines
    assert "first epoch whose weight hash differs: 1" in lines
    tensor = re.search(r"^first differing tensor: input_block\.1\.weight \(4x1x3x3x3\), max abs difference (\S+)$",
                       result.stdout, re.MULTILINE)
    assert tensor is not None, result.stdout
    assert float(tensor.group(1)) > 0
    distance = re.search(r"^relative L2 distance of the weights: (\S+)$", result.stdout, re.MULTILINE)
    assert distance is not None, result.stdout
    assert float(distance.group(1)) > 0
    assert any(line.startswith("  recorded (epoch 2)") for line in lines)
    assert any(line.startswith("  replayed (epoch 2)") for line in lines)
    ranked = lines.index("environment differences, most likely cause first (ranking rule: repro_lits.envcheck):")
    assert lines[ranked + 1].startswith("  1. intra-op threads (score 80):")
    assert lines[ranked + 2] == "       threads.intra_op: 1 -> 2"


@pytest.mark.slow
def test_partial_replay_matches_epoch_hash(smoke_run):
    record = read_record(smoke_run / "smoke" / "runs" / RUN_ID)

    result = verify_run(RUN_ID, results_dir=smoke_run, epochs=1)

    assert result.verdict == "identical"
    assert result.epochs_compared == 1
    assert result.weights_recorded == record["epochs"][0]["weights_sha256"]
    assert result.weights_replayed == result.weights_recorded
    assert result.predictions_recorded is None


@pytest.mark.slow
def test_changed_dataset_rejected_before_training(smoke_run, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(smoke_run / ".cache" / "raw" / "synthetic-8-0", raw)
    for prefix in ("volume", "segmentation"):
        shutil.copyfile(raw / f"{prefix}-5.nii.gz", raw / f"{prefix}-3.nii.gz")
    output = tmp_path / "replay"

    result = invoke(RUN_ID, "--results", str(smoke_run), "--data", str(raw), "--output", str(output))

    assert result.exit_code == 2, result.output
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert "changed cases 3;" in error_lines[0]
    assert "Traceback" not in result.output
    assert not output.exists()


@pytest.mark.slow
def test_epochs_beyond_record_rejected(smoke_run):
    result = invoke(RUN_ID, "--results", str(smoke_run), "--epochs", "3")

    assert result.exit_code == 2
    record_path = smoke_run / "smoke" / "runs" / RUN_ID / "record.json"
    assert result.stderr.strip().splitlines() == [
        f"error: --epochs 3: expected 1 to 2, the number of epochs in {record_path}"
    ]


def test_missing_record_exits_2(tmp_path):
    result = invoke(str(tmp_path / "nowhere" / "record.json"))

    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: run record not found:")


def test_invalid_json_exits_2(tmp_path):
    record_path = tmp_path / "record.json"
    record_path.write_text("{not json")

    result = invoke(str(record_path))

    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: invalid run record {record_path}: not valid JSON")


def test_unknown_run_id_exits_2(tmp_path):
    result = invoke("deterministic-042", "--results", str(tmp_path))

    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "run 'deterministic-042' not found" in lines[0]


def test_run_folder_without_record_exits_2(tmp_path):
    result = invoke(str(tmp_path))

    assert result.exit_code == 2
    expected = f"error: run folder {tmp_path} has no record.json; expected the folder of a finished run"
    assert result.stderr.strip() == expected


def test_compare_weights_names_first_tensor(tmp_path: Path):
    generator = torch.Generator().manual_seed(0)
    recorded = {
        "a.weight": torch.randn(3, 4, generator=generator),
        "b.weight": torch.randn(5, generator=generator),
        "c.num_batches_tracked": torch.tensor(7),
    }
    replayed = {name: tensor.clone() for name, tensor in recorded.items()}
    replayed["b.weight"][2] += 0.5
    replayed["a.weight"][0, 0] += 0.25
    save_file(recorded, str(tmp_path / "recorded.safetensors"))
    save_file(replayed, str(tmp_path / "replayed.safetensors"))

    first, relative_l2 = compare_weights(tmp_path / "recorded.safetensors", tmp_path / "replayed.safetensors",
                                         order=["b.weight", "a.weight", "c.num_batches_tracked"])

    assert first is not None
    assert first.name == "b.weight"
    assert first.shape == (5,)
    assert first.max_abs_difference == pytest.approx(0.5, abs=1e-6)
    norm = torch.cat([recorded["a.weight"].flatten(), recorded["b.weight"]]).double().norm().item()
    assert relative_l2 == pytest.approx((0.5**2 + 0.25**2) ** 0.5 / norm, rel=1e-5)


def test_compare_weights_shape_change_has_no_distance(tmp_path: Path):
    save_file({"w": torch.zeros(2, 2)}, str(tmp_path / "recorded.safetensors"))
    save_file({"w": torch.zeros(4)}, str(tmp_path / "replayed.safetensors"))

    first, relative_l2 = compare_weights(tmp_path / "recorded.safetensors", tmp_path / "replayed.safetensors",
                                         order=["w"])

    assert first is not None
    assert first.name == "w"
    assert first.max_abs_difference is None
    assert relative_l2 is None


@pytest.mark.slow
def test_failed_replay_raises_with_error(tmp_path: Path):
    config = load_experiment("smoke")
    empty_dataset = tmp_path / "empty"
    empty_dataset.mkdir()
    spec = {
        "config": config.to_dict(),
        "setup": "deterministic",
        "run_index": 0,
        "cache_dir": str(empty_dataset),
        "run_dir": str(tmp_path / "replay" / RUN_ID),
    }

    with pytest.raises(ReplayError, match=r"the replay process failed \(exit 1\): .*manifest\.json: file not found"):
        run_replay(spec)


def test_compare_predictions_counts_voxels(tmp_path: Path):
    rng = np.random.default_rng(0)
    recorded = {"17": rng.integers(0, 3, size=(4, 4, 4), dtype=np.uint8), "64": np.zeros((2, 2, 2), np.uint8)}
    replayed = {name: labels.copy() for name, labels in recorded.items()}
    replayed["17"][0, 0, :3] = (replayed["17"][0, 0, :3] + 1) % 3
    replayed["27"] = np.zeros((2, 2, 2), np.uint8)
    np.savez_compressed(tmp_path / "recorded.npz", **recorded)
    np.savez_compressed(tmp_path / "replayed.npz", **replayed)

    counts = compare_predictions(tmp_path / "recorded.npz", tmp_path / "replayed.npz")

    assert counts == {"17": 3, "27": None, "64": 0}
