"""Layout detection (LiTS, Decathlon Task03, nnU-Net v2, study .pt) and the safe study .pt reader."""

from __future__ import annotations

import io
import re
import json
import pickle
import zipfile

import numpy as np
import pytest
import torch

from repro_lits.data.layouts import detect_layout
from repro_lits.data.prepare import prepare_dataset
from repro_lits.data.study_pt import read_study_array
from repro_lits.data.validate import check_dataset
from repro_lits.errors import DataError

from .conftest import AFFINE, save_nifti, small_case


def test_lits_nested_batches_and_plain_nii(tmp_path):
    image, label = small_case()
    (tmp_path / "batch1").mkdir()
    (tmp_path / "batch2").mkdir()
    save_nifti(tmp_path / "batch1" / "volume-10.nii", image, AFFINE)
    save_nifti(tmp_path / "batch1" / "segmentation-10.nii", label, AFFINE)
    save_nifti(tmp_path / "batch2" / "volume-2.nii.gz", image, AFFINE)
    save_nifti(tmp_path / "batch2" / "segmentation-2.nii.gz", label, AFFINE)
    layout = detect_layout(tmp_path)
    assert layout.kind == "lits"
    assert [c.case_id for c in layout.cases] == ["2", "10"]
    assert layout.problems == ()
    assert check_dataset(tmp_path).ok


def test_lits_duplicate_case_reported(tmp_path):
    image, label = small_case()
    save_nifti(tmp_path / "volume-1.nii", image, AFFINE)
    save_nifti(tmp_path / "volume-1.nii.gz", image, AFFINE)
    save_nifti(tmp_path / "segmentation-1.nii.gz", label, AFFINE)
    layout = detect_layout(tmp_path)
    (problem,) = layout.problems
    assert "volume-1.nii" in problem
    assert "expected one file per case 1" in problem


def make_msd(root, case_ids=(3, 12)):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for number in case_ids:
        image, label = small_case(seed=number)
        save_nifti(root / "imagesTr" / f"liver_{number}.nii.gz", image, AFFINE)
        save_nifti(root / "labelsTr" / f"liver_{number}.nii.gz", label, AFFINE)
    (root / "imagesTr" / "._liver_3.nii.gz").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (root / "labelsTr" / "._liver_3.nii.gz").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (root / "dataset.json").write_text(json.dumps({"name": "Liver", "labels": {"0": "background", "1": "liver", "2": "cancer"}}))
    return root


def test_decathlon_layout_skips_resource_forks(tmp_path):
    root = make_msd(tmp_path / "Task03_Liver")
    layout = detect_layout(root)
    assert layout.kind == "msd"
    assert [c.case_id for c in layout.cases] == ["liver_3", "liver_12"]
    assert layout.problems == ()
    report = check_dataset(root)
    assert report.ok


def test_decathlon_prepare_case_ids(tmp_path):
    root = make_msd(tmp_path / "Task03_Liver")
    result = prepare_dataset(root, tmp_path / "cache", slice_count=8, cube_size=4)
    assert sorted(result.manifest["cases"]) == ["liver_12", "liver_3"]
    assert result.manifest["layout"] == "msd"


def test_decathlon_missing_dataset_json(tmp_path):
    root = make_msd(tmp_path / "Task03_Liver")
    (root / "dataset.json").unlink()
    (problem,) = detect_layout(root).problems
    assert problem == f"{root / 'dataset.json'}: file not found; expected the dataset description next to imagesTr/"
    with pytest.raises(DataError, match="dataset.json: file not found"):
        prepare_dataset(root, tmp_path / "cache", slice_count=8, cube_size=4)


def make_nnunet(root, cases=("LIVER_001", "LIVER_002")):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for index, case in enumerate(cases):
        image, label = small_case(seed=index)
        save_nifti(root / "imagesTr" / f"{case}_0000.nii.gz", image, AFFINE)
        save_nifti(root / "labelsTr" / f"{case}.nii.gz", label, AFFINE)
    description = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumor": 2},
                   "numTraining": len(cases), "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(description))
    return root


def test_nnunet_layout(tmp_path):
    root = make_nnunet(tmp_path / "Dataset003_Liver")
    layout = detect_layout(root)
    assert layout.kind == "nnunet"
    assert [c.case_id for c in layout.cases] == ["LIVER_001", "LIVER_002"]
    assert layout.cases[0].image.name == "LIVER_001_0000.nii.gz"
    assert layout.cases[0].label.name == "LIVER_001.nii.gz"
    assert check_dataset(root).ok


def test_nnunet_extra_channel_reported(tmp_path):
    root = make_nnunet(tmp_path / "Dataset003_Liver")
    image, _ = small_case()
    save_nifti(root / "imagesTr" / "LIVER_001_0001.nii.gz", image, AFFINE)
    (problem,) = detect_layout(root).problems
    assert "LIVER_001_0001.nii.gz: channel 0001; expected a single CT channel (_0000) per case" in problem


def make_study_pt(root, count=3):
    root.mkdir(parents=True)
    cubes = {}
    for index in range(count):
        image, label = small_case(shape=(8, 8, 8), seed=index)
        torch.save(image.astype(np.float32), root / f"img_{index}.pt")
        torch.save(label.astype(np.float32), root / f"lab_{index}.pt")
        cubes[str(index)] = (image.astype(np.float32), label)
    return cubes


def test_study_pt_import(tmp_path):
    cubes = make_study_pt(tmp_path / "study")
    result = prepare_dataset(tmp_path / "study", tmp_path / "cache")
    assert result.manifest["layout"] == "study-pt"
    assert result.manifest["params"] == {"mode": "study-pt"}
    for case_id, (image, label) in cubes.items():
        np.testing.assert_array_equal(np.load(tmp_path / "cache" / "images" / f"{case_id}.npy"), image)
        np.testing.assert_array_equal(np.load(tmp_path / "cache" / "labels" / f"{case_id}.npy"), label)


def test_study_pt_legacy_format(tmp_path):
    array = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    torch.save(array, tmp_path / "img_0.pt", _use_new_zipfile_serialization=False)
    np.testing.assert_array_equal(read_study_array(tmp_path / "img_0.pt"), array)


class RunsShell:
    """Pickles as a call to os.system; must never be called by the reader."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


def torch_zip_with_pickle(path, payload: bytes):
    """Write a zip laid out like torch.save's, whose data.pkl is ``payload``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")
    path.write_bytes(buffer.getvalue())


def test_malicious_pickle_rejected_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(RunsShell(f"touch {marker}"), protocol=2)
    assert b"system" in payload
    torch_zip_with_pickle(tmp_path / "img_0.pt", payload)
    with pytest.raises(DataError, match=r"rejected: global (posix|os)\.system is not allowed"):
        read_study_array(tmp_path / "img_0.pt")
    assert not marker.exists()


def test_malicious_legacy_pickle_rejected_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    parts = [pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2), pickle.dumps(1001, protocol=2), pickle.dumps({}, protocol=2),
             pickle.dumps(RunsShell(f"touch {marker}"), protocol=2)]
    (tmp_path / "img_0.pt").write_bytes(b"".join(parts))
    with pytest.raises(DataError, match="is not allowed"):
        read_study_array(tmp_path / "img_0.pt")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(torch.zeros(3), "torch._utils._rebuild_tensor_v2 is not allowed", id="tensor"),
        pytest.param({"a": 1}, "contains dict; expected a NumPy array", id="dict"),
        pytest.param(np.array(["a", "b"]), "dtype <U1; expected a numeric", id="strings"),
    ],
)
def test_study_pt_non_array_rejected(tmp_path, value, expected):
    torch.save(value, tmp_path / "img_0.pt")
    with pytest.raises(DataError, match=re.escape(expected)):
        read_study_array(tmp_path / "img_0.pt")


def test_study_pt_not_torch_file(tmp_path):
    (tmp_path / "img_0.pt").write_bytes(b"plain text, not a pickle")
    with pytest.raises(DataError, match="img_0.pt: "):
        read_study_array(tmp_path / "img_0.pt")
