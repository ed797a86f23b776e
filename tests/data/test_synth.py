"""Synthetic phantoms: byte-identical output, plausible anatomy, readable by the LiTS loader."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pytest

from repro_lits.data.layouts import detect_layout
from repro_lits.data.synth import PhantomParams, make_phantom, synthesize_dataset
from repro_lits.data.volume import load_case
from repro_lits.errors import UserInputError


def file_hashes(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_synth_twice_gives_identical_bytes(tmp_path):
    first = synthesize_dataset(tmp_path / "a", cases=3, seed=7)
    second = synthesize_dataset(tmp_path / "b", cases=3, seed=7)
    hashes_a = file_hashes(tmp_path / "a")
    hashes_b = file_hashes(tmp_path / "b")
    assert hashes_a == hashes_b
    assert first["sha256"] == second["sha256"]
    assert len(first["sha256"]) == 6
    for name, digest in first["sha256"].items():
        assert hashes_a[name] == digest


def test_synth_gzip_header_has_no_time_or_name(tmp_path):
    synthesize_dataset(tmp_path, cases=2, seed=0)
    head = (tmp_path / "volume-0.nii.gz").read_bytes()[:10]
    assert head[:2] == b"\x1f\x8b"
    assert head[3] & 0x08 == 0  # FNAME flag
    assert head[4:8] == b"\x00\x00\x00\x00"  # MTIME


def test_synth_seed_changes_data(tmp_path):
    a = synthesize_dataset(tmp_path / "a", cases=2, seed=0)
    b = synthesize_dataset(tmp_path / "b", cases=2, seed=1)
    assert a["sha256"]["volume-0.nii.gz"] != b["sha256"]["volume-0.nii.gz"]


def test_synth_case_independent_of_count(tmp_path):
    small = synthesize_dataset(tmp_path / "a", cases=2, seed=3)
    large = synthesize_dataset(tmp_path / "b", cases=3, seed=3)
    assert small["sha256"]["volume-1.nii.gz"] == large["sha256"]["volume-1.nii.gz"]


def test_synth_rejects_single_case(tmp_path):
    with pytest.raises(UserInputError, match="at least 2"):
        synthesize_dataset(tmp_path, cases=1)


def test_synth_files_are_lits_layout(tmp_path):
    synthesize_dataset(tmp_path, cases=2, seed=0)
    layout = detect_layout(tmp_path)
    assert layout.kind == "lits"
    assert [c.case_id for c in layout.cases] == ["0", "1"]
    image = nib.load(tmp_path / "volume-0.nii.gz")
    label = nib.load(tmp_path / "segmentation-0.nii.gz")
    assert image.get_data_dtype() == np.int16
    assert label.get_data_dtype() == np.uint8
    assert np.allclose(image.affine, label.affine)
    volume = load_case(layout.cases[0])
    assert volume.image.dtype == np.int16
    assert set(np.unique(volume.label)) <= {0, 1, 2}


@pytest.mark.parametrize("case_index", range(8))
def test_phantom_anatomy_plausible(case_index):
    params = PhantomParams()
    phantom = make_phantom(case_index, seed=0, params=params)
    image, label = phantom.image, phantom.label
    nx, ny, nz = image.shape
    spacing = np.diag(phantom.affine)[:3]

    assert params.matrix_size[0] <= nx <= params.matrix_size[1]
    assert nx == ny
    assert params.slice_count[0] <= nz <= params.slice_count[1]
    assert params.slice_spacing[0] <= spacing[2] <= params.slice_spacing[1]
    assert 2.0 <= spacing[0] <= 4.5
    assert np.linalg.det(phantom.affine[:3, :3]) > 0

    # Air outside the body, bone present, liver HU inside the soft-tissue range.
    corners = image[[0, 0, -1, -1], [0, -1, 0, -1], :]
    assert np.median(corners) < -900
    assert image.max() > 500
    liver_only = image[label == 1]
    assert 20 < float(np.median(liver_only)) < 160

    # Liver in the patient's right half (low x in RAS+), 12-22 cm wide.
    liver_x = np.flatnonzero((label >= 1).any(axis=(1, 2)))
    assert liver_x.mean() < nx / 2
    width_mm = (liver_x[-1] - liver_x[0] + 1) * spacing[0]
    assert 100 < width_mm < 220

    # Tumors lie inside the liver label and differ from the liver by tens of HU.
    tumor = label == 2
    assert 0 <= phantom.tumors <= 3
    if tumor.any():
        contrast = abs(float(np.median(image[tumor])) - float(np.median(liver_only)))
        assert contrast > 30


def test_phantoms_vary_and_some_have_no_tumor():
    phantoms = [make_phantom(i, seed=0) for i in range(16)]
    counts = [p.tumors for p in phantoms]
    assert 0 in counts
    assert max(counts) >= 2
    shapes = {p.image.shape for p in phantoms}
    assert len(shapes) > 6
    liver_sizes = [int((p.label >= 1).sum()) for p in phantoms]
    assert max(liver_sizes) > 1.3 * min(liver_sizes)


def test_phantom_params_digest_changes_with_values():
    assert PhantomParams().digest() == PhantomParams().digest()
    assert PhantomParams(tumor_contrast=(40.0, 50.0)).digest() != PhantomParams().digest()
    json.dumps(PhantomParams().to_dict())
