"""Spacing-based preprocessing: reorient to RAS+, resample to isotropic voxels, window HU to [0, 1], crop around the liver.

Output arrays are (X, Y, Z) in canonical RAS+ orientation (axis 0 towards the
patient's left, 1 anterior, 2 superior), with ``spacing_mm`` voxels. The image
is resampled with linear interpolation, the label with nearest neighbour, one
axis at a time in float32. Sample ``k`` of an axis sits at ``k * spacing_mm``
from the centre of the first source voxel, so no sample lies outside the
source grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np

from repro_lits.data.mlf_core import PreparedCase, crop_cube, liver_centre
from repro_lits.data.nifti import voxel_spacing
from repro_lits.errors import UserInputError


@dataclass(frozen=True)
class SpacingParams:
    """Parameters of the spacing mode: voxel size (mm), HU window mapped to [0, 1], cube edge (voxels)."""

    spacing_mm: float = 2.0
    hu_window: tuple[float, float] = (-200.0, 300.0)
    cube_size: int = 128

    def __post_init__(self) -> None:
        if not self.spacing_mm > 0:
            raise UserInputError(f"spacing_mm = {self.spacing_mm!r}; expected a positive voxel size in mm")
        if len(self.hu_window) != 2 or not self.hu_window[0] < self.hu_window[1]:
            raise UserInputError(f"hu_window = {self.hu_window!r}; expected (low, high) HU with low < high")
        if not isinstance(self.cube_size, int) or self.cube_size < 1:
            raise UserInputError(f"cube_size = {self.cube_size!r}; expected a positive integer")

    def to_dict(self) -> dict:
        return {
            "mode": "spacing",
            "spacing_mm": float(self.spacing_mm),
            "hu_window": [float(v) for v in self.hu_window],
            "cube_size": self.cube_size,
        }


def to_canonical(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip and transpose ``volume`` (X, Y, Z) to the closest RAS+ orientation; return the view and its affine."""
    orientation = nib.orientations.io_orientation(affine)
    canonical = nib.orientations.apply_orientation(volume, orientation)
    new_affine = affine @ nib.orientations.inv_ornt_aff(orientation, volume.shape)
    return canonical, new_affine


def resample_axis(volume: np.ndarray, axis: int, step: float, *, linear: bool) -> np.ndarray:
    """Resample one axis at positions ``0, step, 2*step, ...`` (in source voxels) up to the last voxel.

    Linear interpolation returns float32; nearest neighbour keeps the dtype.
    """
    length = volume.shape[axis]
    count = int(np.floor((length - 1) / step + 1e-6)) + 1
    positions = np.arange(count, dtype=np.float64) * step
    if not linear:
        return np.take(volume, np.minimum(np.rint(positions).astype(np.intp), length - 1), axis=axis)
    lower = np.floor(positions).astype(np.intp)
    upper = np.minimum(lower + 1, length - 1)
    shape = [1, 1, 1]
    shape[axis] = count
    weight = (positions - lower).astype(np.float32).reshape(shape)
    result = np.take(volume, lower, axis=axis).astype(np.float32)
    result *= 1.0 - weight
    result += np.take(volume, upper, axis=axis).astype(np.float32) * weight
    return result


def preprocess_spacing(image: np.ndarray, label: np.ndarray, affine: np.ndarray, params: SpacingParams) -> PreparedCase:
    """Run the spacing-mode preprocessing on one case.

    Args:
        image: (X, Y, Z) HU, int16 or float32, in the file's index order.
        label: (X, Y, Z) uint8 0..2 on the same grid, with at least one voxel >= 1.
        affine: (4, 4) voxel index to mm of both.

    Returns:
        cubes of shape (cube_size,)*3 in RAS+ order: image float32 in [0, 1], label uint8.
    """
    image_ras, ras_affine = to_canonical(image, affine)
    label_ras, _ = to_canonical(label, affine)
    source_spacing = voxel_spacing(ras_affine)

    for axis, spacing in enumerate(source_spacing):
        step = params.spacing_mm / spacing
        image_ras = resample_axis(image_ras, axis, step, linear=True)
        label_ras = resample_axis(label_ras, axis, step, linear=False)

    low, high = params.hu_window
    scaled = np.clip(image_ras, low, high, out=image_ras if image_ras.dtype == np.float32 else None)
    scaled = ((scaled - np.float32(low)) / np.float32(high - low)).astype(np.float32, copy=False)

    centre = liver_centre(label_ras)
    image_cube, placement = crop_cube(scaled, centre, params.cube_size, fill=0.0)
    label_cube, _ = crop_cube(np.ascontiguousarray(label_ras, dtype=np.uint8), centre, params.cube_size, fill=0)
    info = {
        "source_shape": list(image.shape),
        "orientation": "RAS",
        "source_spacing_mm": [round(s, 6) for s in source_spacing],
        "resampled_shape": list(scaled.shape),
        "centre": list(centre),
        "padding": placement,
        "padded": bool(any(placement["low"]) or any(placement["high"])),
    }
    return PreparedCase(image_cube, label_cube, info)
