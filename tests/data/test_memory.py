"""Reading and preprocessing a volume needs a few times its int16 size, never a float64 copy."""

from __future__ import annotations

import tracemalloc

import numpy as np

from repro_lits.data.layouts import CaseFiles
from repro_lits.data.mlf_core import MlfCoreParams, preprocess_mlf_core
from repro_lits.data.nifti import write_nifti_gz
from repro_lits.data.volume import load_case


def test_peak_memory_below_four_int16_copies(tmp_path):
    shape = (256, 256, 200)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape), indexing="ij", sparse=True)
    inside = (x * x + y * y + z * z) < 0.3
    image = np.where(inside, np.int16(60), np.int16(-1000)).astype(np.int16)
    label = inside.astype(np.uint8)
    affine = np.diag([0.8, 0.8, 1.5, 1.0])
    write_nifti_gz(tmp_path / "volume-0.nii.gz", image, affine, compresslevel=1)
    write_nifti_gz(tmp_path / "segmentation-0.nii.gz", label, affine, compresslevel=1)
    int16_bytes = image.nbytes
    del image, label, inside

    tracemalloc.start()
    try:
        volume = load_case(CaseFiles("0", tmp_path / "volume-0.nii.gz", tmp_path / "segmentation-0.nii.gz"))
        result = preprocess_mlf_core(volume.image, volume.label, MlfCoreParams(slice_count=256, downscale=2, cube_size=64))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert volume.image.dtype == np.int16
    assert result.image.shape == (64, 64, 64)
    # A float64 copy of the image alone would be 4x the int16 size.
    assert peak < 4 * int16_bytes, f"peak {peak / 2**20:.0f} MiB for a {int16_bytes / 2**20:.0f} MiB int16 volume"
