"""Helpers that build small NIfTI datasets for the data tests."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

#: Real CT volumes next to the repository, used when present.
REAL_CT = Path(__file__).resolve().parents[3] / "shared" / "data" / "realct"


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write ``array`` with nibabel (gzip when the name ends in .gz)."""
    image = nib.Nifti1Image(array, np.eye(4) if affine is None else affine)
    image.header.set_data_dtype(array.dtype)
    nib.save(image, str(path))
    return path


def small_case(shape=(12, 10, 8), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """An int16 image and a uint8 label with a liver box and a tumor voxel block, (X, Y, Z)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(-100, 200, size=shape).astype(np.int16)
    label = np.zeros(shape, dtype=np.uint8)
    label[3:8, 2:7, 2:6] = 1
    label[4:6, 3:5, 3:4] = 2
    return image, label


AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])


@pytest.fixture
def lits_folder(tmp_path: Path):
    """Return a function that writes cases into a LiTS-layout folder and returns the folder."""

    def write(cases: dict, folder: Path | None = None) -> Path:
        root = folder or tmp_path / "lits"
        root.mkdir(parents=True, exist_ok=True)
        for case_id, (image, label) in cases.items():
            save_nifti(root / f"volume-{case_id}.nii.gz", image, AFFINE)
            save_nifti(root / f"segmentation-{case_id}.nii.gz", label, AFFINE)
        return root

    return write
