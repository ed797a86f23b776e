"""Load one case (image and label NIfTI) and check it: every problem becomes a one-line message.

Checks, in order:

- both files are present and readable;
- shapes are 3-D, after dropping a trailing axis of length 1;
- image and label share one voxel grid. Rounding noise in the affine is
  accepted, and so is a label stored with flipped or permuted axes, which is
  then aligned to the image;
- image voxels are finite;
- label values are 0, 1 or 2, and near-integer floats are rounded;
- the label contains a liver.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from repro_lits.data.layouts import CaseFiles
from repro_lits.data.nifti import open_nifti, read_array, voxel_spacing, volume_shape
from repro_lits.errors import DataError

logger = logging.getLogger(__name__)

#: Largest distance of a label value from an integer that is still taken as that integer (float scaling noise).
LABEL_ROUNDING_TOLERANCE = 1e-3

#: Slices per slab when a volume is scanned in parts to bound temporary memory.
SLAB_SLICES = 16

#: Largest mismatch, in voxels, between the image and label grids that is still taken as rounding noise.
GRID_TOLERANCE_VOXELS = 1e-3

LABEL_EXPECTED = "integers 0 (background), 1 (liver), 2 (tumor)"


class CaseError(DataError):
    """A case with one or more problems; ``problems`` lists them, one line each."""

    def __init__(self, case_id: str, problems: list[str]):
        self.case_id = case_id
        self.problems = list(problems)
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        super().__init__(f"{problems[0]}{more}")


@dataclass
class CaseVolume:
    """A checked case.

    Attributes:
        image: (X, Y, Z) int16 or float32 HU, in the image file's array index order.
        label: (X, Y, Z) uint8, 0 background, 1 liver, 2 tumor, on the image's grid.
        affine: (4, 4) float64, voxel index to mm, of the image.
        warnings: one line each, for issues that do not stop preprocessing.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    warnings: list[str] = field(default_factory=list)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return voxel_spacing(self.affine)


def _format_values(values: np.ndarray, limit: int = 6) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:limit])
    return shown + (f", ... ({len(values)} distinct)" if len(values) > limit else "")


def grid_transform(image_affine: np.ndarray, label_affine: np.ndarray, label_shape, image_shape):
    """Find how label voxels map onto image voxels.

    Returns ``(axes, flips, error_mm)``: the label is aligned to the image by
    ``np.flip(label.transpose(axes), flips)``. ``axes`` is ``None`` when the
    grids differ by more than rounding noise. ``error_mm`` is then the largest
    distance (mm) between corresponding voxel centres, for the message.
    """
    mapping = np.linalg.solve(image_affine, label_affine)  # label voxel -> image voxel
    rotation = mapping[:3, :3]
    rounded = np.rint(rotation)
    is_signed_permutation = (
        np.allclose(rotation, rounded, atol=GRID_TOLERANCE_VOXELS)
        and (np.abs(rounded).sum(axis=0) == 1).all()
        and (np.abs(rounded).sum(axis=1) == 1).all()
    )
    corners = np.array([[0, 0, 0], [n - 1 for n in label_shape]], dtype=float)
    label_corners_mm = corners @ label_affine[:3, :3].T + label_affine[:3, 3]
    if not is_signed_permutation:
        image_corners_mm = corners @ image_affine[:3, :3].T + image_affine[:3, 3]
        return None, None, float(np.abs(label_corners_mm - image_corners_mm).max())

    axes = tuple(int(np.flatnonzero(rounded[i])[0]) for i in range(3))  # image axis i <- label axis axes[i]
    flips = tuple(i for i in range(3) if rounded[i, axes[i]] < 0)
    expected = np.array([0.0 if rounded[i, axes[i]] > 0 else image_shape[i] - 1 for i in range(3)])
    permuted_shape = tuple(label_shape[a] for a in axes)
    offset_error = np.abs(mapping[:3, 3] - expected).max()
    if offset_error > GRID_TOLERANCE_VOXELS or permuted_shape != tuple(image_shape):
        spacing = np.array(voxel_spacing(image_affine))
        return None, None, float((np.abs(mapping[:3, 3] - expected) * spacing).max())
    return axes, flips, 0.0


def check_label_values(values: np.ndarray, path: Path, problems: list[str]) -> np.ndarray | None:
    """Return the label as uint8 0..2, or None after adding a problem."""
    if values.dtype.kind in "iu":
        low, high = int(values.min()), int(values.max())
        if low >= 0 and high <= 2:
            return values.astype(np.uint8, copy=False)
        found = np.unique(values)
        bad = found[(found < 0) | (found > 2)]
        problems.append(f"{path}: label values {_format_values(bad)} out of range; expected {LABEL_EXPECTED}")
        return None

    # Float labels are checked and rounded in slabs, so no float temporary of the whole volume is made.
    label = np.empty(values.shape, dtype=np.uint8)
    bad_values: set[float] = set()
    non_finite = False
    for start in range(0, values.shape[2], SLAB_SLICES):
        slab = np.asarray(values[:, :, start : start + SLAB_SLICES], dtype=np.float32)
        finite = np.isfinite(slab)
        if not finite.all():
            non_finite = True
            slab = np.where(finite, slab, np.float32(0))
        rounded = np.rint(slab)
        bad_mask = (np.abs(slab - rounded) > LABEL_ROUNDING_TOLERANCE) | (rounded < 0) | (rounded > 2)
        if bad_mask.any():
            bad_values.update(np.unique(slab[bad_mask]).tolist()[:100])
        label[:, :, start : start + SLAB_SLICES] = np.clip(rounded, 0, 2)
    if non_finite:
        problems.append(f"{path}: label contains NaN or Inf; expected {LABEL_EXPECTED}")
    if bad_values:
        bad = np.array(sorted(bad_values))
        problems.append(f"{path}: label values {_format_values(bad)} found; expected {LABEL_EXPECTED}")
    if non_finite or bad_values:
        return None
    return label


def _count_non_finite(image: np.ndarray) -> int:
    if image.dtype.kind != "f":
        return 0
    count = 0
    for start in range(0, image.shape[2], SLAB_SLICES):  # slabs, to avoid a volume-sized bool array
        count += int((~np.isfinite(image[:, :, start : start + SLAB_SLICES])).sum())
    return count


def missing_partner_problem(case: CaseFiles) -> str:
    """Describe, in one line, a case that has an image without label or a label without image."""
    if case.label is None:
        return f"{case.image}: image without label; expected a label file for case {case.case_id}"
    return f"{case.label}: label without image; expected an image file for case {case.case_id}"


def load_case(case: CaseFiles) -> CaseVolume:
    """Read and check one case.

    Raises:
        CaseError: listing every problem found in the case.
    """
    problems: list[str] = []
    warnings: list[str] = []
    if case.image is None or case.label is None:
        raise CaseError(case.case_id, [missing_partner_problem(case)])

    headers = {}
    for role, path in (("image", case.image), ("label", case.label)):
        try:
            nifti = open_nifti(path)
            headers[role] = (nifti, volume_shape(nifti, path))
        except DataError as err:
            problems.append(str(err))
    if problems:
        raise CaseError(case.case_id, problems)

    (image_nifti, image_shape), (label_nifti, label_shape) = headers["image"], headers["label"]
    image_affine = np.asarray(image_nifti.affine, dtype=np.float64)
    label_affine = np.asarray(label_nifti.affine, dtype=np.float64)
    for path, affine in ((case.image, image_affine), (case.label, label_affine)):
        if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            problems.append(
                f"{path}: affine is not finite or not invertible (voxel spacing {voxel_spacing(affine)} mm); "
                "expected the scanner's voxel-to-mm transform; fix the header's sform or qform"
            )
    if problems:
        raise CaseError(case.case_id, problems)
    if np.allclose(image_affine, np.eye(4)):
        warnings.append(
            f"{case.image}: identity affine, so every voxel reads as 1 mm; "
            "expected the scanner's spacing; spacing mode would resample this case wrongly"
        )

    axes: tuple | None = (0, 1, 2)
    flips: tuple = ()
    same_affine = np.allclose(image_affine, label_affine, atol=1e-6)
    if sorted(label_shape) != sorted(image_shape) or (same_affine and label_shape != image_shape):
        problems.append(
            f"{case.label}: shape {label_shape} does not match the image shape {image_shape}; "
            "expected the same voxel grid"
        )
        axes = None
    elif not same_affine:
        axes, flips, error_mm = grid_transform(image_affine, label_affine, label_shape, image_shape)
        if axes is None:
            problems.append(
                f"{case.label}: affine places the label up to {error_mm:.3g} mm away from the image; "
                "expected the image's voxel grid (up to rounding noise or an axis flip)"
            )
        elif axes != (0, 1, 2) or flips:
            logger.info("%s: label axes %s flipped %s to match the image grid", case.label, axes, flips)

    image = None
    label = None
    try:
        image = read_array(image_nifti, case.image)
    except DataError as err:
        problems.append(str(err))
    try:
        label_values = read_array(label_nifti, case.label)
    except DataError as err:
        problems.append(str(err))
        label_values = None

    if image is not None:
        non_finite = _count_non_finite(image)
        if non_finite:
            problems.append(f"{case.image}: {non_finite} NaN or Inf voxels; expected finite HU values")
    if label_values is not None:
        label = check_label_values(label_values, case.label, problems)
    if label is not None and axes is not None:
        if axes != (0, 1, 2) or flips:
            label = np.ascontiguousarray(np.flip(label.transpose(axes), flips) if flips else label.transpose(axes))
        if label.max() < 1:
            problems.append(f"{case.label}: no liver voxel (no label >= 1); expected a liver to centre the crop on")

    if problems:
        raise CaseError(case.case_id, problems)
    return CaseVolume(case.case_id, image, label, image_affine, warnings)  # type: ignore[arg-type]
