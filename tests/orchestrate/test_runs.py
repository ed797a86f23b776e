"""Local orchestration with real worker processes: records, resumption, growth, failures, claims held elsewhere."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import duckdb
import pandas as pd
import pytest

from repro_lits.orchestrate import (
    ClaimStore,
    LocalExecutor,
    Orchestrator,
    Owner,
    RunEvent,
    layout_for,
    plan_runs,
    run_experiment,
)
from repro_lits.record import read_record

pytestmark = pytest.mark.slow


def test_study_records_every_run(local_study):
    assert [outcome.status for outcome in local_study.outcomes] == ["finished"] * 3
    runs_dir = local_study.experiment_dir / "runs"
    assert sorted(path.name for path in runs_dir.iterdir()) == ["deterministic-000", "random-000", "seed-000"]
    for run_dir in runs_dir.iterdir():
        record = read_record(run_dir)
        assert record["status"] == "finished"
        assert (run_dir / "weights.safetensors").is_file()
        assert not (run_dir / "worker_spec.json").exists()


def test_study_leaves_no_claims_or_staging(local_study):
    root = local_study.experiment_dir
    assert [path.name for path in (root / ".claims").iterdir()] == [".lock"]
    assert list((root / ".staging").iterdir()) == []
    assert list((root / ".trash").iterdir()) == []


def test_seeded_setups_match(local_study):
    summaries = {summary.setup: summary for summary in local_study.summaries}
    assert summaries["seed"].finished == 1
    hashes = {outcome.run_id: outcome.weights_sha256 for outcome in local_study.outcomes}
    # seed and deterministic seed every generator with run.seed, so on one CPU thread they train alike.
    assert hashes["seed-000"] == hashes["deterministic-000"]


def test_tables_match_records(local_study):
    tables = {name: pd.read_parquet(path) for name, path in local_study.tables.items()}
    runs = tables["runs"]
    assert runs["run_id"].tolist() == ["random-000", "seed-000", "deterministic-000"]
    for row in runs.itertuples():
        record = read_record(row.run_dir)
        assert row.weights_sha256 == record["weights_sha256"]
        liver = record["test"]["iou"]["liver"]
        if liver is None:
            assert pd.isna(row.iou_liver)
        else:
            assert row.iou_liver == pytest.approx(liver)
        assert row.epochs == 1
        assert row.torch_version == record["environment"]["torch"]["version"]
    test_cases = len(read_record(runs["run_dir"][0])["test"]["volumes"])
    assert len(tables["volumes"]) == 3 * test_cases
    assert len(tables["epochs"]) == 3


def test_duckdb_reads_tables(local_study):
    runs_path = local_study.tables["runs"]
    rows = duckdb.sql(
        f"SELECT setup, count(*) AS n, count(DISTINCT weights_sha256) AS hashes "
        f"FROM read_parquet('{runs_path}') GROUP BY setup ORDER BY setup"
    ).fetchall()
    assert rows == [("deterministic", 1, 1), ("random", 1, 1), ("seed", 1, 1)]
    volumes = duckdb.sql(f"SELECT count(*) FROM read_parquet('{local_study.tables['volumes']}')").fetchall()
    assert volumes[0][0] > 0


def test_rerun_skips_finished_runs(local_study, smoke_config, prepared):
    events: list[RunEvent] = []
    result = run_experiment(
        smoke_config, setup="all", runs=1, results_dir=local_study.experiment_dir.parent,
        cache_dir=prepared.root, dataset_fingerprint=prepared.fingerprint, jobs=2, on_event=events.append,
    )
    assert [event.kind for event in events] == ["skipped"] * 3
    assert [outcome.status for outcome in result.outcomes] == ["skipped"] * 3


def test_more_runs_adds_only_new(local_study, smoke_config, prepared, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(local_study.experiment_dir.parent, results)
    events: list[RunEvent] = []
    result = run_experiment(
        smoke_config, setup="deterministic", runs=2, results_dir=results, cache_dir=prepared.root,
        dataset_fingerprint=prepared.fingerprint, jobs=2, on_event=events.append,
    )
    started = [event.run_id for event in events if event.kind == "started"]
    assert started == ["deterministic-001"]
    assert [(o.run_id, o.status) for o in result.outcomes] == [
        ("deterministic-000", "skipped"), ("deterministic-001", "finished"),
    ]
    assert len(pd.read_parquet(result.tables["runs"])) == 4
    hashes = {outcome.weights_sha256 for outcome in result.outcomes}
    assert len(hashes) == 1, "deterministic runs of one config must have equal weights"


def test_run_claimed_elsewhere_left_alone(local_study, smoke_config, prepared, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(local_study.experiment_dir.parent, results)
    layout = layout_for(results, smoke_config)
    # A live claim: this test process plays another orchestrator on this host.
    ClaimStore(layout.claims_dir, owner=Owner.current()).acquire("seed-001")

    result = run_experiment(
        smoke_config, setup="seed", runs=2, results_dir=results, cache_dir=prepared.root,
        dataset_fingerprint=prepared.fingerprint, jobs=1,
    )
    statuses = {outcome.run_id: outcome.status for outcome in result.outcomes}
    assert statuses == {"seed-000": "skipped", "seed-001": "busy"}
    assert result.summaries[0].missing == 1
    assert not layout.record_path("seed-001").exists()


def test_stale_claim_taken_over(local_study, smoke_config, prepared, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(local_study.experiment_dir.parent, results)
    layout = layout_for(results, smoke_config)
    claims = ClaimStore(layout.claims_dir)
    remote = Owner(host="gone-node.invalid", pid=4242, start_time=1.0)
    ClaimStore(layout.claims_dir, owner=remote).acquire("seed-001")
    path = claims.path("seed-001")
    content = json.loads(path.read_text())
    content["heartbeat_at"] = time.time() - 3600.0
    path.write_text(json.dumps(content))
    (layout.staging_dir / f"seed-001.{content['token']}").mkdir()

    result = run_experiment(
        smoke_config, setup="seed", runs=2, results_dir=results, cache_dir=prepared.root,
        dataset_fingerprint=prepared.fingerprint, jobs=1,
    )
    assert {o.run_id: o.status for o in result.outcomes} == {"seed-000": "skipped", "seed-001": "finished"}
    assert list(layout.staging_dir.iterdir()) == []


def test_failing_run_recorded_others_finish(smoke_config, prepared, tmp_path):
    def kill_seed_001(event: RunEvent) -> None:
        if event.kind == "started" and event.run_id == "seed-001":
            os.kill(event.pid, signal.SIGKILL)

    result = run_experiment(
        smoke_config, setup="seed", runs=3, results_dir=tmp_path, cache_dir=prepared.root,
        dataset_fingerprint=prepared.fingerprint, jobs=2, on_event=kill_seed_001,
    )
    statuses = {outcome.run_id: outcome.status for outcome in result.outcomes}
    assert statuses == {"seed-000": "finished", "seed-001": "failed", "seed-002": "finished"}
    record = read_record(tmp_path / "smoke" / "runs" / "seed-001")
    assert record["status"] == "failed"
    assert "killed by signal 9" in record["error"]
    runs = pd.read_parquet(result.tables["runs"])
    assert runs.set_index("run_id")["status"].to_dict() == statuses
    assert result.summaries[0].failed == 1


def test_runs_pinned_to_own_device(smoke_config, prepared, tmp_path):
    # Device ids that exist on no machine: PyTorch then finds no CUDA device and the
    # runs train on the CPU, but each worker still gets the id it was pinned to.
    layout = layout_for(tmp_path, smoke_config)
    pinned: dict[str, str] = {}
    executor = LocalExecutor(devices=["91", "92"])
    orchestrator = Orchestrator(
        layout=layout, specs=plan_runs(smoke_config, setups=("seed",), runs=2), cache_dir=prepared.root,
        dataset_fingerprint=prepared.fingerprint, executor=executor, jobs=2,
    )
    outcomes = orchestrator.run()

    assert [outcome.status for outcome in outcomes] == ["finished", "finished"]
    for outcome in outcomes:
        record = read_record(layout.run_dir(outcome.run_id))
        pinned[outcome.run_id] = record["environment"]["variables"]["CUDA_VISIBLE_DEVICES"]
    assert sorted(pinned.values()) == ["91", "92"]
