"""Tests of the study's IoU, pooled IoU and Dice on small label arrays."""

import numpy as np
import pytest
import torch

from repro_lits.metrics import StudyIoU, class_counts, dice_per_class, iou_per_class, summarize_test


def test_counts_of_small_volume():
    prediction = np.array([0, 1, 1, 2, 0, 1])
    target = np.array([0, 1, 2, 2, 1, 1])
    counts = class_counts(prediction, target)
    assert counts.intersection.tolist() == [1, 2, 1]
    assert counts.true_voxels.tolist() == [1, 3, 2]
    assert counts.predicted_voxels.tolist() == [2, 3, 1]
    assert counts.union.tolist() == [2, 4, 2]


def test_iou_and_dice_per_class():
    counts = class_counts(np.array([0, 1, 1, 2, 0, 1]), np.array([0, 1, 2, 2, 1, 1]))
    assert iou_per_class(counts) == [0.5, 0.5, 0.5]
    # Dice = 2 I / (|P| + |G|): background 2/3, liver 4/6, tumor 2/3.
    assert dice_per_class(counts) == pytest.approx([2 / 3, 2 / 3, 2 / 3])


def test_empty_union_is_skipped():
    counts = class_counts(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))
    assert iou_per_class(counts) == [1.0, None, None]
    assert dice_per_class(counts) == [1.0, None, None]


def test_study_iou_averages_non_skipped_batches():
    metric = StudyIoU()
    # Volume 1: tumor present and half found; volume 2: no tumor anywhere (skipped for tumor).
    metric.update(torch.tensor([[0, 1, 2, 0]]), torch.tensor([[0, 1, 2, 2]]))
    metric.update(torch.tensor([[0, 0, 1, 1]]), torch.tensor([[0, 1, 1, 1]]))
    result = metric.compute()
    assert result["background"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert result["liver"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert result["tumor"] == pytest.approx(1 / 2)
    assert result["mean"] == pytest.approx((0.5 + 5 / 6 + 0.5) / 3)


def test_study_iou_class_never_present_is_none():
    metric = StudyIoU()
    metric.update(np.zeros((1, 3)), np.zeros((1, 3)))
    result = metric.compute()
    assert result["tumor"] is None
    assert result["mean"] == 1.0


def test_summary_of_two_volumes():
    volumes = {
        "b": class_counts(np.array([0, 1, 1, 1]), np.array([0, 1, 1, 0])),
        "a": class_counts(np.array([0, 2, 2, 1]), np.array([0, 2, 1, 1])),
    }
    summary = summarize_test(volumes)
    assert [v["case"] for v in summary["volumes"]] == ["a", "b"]
    assert summary["volumes"][0]["iou"] == {"background": 1.0, "liver": 0.5, "tumor": 0.5}
    assert summary["volumes"][1]["iou"]["tumor"] is None
    assert summary["volumes"][1]["true_voxels"] == {"background": 2, "liver": 2, "tumor": 0}
    assert summary["volumes"][1]["predicted_voxels"] == {"background": 1, "liver": 3, "tumor": 0}
    # Study IoU: tumor only from volume a; liver is the mean of 0.5 and 2/3.
    assert summary["iou"]["tumor"] == 0.5
    assert summary["iou"]["liver"] == pytest.approx((0.5 + 2 / 3) / 2)
    # Pooled liver: intersections 1 + 2, unions 2 + 3, predicted 1 + 3 and true 2 + 2 voxels.
    assert summary["pooled_iou"]["liver"] == pytest.approx(3 / 5)
    assert summary["dice"]["liver"] == pytest.approx(2 * 3 / (4 + 4))
    assert "skipped" in summary["empty_class_rule"]


def test_mismatched_shapes_rejected():
    with pytest.raises(ValueError, match="equal shapes"):
        class_counts(np.zeros(4), np.zeros(5))


def test_labels_out_of_range_rejected():
    with pytest.raises(ValueError, match="outside"):
        class_counts(np.array([0, 3]), np.array([0, 1]))
