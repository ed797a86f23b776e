"""Segmentation metrics: the study's IoU, pooled IoU and Dice per class.

Predictions and targets are integer label arrays of equal shape, any number
of axes (for one batch (N, X, Y, Z), for one volume (X, Y, Z)), with values
0 background, 1 liver, 2 tumor. A prediction is the argmax over the class
axis of the network's output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from repro_lits.record import CLASS_NAMES

#: Rule of the study's IoU for a class absent from a volume, stored in every run record.
EMPTY_CLASS_RULE = (
    "A class whose union of predicted and true voxels is empty in a test volume is skipped for that volume, "
    "and the class IoU is the mean over the volumes where it was not skipped (null when skipped in all)."
)


@dataclass(frozen=True)
class ClassCounts:
    """Voxel counts per class, each an (C,) int64 array in class order (background, liver, tumor)."""

    intersection: np.ndarray
    union: np.ndarray
    true_voxels: np.ndarray
    predicted_voxels: np.ndarray

    def __add__(self, other: ClassCounts) -> ClassCounts:
        return ClassCounts(
            self.intersection + other.intersection,
            self.union + other.union,
            self.true_voxels + other.true_voxels,
            self.predicted_voxels + other.predicted_voxels,
        )


def _as_numpy(labels: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        return labels.detach().cpu().numpy()
    return np.asarray(labels)


def class_counts(prediction: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor,
                 num_classes: int = len(CLASS_NAMES)) -> ClassCounts:
    """Count intersection, union, true and predicted voxels per class.

    Args:
        prediction: integer labels, any shape, values in [0, num_classes).
        target: integer labels, same shape as ``prediction``.
    """
    predicted = _as_numpy(prediction).astype(np.int64, copy=False).ravel()
    true = _as_numpy(target).astype(np.int64, copy=False).ravel()
    if predicted.shape != true.shape:
        raise ValueError(
            f"prediction has {predicted.size} voxels but target has {true.size}; expected equal shapes"
        )
    for name, labels in (("prediction", predicted), ("target", true)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{name} has labels outside [0, {num_classes}): min {labels.min()}, max {labels.max()}")

    predicted_voxels = np.bincount(predicted, minlength=num_classes)
    true_voxels = np.bincount(true, minlength=num_classes)
    intersection = np.bincount(predicted[predicted == true], minlength=num_classes)
    union = predicted_voxels + true_voxels - intersection
    return ClassCounts(intersection, union, true_voxels, predicted_voxels)


def iou_per_class(counts: ClassCounts) -> list[float | None]:
    """IoU = intersection / union per class; ``None`` for a class whose union is empty."""
    return [
        float(inter) / float(union) if union > 0 else None
        for inter, union in zip(counts.intersection, counts.union)
    ]


def dice_per_class(counts: ClassCounts) -> list[float | None]:
    """Dice = 2 intersection / (true + predicted) per class; ``None`` where both are empty."""
    return [
        2.0 * float(inter) / float(total) if total > 0 else None
        for inter, total in zip(counts.intersection, counts.true_voxels + counts.predicted_voxels)
    ]


def _named(values: list[float | None]) -> dict[str, float | None]:
    """Name the per-class values and add their mean over the classes that have one (key ``mean``)."""
    named: dict[str, float | None] = dict(zip(CLASS_NAMES, values))
    present = [v for v in values if v is not None]
    named["mean"] = sum(present) / len(present) if present else None
    return named


class StudyIoU:
    """The study's IoU: per batch and class, then averaged over the batches where the class was not skipped.

    Each :meth:`update` takes one batch. A class is skipped in a batch where
    the union of its predicted and true voxels is empty. With batch size 1,
    the result is the mean per-volume IoU. The mean over classes uses the
    classes that have a value, which are all three unless one was skipped in
    every batch.
    """

    def __init__(self, num_classes: int = len(CLASS_NAMES)) -> None:
        self.num_classes = num_classes
        self.sums = [0.0] * num_classes
        self.batches = [0] * num_classes

    def update(self, prediction: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> list[float | None]:
        """Add one batch: (N, X, Y, Z) integer predictions and targets; return the batch's IoU per class."""
        batch_iou = iou_per_class(class_counts(prediction, target, self.num_classes))
        for index, value in enumerate(batch_iou):
            if value is not None:
                self.sums[index] += value
                self.batches[index] += 1
        return batch_iou

    def compute(self) -> dict[str, float | None]:
        """Return the IoU per class name (``None`` where skipped in every batch) and ``mean``."""
        return _named([
            total / count if count else None for total, count in zip(self.sums, self.batches)
        ])


def summarize_test(volume_counts: dict[str, ClassCounts]) -> dict:
    """Build the test section of a run record from per-volume counts.

    Args:
        volume_counts: case id -> counts of that volume's prediction against its labels.

    Returns:
        A dict with ``iou`` (the study's IoU, the mean per-volume IoU),
        ``pooled_iou`` and ``dice`` (both over all test voxels pooled), each
        per class name plus ``mean``. It also has ``volumes`` (IoU per class
        and voxel counts of each case, in sorted case order) and
        ``empty_class_rule``.
    """
    study = StudyIoU()
    pooled = ClassCounts(*(np.zeros(len(CLASS_NAMES), dtype=np.int64) for _ in range(4)))
    volumes = []
    for case in sorted(volume_counts):
        counts = volume_counts[case]
        volume_iou = iou_per_class(counts)
        for index, value in enumerate(volume_iou):
            if value is not None:
                study.sums[index] += value
                study.batches[index] += 1
        pooled = pooled + counts
        volumes.append({
            "case": case,
            "iou": dict(zip(CLASS_NAMES, volume_iou)),
            "true_voxels": dict(zip(CLASS_NAMES, (int(n) for n in counts.true_voxels))),
            "predicted_voxels": dict(zip(CLASS_NAMES, (int(n) for n in counts.predicted_voxels))),
        })
    return {
        "iou": study.compute(),
        "pooled_iou": _named(iou_per_class(pooled)),
        "dice": _named(dice_per_class(pooled)),
        "volumes": volumes,
        "empty_class_rule": EMPTY_CLASS_RULE,
    }
