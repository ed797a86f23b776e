"""The Dask backend on a real LocalCluster with two worker processes on the loopback interface."""

from __future__ import annotations

import pytest

from repro_lits.errors import UserInputError
from repro_lits.orchestrate import RunEvent, run_experiment
from repro_lits.orchestrate.dask_backend import connect

@pytest.mark.slow
def test_dask_runs_match_local_hashes(local_study, smoke_config, prepared, tmp_path):
    distributed = pytest.importorskip("distributed")
    events: list[RunEvent] = []
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
    ) as cluster:
        result = run_experiment(
            smoke_config, setup="deterministic", runs=2, results_dir=tmp_path, cache_dir=prepared.root,
            dataset_fingerprint=prepared.fingerprint, backend="dask", scheduler=cluster.scheduler_address,
            on_event=events.append,
        )

    local_hash = {outcome.run_id: outcome.weights_sha256 for outcome in local_study.outcomes}["deterministic-000"]
    assert result.jobs == 2
    assert [outcome.status for outcome in result.outcomes] == ["finished", "finished"]
    assert [outcome.weights_sha256 for outcome in result.outcomes] == [local_hash, local_hash]
    assert {event.run_id for event in events if event.kind == "epoch"} == {"deterministic-000", "deterministic-001"}
    assert (tmp_path / "smoke" / "runs.parquet").is_file()


def test_unreachable_scheduler_rejected():
    pytest.importorskip("distributed")
    with pytest.raises(UserInputError, match="cannot connect to the Dask scheduler"):
        connect("tcp://127.0.0.1:9", timeout_s=1.0)


def test_dask_without_scheduler_rejected(smoke_config, tmp_path):
    with pytest.raises(UserInputError, match="needs --scheduler"):
        run_experiment(
            smoke_config, setup="seed", runs=1, results_dir=tmp_path, cache_dir=tmp_path, backend="dask",
        )
