"""Every kind of bad input gives one-line problems that name the file, the fault and the expectation."""

from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from repro_lits.cli.data import app
from repro_lits.data.layouts import CaseFiles, detect_layout
from repro_lits.data.prepare import prepare_dataset
from repro_lits.data.validate import check_dataset
from repro_lits.data.volume import CaseError, load_case
from repro_lits.errors import DataError, UserInputError

from .conftest import AFFINE, save_nifti, small_case


def write_case(root, image, label, image_affine=AFFINE, label_affine=AFFINE, case_id="0"):
    root.mkdir(parents=True, exist_ok=True)
    image_path = save_nifti(root / f"volume-{case_id}.nii.gz", image, image_affine)
    label_path = save_nifti(root / f"segmentation-{case_id}.nii.gz", label, label_affine)
    return CaseFiles(case_id, image_path, label_path)


def problems_of(case) -> list[str]:
    with pytest.raises(CaseError) as caught:
        load_case(case)
    return caught.value.problems


def test_volume_without_segmentation(tmp_path):
    image, label = small_case()
    save_nifti(tmp_path / "volume-0.nii.gz", image, AFFINE)
    save_nifti(tmp_path / "volume-1.nii.gz", image, AFFINE)
    save_nifti(tmp_path / "segmentation-1.nii.gz", label, AFFINE)
    save_nifti(tmp_path / "segmentation-2.nii.gz", label, AFFINE)
    report = check_dataset(tmp_path)
    assert len(report.problems) == 2
    assert report.problems[0] == (
        f"{tmp_path / 'volume-0.nii.gz'}: image without label; expected a label file for case 0"
    )
    assert report.problems[1] == (
        f"{tmp_path / 'segmentation-2.nii.gz'}: label without image; expected an image file for case 2"
    )


def test_shape_mismatch(tmp_path):
    image, label = small_case()
    case = write_case(tmp_path, image, label[:, :, :6])
    (problem,) = problems_of(case)
    assert "segmentation-0.nii.gz: shape (12, 10, 6) does not match the image shape (12, 10, 8)" in problem
    assert "expected the same voxel grid" in problem


def test_label_with_trailing_singleton_axis_accepted(tmp_path):
    image, label = small_case()
    case = write_case(tmp_path, image, label[..., np.newaxis])
    volume = load_case(case)
    np.testing.assert_array_equal(volume.label, label)


def test_real_4d_image_rejected(tmp_path):
    image, label = small_case()
    case = write_case(tmp_path, np.stack([image, image], axis=-1), label)
    (problem,) = problems_of(case)
    assert "volume-0.nii.gz: shape (12, 10, 8, 2) is not a 3-D volume" in problem
    assert "expected (X, Y, Z) or (X, Y, Z, 1)" in problem


def test_affine_rounding_noise_accepted(tmp_path):
    image, label = small_case()
    noisy = AFFINE.copy()
    noisy[:3, 3] += [1e-4, -1e-4, 5e-5]
    volume = load_case(write_case(tmp_path, image, label, label_affine=noisy))
    np.testing.assert_array_equal(volume.label, label)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_affine_axis_flip_aligned_to_image(tmp_path, axis):
    image, label = small_case()
    flipped_affine = AFFINE.copy()
    flipped_affine[:3, axis] *= -1
    flipped_affine[axis, 3] = (label.shape[axis] - 1) * AFFINE[axis, axis]
    volume = load_case(write_case(tmp_path, image, np.flip(label, axis), label_affine=flipped_affine))
    np.testing.assert_array_equal(volume.label, label)


def test_affine_axis_permutation_aligned_to_image(tmp_path):
    image, label = small_case(shape=(12, 10, 8))
    permuted_affine = AFFINE[:, [1, 0, 2, 3]]
    volume = load_case(write_case(tmp_path, image, label.transpose(1, 0, 2), label_affine=permuted_affine))
    np.testing.assert_array_equal(volume.label, label)


def test_affine_millimetre_shift_rejected(tmp_path):
    image, label = small_case()
    shifted = AFFINE.copy()
    shifted[:3, 3] += [2.0, 0.0, 0.0]
    (problem,) = problems_of(write_case(tmp_path, image, label, label_affine=shifted))
    assert "segmentation-0.nii.gz: affine places the label up to 2 mm away from the image" in problem
    assert "expected the image's voxel grid" in problem


def test_identity_affine_warns(tmp_path):
    image, label = small_case()
    volume = load_case(write_case(tmp_path, image, label, image_affine=np.eye(4), label_affine=np.eye(4)))
    (warning,) = volume.warnings
    assert "volume-0.nii.gz: identity affine, so every voxel reads as 1 mm" in warning
    assert "spacing mode would resample this case wrongly" in warning
    report = check_dataset(tmp_path)
    assert report.ok
    assert report.warnings == [warning]


def test_near_integer_label_floats_rounded(tmp_path):
    image, label = small_case()
    noisy = label.astype(np.float32)
    noisy[label == 1] = 0.99999
    noisy[label == 2] = 2.0000001
    volume = load_case(write_case(tmp_path, image, noisy))
    assert volume.label.dtype == np.uint8
    np.testing.assert_array_equal(volume.label, label)


@pytest.mark.parametrize(
    ("bad_value", "dtype", "shown"),
    [
        pytest.param(1.4, np.float32, "1.4", id="fraction"),
        pytest.param(3, np.uint8, "3", id="class-3"),
        pytest.param(-1, np.int16, "-1", id="negative"),
    ],
)
def test_invalid_label_values_rejected(tmp_path, bad_value, dtype, shown):
    image, label = small_case()
    bad = label.astype(dtype)
    bad[0, 0, 0] = bad_value
    (problem,) = problems_of(write_case(tmp_path, image, bad))
    assert f"segmentation-0.nii.gz: label values {shown}" in problem
    assert "expected integers 0 (background), 1 (liver), 2 (tumor)" in problem


def test_nan_and_inf_voxels_rejected(tmp_path):
    image, label = small_case()
    bad = image.astype(np.float32)
    bad[0, 0, 0] = np.nan
    bad[1, 0, 0] = np.inf
    (problem,) = problems_of(write_case(tmp_path, bad, label))
    assert "volume-0.nii.gz: 2 NaN or Inf voxels; expected finite HU values" in problem


def test_empty_liver_rejected(tmp_path):
    image, label = small_case()
    (problem,) = problems_of(write_case(tmp_path, image, np.zeros_like(label)))
    assert "segmentation-0.nii.gz: no liver voxel (no label >= 1)" in problem
    assert "expected a liver to centre the crop on" in problem


def test_volume_smaller_than_crop_padded(tmp_path, lits_folder):
    root = lits_folder({"0": small_case(seed=0), "1": small_case(seed=1)})
    result = prepare_dataset(root, tmp_path / "cache", slice_count=8, downscale=2, cube_size=16)
    entry = result.manifest["cases"]["0"]
    assert entry["shape"] == [16, 16, 16]
    assert entry["padded"] is True
    info = entry["preprocessing"]
    assert info["downscaled_shape"] == [6, 5, 4]
    assert info["padding"]["low"] == [8 - c for c in info["centre"]]
    assert info["padding"]["high"] == [c + 8 - n for c, n in zip(info["centre"], [6, 5, 4])]


def test_truncated_gzip_rejected(tmp_path):
    image, label = small_case(shape=(40, 40, 20))
    case = write_case(tmp_path, image, label)
    data = case.image.read_bytes()
    case.image.write_bytes(data[: len(data) // 2])
    (problem,) = problems_of(case)
    assert problem.startswith(f"{case.image}: ")
    assert "truncated" in problem


def test_plain_nifti_named_gz_rejected(tmp_path):
    image, label = small_case()
    case = write_case(tmp_path, image, label)
    case.image.write_bytes(gzip.decompress(case.image.read_bytes()))
    (problem,) = problems_of(case)
    assert problem == (
        f"{case.image}: named .nii.gz but is an uncompressed NIfTI file; expected gzip data; rename it to .nii"
    )


def test_gzip_named_plain_nifti_rejected(tmp_path):
    image, label = small_case()
    case = write_case(tmp_path, image, label)
    plain = case.image.with_name("volume-0.nii")
    case.image.rename(plain)
    (problem,) = problems_of(CaseFiles("0", plain, case.label))
    assert problem == f"{plain}: named .nii but is gzip-compressed; expected raw NIfTI bytes; rename it to .nii.gz"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(b"<html>not found</html>", "not a NIfTI file", id="text-as-gz"),
        pytest.param(gzip.compress(b"just some text, not an image header" * 20), "not a readable NIfTI file", id="gzip-text"),
    ],
)
def test_non_nifti_file_rejected(tmp_path, content, expected):
    image, label = small_case()
    case = write_case(tmp_path, image, label)
    case.label.write_bytes(content)
    (problem,) = problems_of(case)
    assert problem.startswith(f"{case.label}: {expected}")


def test_check_cli_lists_every_problem_without_traceback(tmp_path):
    image, label = small_case()
    write_case(tmp_path, image, label, case_id="0")
    write_case(tmp_path, image, np.zeros_like(label), case_id="1")
    bad = write_case(tmp_path, image, label, case_id="2")
    bad.image.write_bytes(b"garbage")
    save_nifti(tmp_path / "volume-3.nii.gz", image, AFFINE)

    result = CliRunner().invoke(app, ["check", str(tmp_path)])
    assert result.exit_code == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    assert "segmentation-1.nii.gz: no liver voxel" in lines[0]
    assert "volume-2.nii.gz: not a NIfTI file" in lines[1]
    assert "volume-3.nii.gz: image without label" in lines[2]
    assert "Traceback" not in result.output


def test_check_cli_clean_dataset_exits_zero(tmp_path, lits_folder):
    root = lits_folder({"0": small_case(seed=0), "1": small_case(seed=1)})
    result = CliRunner().invoke(app, ["check", str(root)])
    assert result.exit_code == 0
    assert result.stdout == ""


def test_prepare_raises_first_problem(tmp_path, lits_folder):
    root = lits_folder({"0": small_case(seed=0), "1": small_case(seed=1), "2": (small_case()[0], np.zeros((12, 10, 8), np.uint8))})
    with pytest.raises(DataError, match="segmentation-2.nii.gz: no liver voxel"):
        prepare_dataset(root, tmp_path / "cache", slice_count=8, cube_size=4)


def test_prepare_skip_invalid_lists_cases(tmp_path, lits_folder):
    root = lits_folder({"0": small_case(seed=0), "1": small_case(seed=1), "2": (small_case()[0], np.zeros((12, 10, 8), np.uint8))})
    result = prepare_dataset(root, tmp_path / "cache", slice_count=8, cube_size=4, skip_invalid=True)
    assert list(result.skipped) == ["2"]
    assert "no liver voxel" in result.skipped["2"][0]
    assert sorted(result.manifest["cases"]) == ["0", "1"]
    assert result.manifest["skipped"] == result.skipped


def test_prepare_cli_skip_invalid(tmp_path, lits_folder):
    root = lits_folder({"0": small_case(seed=0), "1": small_case(seed=1), "2": (small_case()[0], np.zeros((12, 10, 8), np.uint8))})
    runner = CliRunner()
    failed = runner.invoke(app, ["prepare", "--src", str(root), "--out", str(tmp_path / "c"), "--slice-count", "8", "--cube-size", "4"])
    assert failed.exit_code == 2
    assert "error: " in failed.output
    assert "no liver voxel" in failed.output
    assert "Traceback" not in failed.output
    skipped = runner.invoke(
        app, ["prepare", "--src", str(root), "--out", str(tmp_path / "c"), "--slice-count", "8", "--cube-size", "4", "--skip-invalid"]
    )
    assert skipped.exit_code == 0
    assert "skipped case 2: " in skipped.stdout
    assert "prepared 2 cases" in skipped.stdout


def test_missing_folder_and_unknown_layout(tmp_path):
    with pytest.raises(DataError, match="folder not found"):
        detect_layout(tmp_path / "absent")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="no dataset found"):
        detect_layout(tmp_path)
    result = CliRunner().invoke(app, ["check", str(tmp_path)])
    assert result.exit_code == 2
    assert "error: " in result.output


def test_nan_label_rejected(tmp_path):
    image, label = small_case()
    bad = label.astype(np.float32)
    bad[0, 0, 0] = np.nan
    (problem,) = problems_of(write_case(tmp_path, image, bad))
    assert problem == (
        f"{tmp_path / 'segmentation-0.nii.gz'}: label contains NaN or Inf; "
        "expected integers 0 (background), 1 (liver), 2 (tumor)"
    )


def test_identity_affine_warning_in_manifest(tmp_path):
    for case_id, seed in (("0", 0), ("1", 1)):
        image, label = small_case(seed=seed)
        write_case(tmp_path / "src", image, label, image_affine=np.eye(4), label_affine=np.eye(4), case_id=case_id)
    result = prepare_dataset(tmp_path / "src", tmp_path / "cache", mode="spacing", spacing_mm=2.0, cube_size=8)
    (warning,) = result.manifest["cases"]["0"]["warnings"]
    assert "identity affine" in warning
    assert result.manifest["cases"]["0"]["spacing_mm"] == [1.0, 1.0, 1.0]


def test_scaled_image_read_as_float32(tmp_path):
    image, label = small_case()
    stored = (image.astype(np.int32) + 1024).astype(np.uint16)
    case = write_case(tmp_path, image, label)
    # nibabel drops a scaling it does not need when saving, so write the header fields and bytes directly.
    header = nib.Nifti1Header()
    header.set_data_shape(stored.shape)
    header.set_data_dtype(np.uint16)
    header.set_sform(AFFINE, code=1)
    header["scl_slope"] = 1.0
    header["scl_inter"] = -1024.0
    header["vox_offset"] = 352
    case.image.write_bytes(gzip.compress(header.binaryblock + b"\x00" * 4 + stored.tobytes(order="F")))
    volume = load_case(case)
    assert volume.image.dtype == np.float32
    np.testing.assert_array_equal(volume.image, image.astype(np.float32))


def test_unscaled_int16_image_kept_int16(tmp_path):
    image, label = small_case()
    volume = load_case(write_case(tmp_path, image, label))
    assert volume.image.dtype == np.int16
    np.testing.assert_array_equal(volume.image, image)


def test_label_with_two_trailing_singleton_axes_accepted(tmp_path):
    image, label = small_case()
    volume = load_case(write_case(tmp_path, image, label[..., np.newaxis, np.newaxis]))
    np.testing.assert_array_equal(volume.label, label)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read files without read permission")
def test_unreadable_file_rejected(tmp_path):
    image, label = small_case()
    case = write_case(tmp_path, image, label)
    case.image.chmod(0)
    (problem,) = problems_of(case)
    assert problem.startswith(f"{case.image}: cannot read the file")


def test_cache_folder_under_a_file_rejected(tmp_path, lits_folder):
    root = lits_folder({"0": small_case(seed=0), "1": small_case(seed=1)})
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserInputError, match="cannot create the cache folder"):
        prepare_dataset(root, tmp_path / "file" / "cache", slice_count=8, cube_size=4)
