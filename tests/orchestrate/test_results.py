"""Result tables built from run records: schemas, row order, atomic writes, pandas and DuckDB readers."""

from __future__ import annotations

import random

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from repro_lits.orchestrate import plan_runs
from repro_lits.orchestrate.runner import failure_record
from repro_lits.record import write_record
from repro_lits.results import (
    SCHEMAS,
    build_tables,
    describe_tables,
    load_tables,
    read_records,
    remove_table_leftovers,
    write_tables,
)


def write_failed_runs(experiment_dir, config, runs: int) -> list[str]:
    """Write failure records of ``runs`` runs per setup in shuffled order; return their run ids."""
    specs = plan_runs(config, setups=("random", "seed", "deterministic"), runs=runs)
    random.Random(7).shuffle(specs)
    for spec in specs:
        record = failure_record(
            spec, error="the worker process was killed by signal 9", dataset_fingerprint="f" * 64,
            started_at="2026-01-02T03:04:05+00:00", wall_time_s=1.5,
        )
        write_record(experiment_dir / "runs" / spec.run_id, record)
    return [spec.run_id for spec in specs]


def test_rows_sorted_by_setup_then_index(smoke_config, tmp_path):
    write_failed_runs(tmp_path, smoke_config, runs=3)
    runs = build_tables(read_records(tmp_path))["runs"].to_pandas()
    assert runs["run_id"].tolist() == [
        f"{setup}-{index:03d}" for setup in ("random", "seed", "deterministic") for index in range(3)
    ]


def test_failed_run_row_has_nulls(smoke_config, tmp_path):
    write_failed_runs(tmp_path, smoke_config, runs=1)
    runs = build_tables(read_records(tmp_path))["runs"].to_pandas()
    row = runs.iloc[0]
    assert row["status"] == "failed"
    assert row["error"] == "the worker process was killed by signal 9"
    assert pd.isna(row["iou_liver"])
    assert pd.isna(row["weights_sha256"])
    assert row["epochs"] == 0
    assert row["wall_time_s"] == 1.5
    assert row["started_at"] == pd.Timestamp("2026-01-02T03:04:05Z")


def test_tables_follow_declared_schemas(smoke_config, tmp_path):
    write_failed_runs(tmp_path, smoke_config, runs=1)
    paths = write_tables(tmp_path)
    for name, schema in SCHEMAS.items():
        written = pq.read_schema(paths[name])
        assert written.names == schema.names
        for field in schema:
            assert written.field(field.name).type == field.type, field.name
            assert written.field(field.name).nullable == field.nullable, field.name
            assert written.field(field.name).metadata == field.metadata, field.name


def test_empty_folder_gives_empty_tables(tmp_path):
    paths = write_tables(tmp_path)
    for name, path in paths.items():
        table = pq.read_table(path)
        assert table.num_rows == 0
        assert table.schema.names == SCHEMAS[name].names


def test_pandas_and_duckdb_read_same_rows(smoke_config, tmp_path):
    write_failed_runs(tmp_path, smoke_config, runs=2)
    paths = write_tables(tmp_path)
    frames = load_tables(tmp_path)
    runs_sql = duckdb.sql(f"SELECT run_id, status FROM read_parquet('{paths['runs']}')").fetchall()
    assert runs_sql == list(frames["runs"][["run_id", "status"]].itertuples(index=False, name=None))
    count = duckdb.sql(f"SELECT count(*) FROM read_parquet('{paths['runs']}') WHERE status = 'failed'").fetchall()[0][0]
    assert count == 6


def test_no_temporary_files_left(smoke_config, tmp_path):
    write_failed_runs(tmp_path, smoke_config, runs=1)
    write_tables(tmp_path)
    write_tables(tmp_path)
    assert sorted(path.name for path in tmp_path.glob(".table-*")) == []


def test_leftover_temporary_files_removed(tmp_path):
    (tmp_path / ".table-abc.parquet").write_bytes(b"partial")
    remove_table_leftovers(tmp_path)
    assert not (tmp_path / ".table-abc.parquet").exists()


def test_invalid_record_left_out(smoke_config, tmp_path, caplog):
    write_failed_runs(tmp_path, smoke_config, runs=1)
    (tmp_path / "runs" / "seed-000" / "record.json").write_text("{not json")
    runs = build_tables(read_records(tmp_path))["runs"].to_pandas()
    assert "seed-000" not in runs["run_id"].tolist()
    assert len(runs) == 2
    assert "not valid JSON" in caplog.text


def test_every_column_described():
    text = describe_tables()
    for name, schema in SCHEMAS.items():
        assert f"`{name}.parquet`" in text
        for field in schema:
            assert field.metadata[b"description"], field.name
            assert f"| `{field.name}` |" in text


@pytest.mark.parametrize("table", ["runs", "epochs"])
def test_time_and_memory_columns_carry_units(table):
    for name in SCHEMAS[table].names:
        if "time" in name and not name.endswith("_at"):
            assert name.endswith("_s"), name
        if "memory" in name:
            assert name.endswith("_mb"), name
