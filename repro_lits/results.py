"""Result tables of an experiment, rebuilt from its run records: ``runs``, ``volumes`` and ``epochs`` (Parquet).

The records under ``RESULTS/<experiment>/runs/<run_id>/record.json`` are the
single source of truth; the tables are derived from them and rewritten in
full. Each table has an explicit Arrow schema (column types, units in column
names, a description per column in the field metadata) and a stable row
order: setup (random, seed, deterministic), run index, then epoch or case.
Each file is written to a temporary file, flushed with fsync and renamed over
the old one, under a lock on ``.tables.lock``, so readers see either the old
or the new table and concurrent orchestrators leave the newest one.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from repro_lits.errors import UserInputError
from repro_lits.record import CLASS_NAMES, RECORD_NAME, read_record

logger = logging.getLogger(__name__)

#: Setups in table order; a setup not listed here sorts after them by name.
SETUP_ORDER = ("random", "seed", "deterministic")

#: Per-class metric keys of a record's test section (classes plus their mean).
METRIC_CLASSES = (*CLASS_NAMES, "mean")

TABLE_NAMES = ("runs", "volumes", "epochs")
_LOCK_NAME = ".tables.lock"
_TEMP_PREFIX = ".table-"


def _field(name: str, dtype: pa.DataType, description: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, dtype, nullable=nullable, metadata={"description": description})


def _run_key_fields() -> list[pa.Field]:
    return [
        _field("experiment", pa.string(), "experiment name (experiment.name)", nullable=False),
        _field("setup", pa.string(), "random, seed or deterministic", nullable=False),
        _field("run_index", pa.int32(), "0-based run index within the setup", nullable=False),
        _field("run_id", pa.string(), "<setup>-<run index, 3 digits>, the run folder's name", nullable=False),
    ]


def _per_class(prefix: str, description: str, classes: tuple[str, ...] = METRIC_CLASSES) -> list[pa.Field]:
    fields = []
    for name in classes:
        which = "three classes (mean)" if name == "mean" else f"class {name}"
        fields.append(_field(f"{prefix}_{name}", pa.float64(), description.format(which=which)))
    return fields


RUNS_SCHEMA = pa.schema([
    *_run_key_fields(),
    _field("status", pa.string(), "finished or failed", nullable=False),
    _field("error", pa.string(), "one-line error of a failed run, else null"),
    *_per_class("iou", "test IoU of the {which}, study definition: mean over test volumes of the per-volume IoU"),
    *_per_class("pooled_iou", "test IoU of the {which}, over all test voxels pooled"),
    *_per_class("dice", "test Dice of the {which}, over all test voxels pooled"),
    _field("weights_sha256", pa.string(), "SHA-256 (hex) of the final weights"),
    _field("predictions_sha256", pa.string(), "SHA-256 (hex) of the test predictions"),
    _field("epochs", pa.int32(), "epochs trained (recorded epoch entries)"),
    _field("final_loss", pa.float64(), "mean training loss of the last epoch"),
    _field("wall_time_s", pa.float64(), "wall time of the whole run in the worker process, seconds"),
    _field("train_time_s", pa.float64(), "wall time of the training loop, seconds"),
    _field("peak_memory_mb", pa.float64(), "peak resident memory of the worker process, MiB"),
    _field("peak_gpu_memory_mb", pa.float64(), "peak CUDA memory allocated by PyTorch, MiB; null on CPU"),
    _field("device", pa.string(), "device the run trained on, e.g. cpu or cuda:0"),
    _field("threads", pa.int32(), "PyTorch intra-op CPU threads"),
    _field("interop_threads", pa.int32(), "PyTorch inter-op CPU threads"),
    _field("seed_mode", pa.string(), "set (seeds chosen by the setup) or observed (random setup)"),
    _field("run_seed", pa.int64(), "the setup's seed; null in the random setup"),
    _field("torch_initial_seed", pa.uint64(), "torch.initial_seed() after seeding"),
    _field("numpy_seed", pa.uint64(), "seed given to numpy.random.seed"),
    _field("python_seed", pa.uint64(), "seed given to random.seed"),
    _field("loader_seed", pa.uint64(), "seed of the training DataLoader's generator"),
    _field("python_hash_seed", pa.string(), "PYTHONHASHSEED of the worker process; null when not set"),
    _field("torch_version", pa.string(), "torch.__version__ in the worker"),
    _field("hostname", pa.string(), "host the worker ran on"),
    _field("package_version", pa.string(), "repro-lits version"),
    _field("git_commit", pa.string(), "git commit of the repro-lits checkout; null outside a checkout"),
    _field("dataset_fingerprint", pa.string(), "SHA-256 (hex) identifying the prepared dataset"),
    _field("config_hash", pa.string(), "SHA-256 (hex) of the resolved experiment config", nullable=False),
    _field("started_at", pa.timestamp("ms", tz="UTC"), "start of the run"),
    _field("finished_at", pa.timestamp("ms", tz="UTC"), "end of the run"),
    _field("run_dir", pa.string(), "absolute path of the run folder (record, weights, predictions)", nullable=False),
])

VOLUMES_SCHEMA = pa.schema([
    *_run_key_fields(),
    _field("case", pa.string(), "test case id, e.g. 17 for LiTS volume-17", nullable=False),
    *_per_class("iou", "IoU of the {which} in this volume; null where the class is absent from prediction and truth",
                classes=CLASS_NAMES),
    *[_field(f"true_voxels_{name}", pa.int64(), f"voxels labelled {name} in the ground truth, count")
      for name in CLASS_NAMES],
    *[_field(f"predicted_voxels_{name}", pa.int64(), f"voxels predicted as {name}, count") for name in CLASS_NAMES],
])

EPOCHS_SCHEMA = pa.schema([
    *_run_key_fields(),
    _field("epoch", pa.int32(), "1-based epoch number", nullable=False),
    _field("loss", pa.float64(), "mean focal loss over the epoch's training batches"),
    _field("learning_rate", pa.float64(), "learning rate during the epoch"),
    _field("wall_time_s", pa.float64(), "wall time of the epoch's training, seconds"),
    _field("weights_sha256", pa.string(), "SHA-256 (hex) of the weights after the epoch"),
    *_per_class("val_iou", "validation IoU of the {which} (study definition) after the epoch; null when not validated"),
])

SCHEMAS = {"runs": RUNS_SCHEMA, "volumes": VOLUMES_SCHEMA, "epochs": EPOCHS_SCHEMA}


def table_paths(experiment_dir: Path) -> dict[str, Path]:
    """Return table name -> ``experiment_dir/<name>.parquet``."""
    return {name: Path(experiment_dir) / f"{name}.parquet" for name in TABLE_NAMES}


def read_records(experiment_dir: Path) -> list[dict[str, Any]]:
    """Read every run record of an experiment folder; unreadable records are logged and left out."""
    records = []
    runs_dir = Path(experiment_dir) / "runs"
    if not runs_dir.is_dir():
        return records
    for path in sorted(runs_dir.glob(f"*/{RECORD_NAME}")):
        if path.parent.name.startswith("."):
            continue
        try:
            record = read_record(path)
        except UserInputError as err:
            logger.warning("leaving out of the tables: %s", err)
            continue
        record["run_dir"] = str(path.parent.resolve())
        records.append(record)
    return records


def build_tables(records: list[dict[str, Any]]) -> dict[str, pa.Table]:
    """Build the three tables from run records (each with ``run_dir`` set), sorted in table order."""
    ordered = sorted(records, key=_run_sort_key)
    runs = [_run_row(record) for record in ordered]
    volumes = [row for record in ordered for row in _volume_rows(record)]
    epochs = [row for record in ordered for row in _epoch_rows(record)]
    return {
        "runs": pa.Table.from_pylist(runs, schema=RUNS_SCHEMA),
        "volumes": pa.Table.from_pylist(volumes, schema=VOLUMES_SCHEMA),
        "epochs": pa.Table.from_pylist(epochs, schema=EPOCHS_SCHEMA),
    }


def write_tables(experiment_dir: Path) -> dict[str, Path]:
    """Rebuild ``runs``, ``volumes`` and ``epochs`` parquet files from the records; return their paths."""
    experiment_dir = Path(experiment_dir)
    experiment_dir.mkdir(parents=True, exist_ok=True)
    paths = table_paths(experiment_dir)
    with _tables_lock(experiment_dir):
        tables = build_tables(read_records(experiment_dir))
        for name, table in tables.items():
            _write_atomically(table, paths[name])
    logger.debug("tables rebuilt in %s (%d runs)", experiment_dir, tables["runs"].num_rows)
    return paths


def load_tables(experiment_dir: Path) -> dict[str, pd.DataFrame]:
    """Read the three tables of an experiment folder as pandas DataFrames."""
    tables = {}
    for name, path in table_paths(experiment_dir).items():
        if not path.is_file():
            raise UserInputError(f"table {path} not found; run `repro-lits run` to create the tables")
        tables[name] = pd.read_parquet(path)
    return tables


def remove_table_leftovers(experiment_dir: Path) -> None:
    """Delete temporary table files left by a writer that died before its rename."""
    experiment_dir = Path(experiment_dir)
    if not experiment_dir.is_dir():
        return
    with _tables_lock(experiment_dir):
        for path in experiment_dir.glob(f"{_TEMP_PREFIX}*"):
            path.unlink(missing_ok=True)


def describe_tables(schemas: dict[str, pa.Schema] = SCHEMAS) -> str:
    """Return a Markdown description of every table: column, Arrow type and meaning."""
    parts = []
    for name, schema in schemas.items():
        parts.append(f"`{name}.parquet`\n\n| column | type | meaning |\n|---|---|---|")
        for field in schema:
            description = field.metadata[b"description"].decode("utf-8")
            parts.append(f"| `{field.name}` | {field.type} | {description} |")
        parts.append("")
    return "\n".join(parts)


def _run_sort_key(record: dict[str, Any]) -> tuple[int, str, int]:
    setup = record["setup"]
    rank = SETUP_ORDER.index(setup) if setup in SETUP_ORDER else len(SETUP_ORDER)
    return (rank, setup, int(record["run_index"]))


def _key_columns(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "experiment": record["experiment"],
        "setup": record["setup"],
        "run_index": int(record["run_index"]),
        "run_id": record["run_id"],
    }


def _run_row(record: dict[str, Any]) -> dict[str, Any]:
    test = record.get("test") or {}
    seeds = record.get("seeds") or {}
    threads = record.get("threads") or {}
    environment = record.get("environment") or {}
    epochs = record.get("epochs") or []
    row = {
        **_key_columns(record),
        "status": record["status"],
        "error": record.get("error"),
        "weights_sha256": record.get("weights_sha256"),
        "predictions_sha256": record.get("predictions_sha256"),
        "epochs": len(epochs),
        "final_loss": epochs[-1].get("loss") if epochs else None,
        "wall_time_s": record.get("wall_time_s"),
        "train_time_s": record.get("train_time_s"),
        "peak_memory_mb": record.get("peak_memory_mb"),
        "peak_gpu_memory_mb": record.get("peak_gpu_memory_mb"),
        "device": record.get("device"),
        "threads": threads.get("intra_op"),
        "interop_threads": threads.get("inter_op"),
        "seed_mode": seeds.get("mode"),
        "run_seed": seeds.get("run_seed"),
        "torch_initial_seed": seeds.get("torch_initial_seed"),
        "numpy_seed": seeds.get("numpy_seed"),
        "python_seed": seeds.get("python_seed"),
        "loader_seed": seeds.get("loader_seed"),
        "python_hash_seed": _optional_str(seeds.get("python_hash_seed")),
        "torch_version": (environment.get("torch") or {}).get("version"),
        "hostname": environment.get("hostname"),
        "package_version": record.get("package_version"),
        "git_commit": record.get("git_commit"),
        "dataset_fingerprint": record.get("dataset_fingerprint"),
        "config_hash": record["config_hash"],
        "started_at": _timestamp(record.get("started_at")),
        "finished_at": _timestamp(record.get("finished_at")),
        "run_dir": record["run_dir"],
    }
    for metric in ("iou", "pooled_iou", "dice"):
        values = test.get(metric) or {}
        for name in METRIC_CLASSES:
            row[f"{metric}_{name}"] = values.get(name)
    return row


def _volume_rows(record: dict[str, Any]) -> Iterator[dict[str, Any]]:
    test = record.get("test") or {}
    for volume in test.get("volumes") or []:
        row = {**_key_columns(record), "case": str(volume["case"])}
        for name in CLASS_NAMES:
            row[f"iou_{name}"] = (volume.get("iou") or {}).get(name)
            row[f"true_voxels_{name}"] = (volume.get("true_voxels") or {}).get(name)
            row[f"predicted_voxels_{name}"] = (volume.get("predicted_voxels") or {}).get(name)
        yield row


def _epoch_rows(record: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for entry in record.get("epochs") or []:
        validation = entry.get("val_iou") or {}
        row = {
            **_key_columns(record),
            "epoch": int(entry["epoch"]),
            "loss": entry.get("loss"),
            "learning_rate": entry.get("learning_rate"),
            "wall_time_s": entry.get("wall_time_s"),
            "weights_sha256": entry.get("weights_sha256"),
        }
        for name in METRIC_CLASSES:
            row[f"val_iou_{name}"] = validation.get(name)
        yield row


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _timestamp(value: Any) -> datetime | None:
    """Parse an ISO-8601 time from a record; None when missing or invalid (logged)."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        logger.warning("invalid time %r in a run record; stored as null", value)
        return None


def _write_atomically(table: pa.Table, path: Path) -> None:
    handle, temp_name = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=".parquet", dir=path.parent)
    os.close(handle)
    try:
        pq.write_table(table, temp_name)
        with open(temp_name, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


@contextmanager
def _tables_lock(experiment_dir: Path) -> Iterator[None]:
    with open(experiment_dir / _LOCK_NAME, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def column_descriptions(name: str) -> dict[str, str]:
    """Return column -> description of one table (``runs``, ``volumes`` or ``epochs``)."""
    if name not in SCHEMAS:
        raise UserInputError(f"unknown table {name!r}; expected one of {', '.join(TABLE_NAMES)}")
    return {field.name: field.metadata[b"description"].decode("utf-8") for field in SCHEMAS[name]}


__all__ = [
    "EPOCHS_SCHEMA", "RUNS_SCHEMA", "SCHEMAS", "TABLE_NAMES", "VOLUMES_SCHEMA", "build_tables",
    "column_descriptions", "describe_tables", "load_tables", "read_records", "remove_table_leftovers",
    "table_paths", "write_tables",
]

