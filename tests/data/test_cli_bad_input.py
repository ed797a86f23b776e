"""Bad datasets and output paths for ``repro-lits data``: one-line errors, no traceback, existing caches kept."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
from typer.testing import CliRunner

from repro_lits.cli.data import app
from tests.data.conftest import AFFINE, save_nifti, small_case

#: Byte offset of ``dim[8]`` (int16) in a NIfTI-1 header.
DIM_OFFSET = 40
#: Byte offset of ``srow_x``, ``srow_y``, ``srow_z`` (3 x 4 float32) and of ``qform_code``/``sform_code``.
SROW_OFFSET = 280
QFORM_CODE_OFFSET = 252


def _check(folder: Path):
    return CliRunner().invoke(app, ["check", str(folder)])


def _patched_header(image: np.ndarray, dims=None, srows=None) -> bytes:
    """Encode ``image`` as .nii.gz bytes after overwriting the header's dim field or sform rows."""
    data = bytearray(nib.Nifti1Image(image, AFFINE).to_bytes())
    if dims is not None:
        struct.pack_into("<8h", data, DIM_OFFSET, *dims)
    if srows is not None:
        struct.pack_into("<hh", data, QFORM_CODE_OFFSET, 0, 1)
        for row, values in enumerate(srows):
            struct.pack_into("<4f", data, SROW_OFFSET + 16 * row, *values)
    return gzip.compress(bytes(data))


def test_check_bad_dim_count(lits_folder):
    image, label = small_case()
    folder = lits_folder({"0": small_case(), "1": (image, label)})
    (folder / "volume-1.nii.gz").write_bytes(_patched_header(image, dims=(9, 12, 10, 8, 1, 1, 1, 1)))
    result = _check(folder)
    assert result.exit_code == 1
    assert "volume-1.nii.gz: not a readable NIfTI file" in result.stdout
    assert "Traceback" not in result.output


def test_check_huge_header_shape(lits_folder):
    image, label = small_case()
    folder = lits_folder({"0": small_case(), "1": (image, label)})
    (folder / "volume-1.nii.gz").write_bytes(_patched_header(image, dims=(3, 32767, 32767, 32767, 1, 1, 1, 1)))
    result = _check(folder)
    assert result.exit_code == 1
    assert "header shape (32767, 32767, 32767) needs" in result.stdout
    assert "the header may be corrupt" in result.stdout


def test_check_zero_axis(lits_folder):
    image, label = small_case(shape=(12, 0, 8))
    folder = lits_folder({"0": small_case(), "1": (image, label)})
    result = _check(folder)
    assert result.exit_code == 1
    assert "shape (12, 0, 8) has an empty axis" in result.stdout


def test_check_rgb_and_complex_voxels(lits_folder):
    folder = lits_folder({"0": small_case(), "1": small_case(), "2": small_case()})
    rgb = np.zeros((12, 10, 8), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, AFFINE), str(folder / "volume-1.nii.gz"))
    save_nifti(folder / "volume-2.nii.gz", small_case()[0].astype(np.complex64), AFFINE)
    result = _check(folder)
    assert result.exit_code == 1
    assert "volume-1.nii.gz: voxel type" in result.stdout
    assert "volume-2.nii.gz: voxel type complex64; expected integer or real" in result.stdout


def test_check_singular_and_nan_affine(lits_folder):
    image, label = small_case()
    folder = lits_folder({"0": small_case(), "1": (image, label), "2": (image, label)})
    zero = np.zeros((3, 4))
    (folder / "volume-1.nii.gz").write_bytes(_patched_header(image, srows=zero))
    (folder / "segmentation-1.nii.gz").write_bytes(_patched_header(label, srows=zero))
    nan_rows = AFFINE[:3].copy()
    nan_rows[0, 0] = np.nan
    (folder / "volume-2.nii.gz").write_bytes(_patched_header(image, srows=nan_rows))
    (folder / "segmentation-2.nii.gz").write_bytes(_patched_header(label, srows=nan_rows))
    result = _check(folder)
    assert result.exit_code == 1
    assert "volume-1.nii.gz: affine is not finite or not invertible" in result.stdout
    assert "volume-2.nii.gz: affine is not finite or not invertible" in result.stdout


def test_failed_prepare_keeps_cache(lits_folder, tmp_path):
    bad_label = small_case()[1]
    bad_label[0, 0, 0] = 3
    folder = lits_folder({"0": small_case(), "1": small_case(seed=1), "2": (small_case()[0], bad_label)})
    cache = tmp_path / "cache"
    runner = CliRunner()
    first = runner.invoke(app, ["prepare", "--src", str(folder), "--out", str(cache), "--experiment", "smoke",
                                "--skip-invalid"])
    assert first.exit_code == 0, first.output
    before = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in cache.rglob("*") if path.is_file()}

    failed = runner.invoke(app, ["prepare", "--src", str(folder), "--out", str(cache), "--experiment", "smoke",
                                 "--cube-size", "24"])
    assert failed.exit_code == 2
    assert "segmentation-2.nii.gz: label values 3 out of range" in failed.output
    after = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in cache.rglob("*") if path.is_file()}
    assert after == before


def test_synth_refuses_dataset_folder(lits_folder):
    folder = lits_folder({"0": small_case()})
    original = (folder / "volume-0.nii.gz").read_bytes()
    result = CliRunner().invoke(app, ["synth", "--out", str(folder), "--cases", "2"])
    assert result.exit_code == 2
    assert "folder is not empty and has no synth.json" in result.output
    assert (folder / "volume-0.nii.gz").read_bytes() == original


def test_synth_out_below_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = CliRunner().invoke(app, ["synth", "--out", str(blocker / "sub"), "--cases", "2"])
    assert result.exit_code == 2
    assert "cannot create the folder (Not a directory)" in result.output
    assert "Traceback" not in result.output


def test_check_file_instead_of_folder(tmp_path):
    path = tmp_path / "volume-0.nii.gz"
    path.write_bytes(b"x")
    result = _check(path)
    assert result.exit_code == 2
    assert f"{path}: is a file; expected a dataset folder" in result.output
