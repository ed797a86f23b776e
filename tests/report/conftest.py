"""Builders of small, real results folders: run records with safetensors weights and npz predictions."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

CASES = ("17", "64")
SHAPE = (4, 4, 4)


def write_run(
    experiment_dir: Path,
    *,
    setup: str,
    run_index: int,
    iou: dict[str, float | None],
    predictions: dict[str, np.ndarray],
    weights: dict[str, np.ndarray],
    volume_iou: dict[str, dict[str, float | None]] | None = None,
    status: str = "finished",
) -> Path:
    """Write one run folder (record.json, weights.safetensors, predictions.npz) in the run-record format."""
    run_id = f"{setup}-{run_index:03d}"
    run_dir = experiment_dir / "runs" / run_id
    run_dir.mkdir(parents=True)
    save_file(weights, str(run_dir / "weights.safetensors"))
    np.savez_compressed(run_dir / "predictions.npz", **predictions)

    weights_sha = hashlib.sha256((run_dir / "weights.safetensors").read_bytes()).hexdigest()
    digest = hashlib.sha256()
    for case in sorted(predictions):
        digest.update(case.encode())
        digest.update(np.ascontiguousarray(predictions[case]).tobytes())
    volumes = [
        {
            "case": case,
            "iou": (volume_iou or {}).get(case, {"background": None, "liver": None, "tumor": None}),
            "true_voxels": {"background": 1, "liver": 1, "tumor": 0},
            "predicted_voxels": {"background": 1, "liver": 1, "tumor": 0},
        }
        for case in sorted(predictions)
    ]
    record = {
        "schema_version": 1,
        "run_id": run_id,
        "experiment": experiment_dir.name,
        "config_hash": "c" * 64,
        "config": {"experiment": {"name": experiment_dir.name}, "training": {"epochs": 2}},
        "setup": setup,
        "run_index": run_index,
        "seeds": {"mode": "set", "run_seed": 42},
        "switches": {},
        "threads": {"intra_op": 1, "inter_op": 1},
        "dataset_fingerprint": "d" * 64,
        "environment": {"torch": {"version": "2.5.1"}, "python": {"version": "3.11"}},
        "device": "cpu",
        "status": status,
        "error": None if status == "finished" else "training diverged",
        "epochs": [{"epoch": 1}, {"epoch": 2}],
        "test": {
            "iou": iou,
            "pooled_iou": iou,
            "dice": iou,
            "volumes": volumes,
            "empty_class_rule": "a class absent from both prediction and ground truth of a volume is skipped",
        },
        "weights_sha256": weights_sha,
        "predictions_sha256": digest.hexdigest(),
        "files": {"weights": "weights.safetensors", "predictions": "predictions.npz"},
        "wall_time_s": 1.0,
        "peak_memory_mb": 10.0,
    }
    (run_dir / "record.json").write_text(json.dumps(record), encoding="utf-8")
    return run_dir


def base_predictions() -> dict[str, np.ndarray]:
    """Two (4, 4, 4) uint8 label maps: a liver block with a tumor voxel in each."""
    maps = {}
    for case in CASES:
        labels = np.zeros(SHAPE, dtype=np.uint8)
        labels[1:3, 1:3, 1:3] = 1
        labels[1, 1, 1] = 2
        maps[case] = labels
    return maps


def base_weights() -> dict[str, np.ndarray]:
    """A float32 weight tensor, a float32 bias and an int64 counter that the distance must ignore."""
    return {
        "conv.weight": np.array([[3.0, 0.0, 0.0], [0.0, 4.0, 0.0]], dtype=np.float32),
        "conv.bias": np.zeros(2, dtype=np.float32),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
    }


def iou(background: float, liver: float, tumor: float | None) -> dict[str, float | None]:
    present = [v for v in (background, liver, tumor) if v is not None]
    return {"background": background, "liver": liver, "tumor": tumor, "mean": sum(present) / len(present)}


def make_study_results(root: Path) -> Path:
    """Write ``root/results/tiny``: random 3 differing runs, seed 2 runs, deterministic 3 identical runs.

    random-001 flips one voxel of case 17 from liver to background and scales its weights by 1.5.
    random-002 flips two liver voxels of case 64 to background. seed-001 flips one background voxel
    of case 17 to liver. All other runs have the base predictions and weights.
    Returns ``root/results``.
    """
    experiment = root / "results" / "tiny"
    liver_values = {"random": [0.80, 0.82, 0.86], "seed": [0.81, 0.83], "deterministic": [0.82, 0.82, 0.82]}
    for setup, values in liver_values.items():
        for run_index, liver in enumerate(values):
            predictions = base_predictions()
            weights = base_weights()
            if setup == "random" and run_index == 1:
                predictions["17"][2, 2, 2] = 0
                weights["conv.weight"] = weights["conv.weight"] * np.float32(1.5)
            if setup == "random" and run_index == 2:
                predictions["64"][2, 2, 2] = 0
                predictions["64"][1, 2, 2] = 0
            if setup == "seed" and run_index == 1:
                predictions["17"][0, 0, 0] = 1
            tumor = {"random": 0.4 + 0.05 * run_index, "seed": 0.45, "deterministic": 0.5}[setup]
            write_run(
                experiment, setup=setup, run_index=run_index, iou=iou(0.97, liver, tumor),
                predictions=predictions, weights=weights,
                volume_iou={
                    "17": {"background": 0.97, "liver": liver, "tumor": tumor},
                    "64": {"background": 0.97, "liver": liver - 0.1 * run_index, "tumor": None},
                },
            )
    return root / "results"


@pytest.fixture()
def study_results(tmp_path: Path) -> Path:
    """A fresh results folder from :func:`make_study_results`, for tests that change it."""
    return make_study_results(tmp_path)


@pytest.fixture(scope="module")
def shared_study_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One results folder from :func:`make_study_results` per test module, for tests that only read it."""
    return make_study_results(tmp_path_factory.mktemp("shared"))


class RunBuilder:
    """The builders above, handed to tests as a fixture (the tests run with --import-mode=importlib)."""

    write_run = staticmethod(write_run)
    base_predictions = staticmethod(base_predictions)
    base_weights = staticmethod(base_weights)
    iou = staticmethod(iou)


@pytest.fixture()
def builder() -> type[RunBuilder]:
    return RunBuilder
