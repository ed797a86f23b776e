"""Prepare and cache: manifest, fingerprint, split, incremental re-runs, ensure_dataset and real CT."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

from repro_lits.config import load_experiment
from repro_lits.data.cache import ensure_dataset, load_prepared
from repro_lits.data.manifest import compute_fingerprint
from repro_lits.data.prepare import prepare_dataset
from repro_lits.data.split import LITS_STUDY_TEST_CASES, make_split
from repro_lits.errors import DataError

from .conftest import REAL_CT, small_case

PARAMS = {"slice_count": 8, "downscale": 2, "cube_size": 4}


@pytest.fixture
def dataset(lits_folder):
    return lits_folder({str(i): small_case(seed=i) for i in range(5)})


def test_manifest_entries(tmp_path, dataset):
    result = prepare_dataset(dataset, tmp_path / "cache", **PARAMS)
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest == result.manifest
    assert manifest["params"] == {"mode": "mlf-core", "slice_count": 8, "downscale": 2, "cube_size": 4}
    assert manifest["layout"] == "lits"
    entry = manifest["cases"]["3"]
    assert entry["shape"] == [4, 4, 4]
    assert entry["source_shape"] == [12, 10, 8]
    assert entry["spacing_mm"] == [0.8, 0.8, 2.5]
    assert entry["output_spacing_mm"] == [1.6, 1.6, 5.0]
    assert set(entry["source"]) == {"image", "label"}
    assert entry["source"]["image"]["file"] == "volume-3.nii.gz"
    label = np.load(tmp_path / "cache" / entry["label"]["file"])
    counts = np.bincount(label.ravel(), minlength=3)
    assert entry["label_voxels"] == {"background": counts[0], "liver": counts[1], "tumor": counts[2]}
    assert manifest["fingerprint"] == compute_fingerprint(manifest)


def test_split_seeded_ten_percent(tmp_path, dataset):
    manifest = prepare_dataset(dataset, tmp_path / "cache", **PARAMS).manifest
    split = manifest["split"]
    assert len(split["test"]) == 1
    assert sorted(split["train"] + split["test"]) == ["0", "1", "2", "3", "4"]
    again = prepare_dataset(dataset, tmp_path / "other", **PARAMS).manifest
    assert again["split"] == split
    assert again["fingerprint"] == manifest["fingerprint"]


def test_split_lits_131_uses_study_test_cases():
    ids = [str(i) for i in range(131)]
    split = make_split("lits", ids, ids, test_fraction=0.1, split_seed=0)
    assert sorted(split["test"], key=int) == sorted(LITS_STUDY_TEST_CASES, key=int)
    assert len(split["train"]) == 118
    without_17 = make_split("lits", ids, [i for i in ids if i != "17"], test_fraction=0.1, split_seed=0)
    assert "17" not in without_17["test"]
    assert len(without_17["test"]) == 12


def test_split_other_datasets_seeded():
    ids = [f"liver_{i}" for i in range(131)]
    split = make_split("msd", ids, ids, test_fraction=0.1, split_seed=0)
    assert len(split["test"]) == 13
    assert split != make_split("msd", ids, ids, test_fraction=0.1, split_seed=1)
    assert split == make_split("msd", ids, ids, test_fraction=0.1, split_seed=0)
    assert len(make_split("lits", ["0", "1", "2"], ["0", "1", "2"], test_fraction=0.1, split_seed=0)["test"]) == 1


def test_split_needs_two_cases():
    with pytest.raises(DataError, match="expected at least 2"):
        make_split("lits", ["0"], ["0"], test_fraction=0.1, split_seed=0)


def test_rerun_unchanged_does_no_work(tmp_path, dataset):
    first = prepare_dataset(dataset, tmp_path / "cache", **PARAMS)
    assert sorted(first.computed) == ["0", "1", "2", "3", "4"]
    second = prepare_dataset(dataset, tmp_path / "cache", **PARAMS)
    assert second.computed == []
    assert sorted(second.reused) == ["0", "1", "2", "3", "4"]
    assert second.manifest["fingerprint"] == first.manifest["fingerprint"]


def test_touched_file_not_recomputed(tmp_path, dataset):
    prepare_dataset(dataset, tmp_path / "cache", **PARAMS)
    os.utime(dataset / "volume-1.nii.gz", ns=(1, 1))
    result = prepare_dataset(dataset, tmp_path / "cache", **PARAMS)
    assert result.computed == []


def test_changed_input_recomputes_that_case(tmp_path, dataset, lits_folder):
    first = prepare_dataset(dataset, tmp_path / "cache", **PARAMS)
    image, label = small_case(seed=99)
    lits_folder({"2": (image, label)}, folder=dataset)
    second = prepare_dataset(dataset, tmp_path / "cache", **PARAMS)
    assert second.computed == ["2"]
    assert second.manifest["cases"]["2"]["image"]["sha256"] != first.manifest["cases"]["2"]["image"]["sha256"]
    assert second.manifest["cases"]["1"] == first.manifest["cases"]["1"]
    assert second.manifest["fingerprint"] != first.manifest["fingerprint"]


def test_changed_parameter_recomputes(tmp_path, dataset):
    prepare_dataset(dataset, tmp_path / "cache", **PARAMS)
    result = prepare_dataset(dataset, tmp_path / "cache", **{**PARAMS, "cube_size": 8})
    assert len(result.computed) == 5
    assert np.load(tmp_path / "cache" / "images" / "0.npy").shape == (8, 8, 8)


def test_removed_case_dropped(tmp_path, dataset):
    prepare_dataset(dataset, tmp_path / "cache", **PARAMS)
    (dataset / "volume-4.nii.gz").unlink()
    (dataset / "segmentation-4.nii.gz").unlink()
    result = prepare_dataset(dataset, tmp_path / "cache", **PARAMS)
    assert "4" not in result.manifest["cases"]
    assert not (tmp_path / "cache" / "images" / "4.npy").exists()


def test_load_prepared_arrays(tmp_path, dataset):
    prepare_dataset(dataset, tmp_path / "cache", **PARAMS)
    prepared = load_prepared(tmp_path / "cache")
    assert len(prepared.train_cases) == 4
    assert len(prepared.test_cases) == 1
    case_id = prepared.test_cases[0]
    image = prepared.image(case_id)
    assert image.dtype == np.float32
    assert image.shape == (4, 4, 4)
    assert isinstance(image, np.memmap)
    assert not image.flags.writeable
    assert prepared.label(case_id).dtype == np.uint8
    hashes = prepared.case_sha256(case_id)
    assert set(hashes) == {"image", "label", "source_image", "source_label"}
    with pytest.raises(DataError, match="no case 'nope'"):
        prepared.image("nope")


def test_load_prepared_rejects_edits(tmp_path, dataset):
    prepare_dataset(dataset, tmp_path / "cache", **PARAMS)
    path = tmp_path / "cache" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["split"]["test"] = ["0"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="fingerprint does not match"):
        load_prepared(tmp_path / "cache")
    path.write_text("{not json")
    with pytest.raises(DataError, match="invalid JSON"):
        load_prepared(tmp_path / "cache")
    with pytest.raises(DataError, match="file not found"):
        load_prepared(tmp_path / "absent")


def test_load_prepared_missing_array(tmp_path, dataset):
    prepare_dataset(dataset, tmp_path / "cache", **PARAMS)
    (tmp_path / "cache" / "labels" / "0.npy").unlink()
    with pytest.raises(DataError, match="labels/0.npy: file not found"):
        load_prepared(tmp_path / "cache")


def test_ensure_dataset_synthetic_smoke(tmp_path):
    config = load_experiment("smoke")
    first = ensure_dataset(config, cache_root=tmp_path)
    assert len(first.train_cases) + len(first.test_cases) == config.data["synthetic_cases"]
    assert len(first.test_cases) == 1
    size = config.data["cube_size"]
    for case_id in first.train_cases + first.test_cases:
        assert first.image(case_id).shape == (size, size, size)
        assert (np.asarray(first.label(case_id)) == 1).any()
    assert (tmp_path / "raw" / "synthetic-8-0" / "volume-7.nii.gz").is_file()
    mtime = (tmp_path / "raw" / "synthetic-8-0" / "volume-0.nii.gz").stat().st_mtime_ns
    second = ensure_dataset(config, cache_root=tmp_path)
    assert second.fingerprint == first.fingerprint
    assert second.root == first.root
    assert (tmp_path / "raw" / "synthetic-8-0" / "volume-0.nii.gz").stat().st_mtime_ns == mtime


def test_ensure_dataset_concurrent_calls(tmp_path):
    config = load_experiment("smoke", ["data.synthetic_cases=3"])
    results: list = []
    errors: list = []

    def call():
        try:
            results.append(ensure_dataset(config, cache_root=tmp_path))
        except Exception as err:  # noqa: BLE001 - reported by the assert below
            errors.append(err)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results[0].fingerprint == results[1].fingerprint
    assert len(list((tmp_path / "raw").glob("synthetic-*"))) == 1


def test_ensure_dataset_missing_source(tmp_path):
    config = load_experiment("smoke", [f"data.source='{tmp_path / 'absent'}'"])
    with pytest.raises(DataError, match="folder not found"):
        ensure_dataset(config, cache_root=tmp_path)


@pytest.mark.skipif(not REAL_CT.is_dir(), reason="real CT volumes not present next to the repository")
@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"mode": "mlf-core", "slice_count": 128, "downscale": 2, "cube_size": 32}, id="mlf-core"),
        pytest.param({"mode": "spacing", "spacing_mm": 4.0, "cube_size": 48}, id="spacing"),
    ],
)
def test_prepare_real_ct(tmp_path, params):
    result = prepare_dataset(REAL_CT, tmp_path / "cache", **params)
    manifest = result.manifest
    assert sorted(manifest["cases"]) == ["0", "1"]
    assert manifest["cases"]["0"]["source_shape"] == [122, 101, 112]
    assert manifest["cases"]["0"]["spacing_mm"] == [3.0, 3.0, 3.0]
    prepared = load_prepared(tmp_path / "cache")
    size = params["cube_size"]
    for case_id in ("0", "1"):
        image = np.asarray(prepared.image(case_id))
        label = np.asarray(prepared.label(case_id))
        assert image.shape == (size, size, size)
        liver = label == 1
        assert liver.sum() > 100
        if params["mode"] == "mlf-core":
            # Raw HU: the liver is soft tissue, and the cube also contains air or fat.
            assert 0 < float(np.median(image[liver])) < 200
            assert image.min() < -100
        else:
            assert image.min() >= 0.0
            assert image.max() <= 1.0


def test_changed_cases_detects_edited_array(tmp_path, dataset):
    prepare_dataset(dataset, tmp_path / "cache", **PARAMS)
    prepared = load_prepared(tmp_path / "cache")
    assert prepared.changed_cases() == []
    np.save(tmp_path / "cache" / "images" / "3.npy", np.ones((4, 4, 4), dtype=np.float32))
    assert prepared.changed_cases() == ["3"]


def test_synthetic_cache_rewritten_when_outdated(tmp_path):
    config = load_experiment("smoke", ["data.synthetic_cases=2"])
    ensure_dataset(config, cache_root=tmp_path)
    info_path = tmp_path / "raw" / "synthetic-2-0" / "synth.json"
    info = json.loads(info_path.read_text())
    info["generator_version"] = 0
    info_path.write_text(json.dumps(info))
    ensure_dataset(config, cache_root=tmp_path)
    assert json.loads(info_path.read_text())["generator_version"] >= 1
