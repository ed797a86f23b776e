"""Inputs of the report: an experiment's run and volume tables, its config, and the published study's runs.

The tables come from ``RESULTS/<experiment>/runs.parquet`` and ``volumes.parquet`` when
they exist. Otherwise :mod:`repro_lits.results` builds them in memory from the run records
``RESULTS/<experiment>/runs/<run_id>/record.json``, so a report also works before the
tables are written.
"""

from __future__ import annotations

import importlib.resources
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from repro_lits import results as results_tables
from repro_lits.errors import DataError, UserInputError
from repro_lits.record import RECORD_NAME, read_record
from repro_lits.stats import CLASS_NAMES

logger = logging.getLogger(__name__)

RECORD_FILE = RECORD_NAME
RUNS_TABLE = "runs.parquet"
VOLUMES_TABLE = "volumes.parquet"
PUBLISHED_RUNS_FILE = "mlf_core_published_runs.csv"

#: How to create results, named in every "no results" error.
RUN_HINT = "run `repro-lits run` first to train and record the runs"


@dataclass(frozen=True)
class ExperimentResults:
    """The recorded runs of one experiment.

    ``runs`` has one row per run (columns of ``runs.parquet``), ``volumes`` one row per run and
    test case. ``config`` and ``environment`` come from the first finished run's record and are
    ``None`` when no record could be read. ``skipped_records`` lists record files that could not
    be read.
    """

    name: str
    folder: Path
    runs: pd.DataFrame
    volumes: pd.DataFrame
    source: str
    config: dict[str, Any] | None = None
    environment: dict[str, Any] | None = None
    empty_class_rule: str | None = None
    skipped_records: tuple[str, ...] = field(default_factory=tuple)


def find_experiments(results_dir: Path) -> list[str]:
    """List the experiment folders under ``results_dir`` that contain a runs table or at least one run record."""
    if not results_dir.is_dir():
        return []
    names = []
    for folder in sorted(path for path in results_dir.iterdir() if path.is_dir()):
        if (folder / RUNS_TABLE).is_file() or any((folder / "runs").glob(f"*/{RECORD_FILE}")):
            names.append(folder.name)
    return names


def load_experiment_results(results_dir: Path, experiment: str | None = None) -> ExperimentResults:
    """Load the tables and the config of one experiment from a results folder.

    Without ``experiment`` the folder must contain exactly one experiment.

    Raises:
        UserInputError: the folder is missing or empty, the experiment is not found, several
            experiments exist and none was chosen, or the runs have more than one config hash.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UserInputError(f"results folder {results_dir} not found; {RUN_HINT}")
    available = find_experiments(results_dir)
    if not available:
        raise UserInputError(f"results folder {results_dir} contains no run records; {RUN_HINT}")
    if experiment is None:
        if len(available) > 1:
            raise UserInputError(
                f"results folder {results_dir} contains several experiments {available}; choose one with --experiment"
            )
        experiment = available[0]
    if experiment not in available:
        raise UserInputError(
            f"experiment {experiment!r} not found in {results_dir}; expected one of {available}, or {RUN_HINT}"
        )

    folder = results_dir / experiment
    record_paths = _record_paths(folder)
    skipped: list[str] = []
    tables = _read_tables(folder) if (folder / RUNS_TABLE).is_file() else None
    if tables is not None:
        runs, volumes = tables
        source = f"tables {RUNS_TABLE} and {VOLUMES_TABLE}"
        record_ids = {path.parent.name for path in record_paths}
        if record_ids and set(runs["run_id"]) != record_ids:
            # Runs finished after the tables were written, for example while runs are still being added.
            logger.info("%s lists %d runs but %d records exist; reading the records", RUNS_TABLE, len(runs),
                        len(record_ids))
            runs, volumes, skipped = _tables_from_records(folder, record_paths)
            source = f"{len(runs)} run records ({RUNS_TABLE} is out of date)"
    else:
        runs, volumes, skipped = _tables_from_records(folder, record_paths)
        state = "unreadable" if (folder / RUNS_TABLE).is_file() else "not written yet"
        source = f"{len(runs)} run records ({RUNS_TABLE} {state})"
    if volumes.empty:
        volumes = pd.DataFrame(columns=["run_id", "setup", "run_index", "case", *[f"iou_{c}" for c in CLASS_NAMES]])
    _reject_mixed_configs(folder, runs)

    config, environment, rule = _first_record_details(runs)
    return ExperimentResults(
        name=experiment, folder=folder, runs=runs, volumes=volumes, source=source, config=config,
        environment=environment, empty_class_rule=rule, skipped_records=tuple(skipped),
    )


def _read_tables(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Read the runs and volumes tables, or return None (logged) when one is unreadable or lacks columns.

    ``run_dir`` is set to the run folder under ``folder``, because the tables store absolute
    paths that are out of date once the results folder is moved or copied.
    """
    try:
        runs = pd.read_parquet(folder / RUNS_TABLE)
        volumes = pd.read_parquet(folder / VOLUMES_TABLE) if (folder / VOLUMES_TABLE).is_file() else pd.DataFrame()
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        logger.warning("cannot read the tables in %s (%s); reading the run records instead", folder, err)
        return None
    missing = [name for name in results_tables.RUNS_SCHEMA.names if name not in runs.columns]
    if not volumes.empty:
        missing += [name for name in results_tables.VOLUMES_SCHEMA.names if name not in volumes.columns]
    if missing:
        logger.warning("tables in %s lack columns %s; reading the run records instead", folder, missing[:5])
        return None
    runs["run_dir"] = [str((folder / "runs" / Path(run_dir).name).resolve()) for run_dir in runs["run_dir"]]
    return runs, volumes


def _reject_mixed_configs(folder: Path, runs: pd.DataFrame) -> None:
    """Raise UserInputError when the runs have more than one config hash, so no statistic mixes two configs."""
    if runs.empty or "config_hash" not in runs.columns:
        return
    folders = runs["run_dir"].map(lambda run_dir: Path(run_dir).name) if "run_dir" in runs.columns else runs["run_id"]
    groups = folders.groupby(runs["config_hash"]).apply(sorted)
    if len(groups) < 2:
        return
    listed = "; ".join(
        f"{config_hash[:12]}: {', '.join(run_ids[:3])}" + (f" and {len(run_ids) - 3} more" if len(run_ids) > 3 else "")
        for config_hash, run_ids in groups.items()
    )
    raise UserInputError(
        f"{folder}: runs of {len(groups)} different configs ({listed}); expected one config hash per experiment "
        "folder; move the runs of the other configs into another results folder"
    )


def _record_paths(folder: Path) -> list[Path]:
    """List ``runs/*/record.json`` of an experiment folder, leaving out hidden run folders as the tables do."""
    return [path for path in sorted((folder / "runs").glob(f"*/{RECORD_FILE}")) if not path.parent.name.startswith(".")]


def _tables_from_records(folder: Path, record_paths: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Build the runs and volumes tables from the records; also return the record files that could not be read."""
    records = results_tables.read_records(folder)
    tables = results_tables.build_tables(records)
    read = {Path(record["run_dir"]).name for record in records}
    skipped = [str(path) for path in record_paths if path.parent.name not in read]
    return tables["runs"].to_pandas(), tables["volumes"].to_pandas(), skipped


def load_published_runs() -> pd.DataFrame:
    """Read the published study's per-run test IoU, shipped as package data, as a runs table.

    The study trained on LiTS for 1201 epochs with batch size 4 on two GPUs
    (DistributedDataParallel). Columns: setup, run_id (the study's MLflow run id), run_index,
    status, iou_background, iou_liver, iou_tumor, iou_mean.
    """
    resource = importlib.resources.files("repro_lits").joinpath("reference", PUBLISHED_RUNS_FILE)
    with resource.open("r", encoding="utf-8") as handle:
        table = pd.read_csv(handle)
    missing = {"setup", "mlflow_run_id", "iou_background", "iou_liver", "iou_tumor", "mean_iou"} - set(table.columns)
    if missing:
        raise DataError(f"package data {PUBLISHED_RUNS_FILE} lacks columns {sorted(missing)}; reinstall repro-lits")
    table = table.rename(columns={"mlflow_run_id": "run_id", "mean_iou": "iou_mean"})
    table["run_index"] = table.groupby("setup").cumcount()
    table["status"] = "finished"
    return table


def _first_record_details(runs: pd.DataFrame) -> tuple[dict | None, dict | None, str | None]:
    """Read config, environment and empty-class rule from the first finished run's record."""
    if runs.empty or "run_dir" not in runs.columns:
        return None, None, None
    ordered = runs
    if "status" in runs.columns:
        ordered = pd.concat([runs[runs["status"] == "finished"], runs[runs["status"] != "finished"]])
    for run_dir in ordered["run_dir"]:
        try:
            record = read_record(Path(run_dir))
        except UserInputError as err:
            logger.debug("cannot read the config from %s: %s", run_dir, err)
            continue
        rule = (record.get("test") or {}).get("empty_class_rule")
        return record.get("config"), record.get("environment"), rule
    return None, None, None
