"""Orchestration of many runs: run specs, claims, fresh worker processes (locally or on Dask), resumption.

``run_experiment`` is the entry point. Each submodule has one job:

- ``plan``: run specs, the results folder layout, and which runs are finished;
- ``claims``: which orchestrator runs which run;
- ``process``: one run in a fresh process;
- ``runner``: claim, execute, publish, rebuild the tables;
- ``dask_backend``: runs as tasks on a Dask cluster;
- ``experiment``: the whole job, from data to summary.
"""

from repro_lits.orchestrate.claims import STALE_AFTER_S, Claim, ClaimStore, Owner
from repro_lits.orchestrate.experiment import (
    BACKENDS,
    ExperimentResult,
    cpu_count,
    cuda_devices,
    default_jobs,
    run_experiment,
    with_data_source,
)
from repro_lits.orchestrate.plan import (
    SETUPS,
    ExperimentLayout,
    RunSpec,
    expand_setups,
    layout_for,
    plan_runs,
    published_records,
    run_id_for,
)
from repro_lits.orchestrate.runner import LocalExecutor, Orchestrator, RunEvent, RunOutcome, SetupSummary, summarise

__all__ = [
    "BACKENDS", "SETUPS", "STALE_AFTER_S", "Claim", "ClaimStore", "ExperimentLayout", "ExperimentResult",
    "LocalExecutor", "Orchestrator", "Owner", "RunEvent", "RunOutcome", "RunSpec", "SetupSummary",
    "cpu_count", "cuda_devices", "default_jobs", "expand_setups", "layout_for", "plan_runs", "published_records",
    "run_experiment", "run_id_for", "summarise", "with_data_source",
]
