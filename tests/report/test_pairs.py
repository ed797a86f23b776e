"""Pairwise churn and weight distance, read from real npz and safetensors run folders."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

from repro_lits.errors import DataError
from repro_lits.pairs import compare_pairs, load_weight_vector, pairs_table
from repro_lits.report_inputs import load_experiment_results


def test_pairs_hand_computed(study_results):
    runs = load_experiment_results(study_results, "tiny").runs
    pairs = {(p.run_a, p.run_b): p for p in compare_pairs(runs)}
    assert len(pairs) == 3 + 1 + 3

    # random-001 flips one liver voxel of case 17: 1 of 128 voxels, 1 of the 16 liver-union voxels.
    first = pairs[("random-000", "random-001")]
    assert first.voxels == 128
    assert first.differing_voxels == 1
    assert first.churn == pytest.approx(1 / 128)
    assert first.liver_union_voxels == 16
    assert first.liver_churn == pytest.approx(1 / 16)
    # Weights [3, 4] (norm 5) against 1.5 times that: ||a - b|| = 2.5, mean norm 6.25.
    assert first.weight_distance == pytest.approx(2.5 / 6.25)
    assert not first.same_weights_hash

    second = pairs[("random-000", "random-002")]
    assert second.churn == pytest.approx(2 / 128)
    assert second.liver_churn == pytest.approx(2 / 16)
    assert second.weight_distance == 0.0
    assert second.same_weights_hash

    assert pairs[("random-001", "random-002")].differing_voxels == 3

    # seed-001 adds one liver voxel outside the block: the liver union grows to 17.
    seed = pairs[("seed-000", "seed-001")]
    assert seed.differing_voxels == 1
    assert seed.liver_union_voxels == 17
    assert seed.liver_churn == pytest.approx(1 / 17)

    for key in (("deterministic-000", "deterministic-001"), ("deterministic-001", "deterministic-002")):
        assert pairs[key].churn == 0.0
        assert pairs[key].weight_distance == 0.0
        assert pairs[key].same_predictions_hash


def test_pairs_missing_files_noted(study_results):
    runs = load_experiment_results(study_results, "tiny").runs
    (study_results / "tiny" / "runs" / "seed-001" / "predictions.npz").unlink()
    (study_results / "tiny" / "runs" / "seed-001" / "weights.safetensors").unlink()
    pair = next(p for p in compare_pairs(runs) if p.setup == "seed")
    assert pair.churn is None
    assert pair.weight_distance is None
    assert "predictions.npz missing in seed-001" in pair.note
    assert "weights.safetensors missing in seed-001" in pair.note


def test_pairs_case_mismatch_rejected(study_results):
    runs = load_experiment_results(study_results, "tiny").runs
    path = study_results / "tiny" / "runs" / "seed-001" / "predictions.npz"
    np.savez_compressed(path, other=np.zeros((4, 4, 4), dtype=np.uint8))
    with pytest.raises(DataError, match="test cases"):
        compare_pairs(runs)


def test_weight_vector_skips_integer_tensors(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"b": np.array([1.0, 2.0], dtype=np.float32), "a": np.array([3.0], dtype=np.float32),
               "count": np.array([5], dtype=np.int64)}, str(path))
    vector = load_weight_vector(path)
    assert vector.dtype == np.float64
    assert vector.tolist() == [3.0, 1.0, 2.0]


def test_weight_vector_invalid_file(tmp_path):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="cannot read the weights"):
        load_weight_vector(path)


def test_pairs_table_columns(study_results):
    runs = load_experiment_results(study_results, "tiny").runs
    table = pairs_table(compare_pairs(runs))
    assert len(table) == 7
    assert {"setup", "run_a", "run_b", "churn", "liver_churn", "weight_distance"} <= set(table.columns)
