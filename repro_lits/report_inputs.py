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
        UserInputError: the folder is missing or empty, the experiment is not found, or several
            experiments exist and none was chosen.
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
    if (folder / RUNS_TABLE).is_file():
        runs = pd.read_parquet(folder / RUNS_TABLE)
        volumes = pd.read_parquet(folder / VOLUMES_TABLE) if (folder / VOLUMES_TABLE).is_file() else pd.DataFrame()
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
        source = f"{len(runs)} run records (no {RUNS_TABLE} yet)"
    if volumes.empty:
        volumes = pd.DataFrame(columns=["run_id", "setup", "run_index", "case", *[f"iou_{c}" for c in CLASS_NAMES]])

    config, environment, rule = _first_record_details(runs)
    return ExperimentResults(
        name=experiment, folder=folder, runs=runs, volumes=volumes, source=source, config=config,
        environment=environment, empty_class_rule=rule, skipped_records=tuple(skipped),
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
