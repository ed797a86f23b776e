"""End-to-end runs of the smoke preset in fresh worker processes: hashes, replay, records and failures.

Each run trains a width-4 U-Net for 2 epochs on 16^3 cubes (a few seconds).
"""

import numpy as np
import pytest
from safetensors.torch import load_file

from repro_lits.hashing import predictions_sha256, state_dict_sha256
from repro_lits.record import CLASS_NAMES

pytestmark = pytest.mark.slow


def test_deterministic_runs_share_one_hash(worker):
    specs = [worker.spec("deterministic", run_index=i) for i in range(3)]
    specs.append(worker.spec("deterministic", run_index=0, replay_epochs=1))
    results = worker.run(specs)
    assert [status for status, _, _ in results] == [0, 0, 0, 0]
    records = [record for _, _, record in results]

    full_runs = records[:3]
    assert len({r["weights_sha256"] for r in full_runs}) == 1
    assert len({r["predictions_sha256"] for r in full_runs}) == 1
    assert len({tuple(e["weights_sha256"] for e in r["epochs"]) for r in full_runs}) == 1
    # Training only the first epoch reproduces the first epoch's hash.
    assert records[3]["weights_sha256"] == full_runs[0]["epochs"][0]["weights_sha256"]
    assert len(records[3]["epochs"]) == 1


def test_random_runs_differ(worker):
    results = worker.run([worker.spec("random", run_index=i) for i in range(3)])
    records = [record for _, _, record in results]
    assert all(r["status"] == "finished" for r in records)
    assert len({r["weights_sha256"] for r in records}) == 3
    assert len({r["seeds"]["torch_initial_seed"] for r in records}) == 3
    assert all(r["seeds"]["mode"] == "observed" for r in records)


def test_random_run_replayed_from_record(worker):
    (_, _, original), = worker.run([worker.spec("random", run_index=0)])
    (status, _, replay), = worker.run([worker.spec("random", run_index=0, seeds=original["seeds"])])
    assert status == 0
    assert replay["seeds"]["replayed"] is True
    assert replay["threads"] == original["threads"]
    assert replay["weights_sha256"] == original["weights_sha256"]
    assert replay["predictions_sha256"] == original["predictions_sha256"]


def test_record_matches_files(worker, smoke_dataset):
    (status, events, record), = worker.run([worker.spec("seed", run_index=2)])
    assert status == 0
    run_dir = worker.root / "01-seed-002"

    assert record["run_id"] == "seed-002"
    assert record["experiment"] == "smoke"
    assert record["seeds"]["run_seed"] == 42
    assert record["threads"] == {"intra_op": 1, "inter_op": 1}
    # The worker restarted itself so that PYTHONHASHSEED was in place when Python started.
    assert record["switches"]["environment"]["PYTHONHASHSEED_at_start"] == "42"
    assert record["dataset_fingerprint"] == smoke_dataset.fingerprint
    assert record["device"] == "cpu"
    assert [e["epoch"] for e in record["epochs"]] == [1, 2]
    assert all(e["val_iou"] is not None for e in record["epochs"])

    weights = load_file(run_dir / record["files"]["weights"])
    assert state_dict_sha256(weights) == record["weights_sha256"]
    assert any(name.endswith("running_mean") for name in weights)
    with np.load(run_dir / record["files"]["predictions"]) as archive:
        predictions = {case: archive[case] for case in archive.files}
    assert sorted(predictions) == sorted(smoke_dataset.test_cases)
    assert all(p.dtype == np.uint8 and p.shape == (16, 16, 16) for p in predictions.values())
    assert predictions_sha256(predictions) == record["predictions_sha256"]

    assert set(record["test"]["iou"]) == set(CLASS_NAMES) | {"mean"}
    assert len(record["test"]["volumes"]) == len(smoke_dataset.test_cases)
    assert [e["event"] for e in events] == ["epoch", "epoch", "finished"]
    assert events[-1]["record"] == str(run_dir / "record.json")


def test_thread_override_recorded(worker):
    (status, _, record), = worker.run([worker.spec("deterministic", threads={"intra_op": 2, "inter_op": 1})])
    assert status == 0
    assert record["threads"] == {"intra_op": 2, "inter_op": 1}
    assert record["environment"]["threads"]["torch_intra_op"] == 2


def test_failed_run_recorded(worker, tmp_path):
    spec = worker.spec("seed")
    spec["cache_dir"] = str(tmp_path / "no-such-cache")
    (status, events, record), = worker.run([spec])
    assert status == 1
    assert record["status"] == "failed"
    assert "no-such-cache" in record["error"]
    assert "\n" not in record["error"]
    assert events[-1]["event"] == "failed"
