"""Run records: one JSON file per training run, written atomically and read with validation."""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from repro_lits.errors import UserInputError

#: Label classes in label-value order: 0 background, 1 liver, 2 tumor.
CLASS_NAMES = ("background", "liver", "tumor")

#: Version of the record layout; a reader rejects other versions.
SCHEMA_VERSION = 1

#: File name of the record inside a run folder.
RECORD_NAME = "record.json"
WEIGHTS_NAME = "weights.safetensors"
PREDICTIONS_NAME = "predictions.npz"

#: Keys every record has, finished or failed.
REQUIRED_KEYS = (
    "schema_version", "run_id", "experiment", "config_hash", "config", "setup", "run_index", "seeds",
    "switches", "threads", "environment", "device", "status", "error", "epochs",
)

#: Keys a finished record has in addition.
FINISHED_KEYS = ("test", "weights_sha256", "predictions_sha256", "files", "dataset_fingerprint")


def _reject_nan(value: str) -> Any:
    raise ValueError(f"non-standard JSON number {value}")


def write_record(run_dir: Path | str, record: dict) -> Path:
    """Write ``record`` to ``run_dir/record.json`` atomically and return the path.

    The JSON goes to a temporary file in the same folder, is flushed to disk
    with fsync, then renamed over ``record.json``, so a reader sees either no
    record or a complete one. NaN or infinite floats are written as null,
    because strict JSON has no such numbers.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / RECORD_NAME
    text = json.dumps(_finite(record), indent=2, sort_keys=False, allow_nan=False) + "\n"

    handle, temp_name = tempfile.mkstemp(prefix=".record-", suffix=".json.tmp", dir=run_dir)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return target


def _finite(value: Any) -> Any:
    """Replace NaN and infinite floats by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def read_record(path: Path | str) -> dict:
    """Read a run record from ``record.json`` or from the run folder that contains it.

    Raises:
        UserInputError: the file is missing, not valid JSON, of another schema
            version, or lacks a required key.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RECORD_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserInputError(f"run record not found: {path}; expected a run folder with {RECORD_NAME}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserInputError(f"cannot read run record {path}: {err}") from err

    try:
        record = json.loads(text, parse_constant=_reject_nan)
    except ValueError as err:
        raise UserInputError(f"invalid run record {path}: not valid JSON ({err}); rerun the run to rewrite it") from err
    if not isinstance(record, dict):
        raise UserInputError(f"invalid run record {path}: expected a JSON object, found {type(record).__name__}")

    version = record.get("schema_version")
    if version != SCHEMA_VERSION:
        raise UserInputError(
            f"invalid run record {path}: schema_version {version!r}; this version of repro-lits reads {SCHEMA_VERSION}"
        )
    required = REQUIRED_KEYS + (FINISHED_KEYS if record.get("status") == "finished" else ())
    missing = [key for key in required if key not in record]
    if missing:
        raise UserInputError(f"invalid run record {path}: missing keys {missing}; rerun the run to rewrite it")
    if record["status"] not in ("finished", "failed"):
        raise UserInputError(
            f"invalid run record {path}: status {record['status']!r}; expected 'finished' or 'failed'"
        )
    problem = _type_problem(record)
    if problem:
        raise UserInputError(f"invalid run record {path}: {problem}; rerun the run to rewrite it")
    return record


#: JSON types of the top-level keys that readers index into; ``type(None)`` allows null.
KEY_TYPES: dict[str, tuple[type, ...]] = {
    "run_id": (str,), "experiment": (str,), "config_hash": (str,), "config": (dict,), "setup": (str,),
    "run_index": (int,), "seeds": (dict,), "switches": (dict,), "threads": (dict,), "environment": (dict,),
    "device": (str,), "error": (str, type(None)), "epochs": (list,), "test": (dict,), "files": (dict,),
    "dataset_fingerprint": (str,), "dataset_cases": (dict, type(None)),
}

#: Keys that hold a SHA-256 as 64 lowercase hex digits.
SHA256_KEYS = ("weights_sha256", "predictions_sha256")

_SHA256 = re.compile(r"[0-9a-f]{64}")

#: Name of each JSON type in error messages.
_JSON_NAMES = {str: "a string", dict: "an object", list: "an array", int: "an integer"}


def _type_problem(record: dict) -> str | None:
    """Describe the first key whose value has the wrong JSON type, or return None.

    A failed run's record may have null for any key, because the run may have stopped before
    the value was known.
    """
    failed = record["status"] != "finished"
    for key, types in KEY_TYPES.items():
        if failed and record.get(key) is None:
            continue
        if key in record and (not isinstance(record[key], types) or isinstance(record[key], bool)):
            expected = " or ".join("null" if t is type(None) else _JSON_NAMES[t] for t in types)
            return f"{key} is {json.dumps(record[key])[:40]}; expected {expected}"
    if isinstance(record["run_index"], int) and record["run_index"] < 0:
        return f"run_index is {record['run_index']}; expected 0 or more"
    for section, value in (record["config"] or {}).items():
        if not isinstance(value, dict):
            return f"config.{section} is {json.dumps(value)[:40]}; expected an object"
    for index, entry in enumerate(record["epochs"] or []):
        if not isinstance(entry, dict):
            return f"epochs[{index}] is {json.dumps(entry)[:40]}; expected an object"
    for key in SHA256_KEYS:
        if failed and record.get(key) is None:
            continue
        if key in record and not (isinstance(record[key], str) and _SHA256.fullmatch(record[key])):
            return f"{key} is {json.dumps(record[key])[:80]}; expected a SHA-256 as 64 lowercase hex digits"
    return None

