"""Run an experiment end to end: resolve the data, bind the results folder, pick the executor, run, summarise."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from repro_lits.config import ExperimentConfig, config_from_dict
from repro_lits.errors import UserInputError
from repro_lits.orchestrate.claims import STALE_AFTER_S
from repro_lits.orchestrate.plan import bind_experiment, check_dataset, expand_setups, layout_for, plan_runs
from repro_lits.orchestrate.runner import (
    LocalExecutor,
    Orchestrator,
    RunEventCallback,
    RunOutcome,
    SetupSummary,
    summarise,
)
from repro_lits.results import table_paths

logger = logging.getLogger(__name__)

#: Paths that exist on Linux when an NVIDIA (CUDA) or AMD (ROCm) GPU driver is loaded.
GPU_DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/kfd")

#: Values of ``--backend``.
BACKENDS = ("local", "dask")


@dataclass(frozen=True)
class ExperimentResult:
    """Result of :func:`run_experiment`.

    Attributes:
        experiment_dir: ``RESULTS/<experiment name>``.
        tables: table name (``runs``, ``volumes``, ``epochs``) -> parquet path.
        outcomes: one per planned run, in plan order.
        summaries: one per requested setup, counted from the published records.
        jobs: runs that were in flight at once.
    """

    experiment_dir: Path
    tables: dict[str, Path]
    outcomes: list[RunOutcome]
    summaries: list[SetupSummary]
    jobs: int

    @property
    def complete(self) -> bool:
        """True when every requested run is published and finished."""
        return all(summary.finished == summary.requested for summary in self.summaries)


def with_data_source(config: ExperimentConfig, data: str | Path | None) -> ExperimentConfig:
    """Return ``config`` with ``data.source`` set to ``synthetic`` or to the absolute path of a dataset folder.

    The path is made absolute so that the config hash does not depend on the
    working directory. ``None`` keeps the experiment's own source.
    """
    if data is None:
        return config
    if str(data) == "synthetic":
        source = "synthetic"
    else:
        path = Path(data).expanduser().resolve()
        if not path.is_dir():
            raise UserInputError(f"--data {data}: folder not found; expected 'synthetic' or a dataset folder")
        source = str(path)
    values = config.to_dict()
    values["data"]["source"] = source
    rebuilt = config_from_dict(values, origin=str(config.source or "config"))
    return ExperimentConfig(values=rebuilt.values, source=config.source)


def cpu_count() -> int:
    """Return the number of CPU cores this process may use (its affinity mask, which cgroup limits shape)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not available on macOS
        return os.cpu_count() or 1


def cuda_devices(config: ExperimentConfig) -> list[str]:
    """Return the CUDA device ids runs are pinned to: empty for CPU runs or when no CUDA device is visible.

    Ids come from the orchestrator's ``CUDA_VISIBLE_DEVICES`` when it is set,
    so that a run pinned to an id gets a device the user selected.
    """
    if config.run["device"] == "cpu":
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [device.strip() for device in visible.split(",") if device.strip() and device.strip() != "-1"]

    if sys.platform.startswith("linux") and not any(Path(p).exists() for p in GPU_DRIVER_PATHS):
        return []

    import torch  # imported here, only where a GPU driver exists: importing torch takes seconds

    # device_count() queries NVML where it can and creates no CUDA context, so the
    # worker processes still start from a clean state.
    return [str(index) for index in range(torch.cuda.device_count())]


def default_jobs(config: ExperimentConfig, devices: list[str]) -> int:
    """Return runs in flight at once: one per CUDA device, else CPU cores divided by a run's threads."""
    if devices:
        return len(devices)
    return max(1, cpu_count() // config.run["threads"])


def run_experiment(
    config: ExperimentConfig,
    *,
    setup: str = "all",
    runs: int,
    results_dir: Path | str = Path("results"),
    cache_dir: Path | None = None,
    dataset_fingerprint: str | None = None,
    jobs: int | None = None,
    backend: str = "local",
    scheduler: str | None = None,
    on_event: RunEventCallback | None = None,
    stale_after_s: float = STALE_AFTER_S,
) -> ExperimentResult:
    """Make ``runs`` runs of each requested setup exist in ``results_dir/<experiment name>`` and rebuild the tables.

    Finished runs are kept; missing, failed and interrupted ones are run, each
    in a fresh process. The dataset is prepared (or its cache reused) in
    ``results_dir/.cache`` unless ``cache_dir`` names a prepared dataset.

    Args:
        config: the resolved experiment; ``data.source`` selects the data.
        setup: ``random``, ``seed``, ``deterministic`` or ``all``.
        runs: runs per setup; run indices are ``0 .. runs-1``.
        jobs: runs in flight at once; default :func:`default_jobs`, or the
            cluster's worker threads with the Dask backend.
        backend: ``local`` or ``dask`` (then ``scheduler`` is the scheduler address).
        on_event: progress callback, called from several threads.
        stale_after_s: a claim whose heartbeat is older than this is taken over.

    Raises:
        UserInputError: invalid options, or a results folder of another config or dataset.
    """
    setups = expand_setups(setup)
    specs = plan_runs(config, setups=setups, runs=runs)
    if backend not in BACKENDS:
        raise UserInputError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "dask" and not scheduler:
        raise UserInputError("--backend dask needs --scheduler ADDRESS, for example --scheduler tcp://HOST:8786")
    if jobs is not None and jobs < 1:
        raise UserInputError(f"--jobs {jobs}: expected 1 or more runs in flight")

    # Absolute, because Dask workers resolve the staging paths in their own working directory.
    layout = layout_for(Path(results_dir).resolve(), config)
    bind_experiment(layout, config)
    if cache_dir is None:
        from repro_lits.data.cache import ensure_dataset

        dataset = ensure_dataset(config, cache_root=Path(results_dir) / ".cache")
        cache_dir, dataset_fingerprint = dataset.root, dataset.fingerprint
    if dataset_fingerprint is not None:
        check_dataset(layout, dataset_fingerprint)

    executor, jobs = _make_executor(config, backend, scheduler, jobs)
    logger.info(
        "experiment %s (config %s): %d runs of %s, %d in flight, results in %s",
        config.name, config.config_hash[:12], runs, "/".join(setups), jobs, layout.root,
    )
    try:
        orchestrator = Orchestrator(
            layout=layout, specs=specs, cache_dir=Path(cache_dir).resolve(), dataset_fingerprint=dataset_fingerprint,
            executor=executor, jobs=jobs, on_event=on_event, stale_after_s=stale_after_s,
        )
        outcomes = orchestrator.run()
    finally:
        close = getattr(executor, "close", None)
        if close is not None:
            close()

    return ExperimentResult(
        experiment_dir=layout.root, tables=table_paths(layout.root), outcomes=outcomes,
        summaries=summarise(layout, specs), jobs=jobs,
    )


def _make_executor(config: ExperimentConfig, backend: str, scheduler: str | None, jobs: int | None):
    if backend == "dask":
        from repro_lits.orchestrate.dask_backend import DaskExecutor, connect

        executor = DaskExecutor(connect(scheduler))
        return executor, jobs or executor.default_jobs()
    devices = cuda_devices(config)
    return LocalExecutor(devices), jobs or default_jobs(config, devices)
