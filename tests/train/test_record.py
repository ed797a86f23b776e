"""Tests of writing and reading run records."""

import json

import pytest

from repro_lits.errors import UserInputError
from repro_lits.record import RECORD_NAME, REQUIRED_KEYS, read_record, write_record


def _failed_record() -> dict:
    record = {key: None for key in REQUIRED_KEYS}
    record.update(schema_version=1, status="failed", error="RuntimeError: boom", epochs=[])
    return record


def test_round_trip(tmp_path):
    record = _failed_record()
    path = write_record(tmp_path / "run", record)
    assert path == tmp_path / "run" / RECORD_NAME
    assert read_record(path) == record
    assert read_record(tmp_path / "run") == record


def test_no_temporary_files_left(tmp_path):
    write_record(tmp_path, _failed_record())
    assert [p.name for p in tmp_path.iterdir()] == [RECORD_NAME]


def test_nan_written_as_null(tmp_path):
    record = _failed_record()
    record["epochs"] = [{"loss": float("nan")}]
    write_record(tmp_path, record)
    assert read_record(tmp_path)["epochs"] == [{"loss": None}]


def test_invalid_json_rejected(tmp_path):
    (tmp_path / RECORD_NAME).write_text("{not json", encoding="utf-8")
    with pytest.raises(UserInputError, match="not valid JSON"):
        read_record(tmp_path)


def test_missing_key_rejected(tmp_path):
    record = _failed_record()
    del record["seeds"]
    (tmp_path / RECORD_NAME).write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(UserInputError, match="missing keys \\['seeds'\\]"):
        read_record(tmp_path)


def test_finished_record_needs_results(tmp_path):
    record = _failed_record()
    record["status"] = "finished"
    (tmp_path / RECORD_NAME).write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(UserInputError, match="weights_sha256"):
        read_record(tmp_path)


def test_other_schema_version_rejected(tmp_path):
    record = _failed_record()
    record["schema_version"] = 99
    (tmp_path / RECORD_NAME).write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(UserInputError, match="schema_version 99"):
        read_record(tmp_path)


def test_missing_file_message(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        read_record(tmp_path / "absent")


def test_error_is_one_line(tmp_path):
    (tmp_path / RECORD_NAME).write_text("[1, 2", encoding="utf-8")
    with pytest.raises(UserInputError) as info:
        read_record(tmp_path)
    assert "\n" not in str(info.value)
