"""The manifest of a prepared dataset: what each case came from, what was written, the split and the fingerprint.

``manifest.json`` keys:

- ``schema_version``, ``layout`` (lits, msd, nnunet, study-pt), ``params`` (the preprocessing parameters);
- ``cases``: case id -> source files and their SHA-256, output arrays (file, SHA-256,
  shape, dtype), source shape and spacing (mm), output spacing (mm), label voxel
  counts, what preprocessing did (``preprocessing``, ``padded``) and ``warnings``;
- ``split``: ``{"rule", "train", "test"}``; ``skipped``: case id -> problems;
- ``fingerprint``: SHA-256 of the canonical JSON of ``layout``, ``params``, ``cases`` and ``split``;
- ``source_root`` and ``source_stat`` (file sizes and modification times used to
  skip unchanged inputs), which are local details and not part of the fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from repro_lits.errors import DataError

MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION = 1

#: Manifest keys that identify the data, hashed into the fingerprint.
FINGERPRINT_KEYS = ("layout", "params", "cases", "split")

REQUIRED_KEYS = ("schema_version", "params", "cases", "split", "fingerprint")


def canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")


def compute_fingerprint(manifest: dict) -> str:
    """SHA-256 (hex) of the manifest's layout, parameters, case entries and split."""
    return hashlib.sha256(canonical_json({key: manifest.get(key) for key in FINGERPRINT_KEYS})).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path, manifest: dict) -> None:
    """Write ``manifest.json`` atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(folder) / MANIFEST_FILE
    tmp = path.with_name(f".{MANIFEST_FILE}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as stream:
        json.dump(manifest, stream, indent=2, sort_keys=True)
        stream.write("\n")
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(tmp, path)


def read_manifest(folder: Path) -> dict:
    """Read and check ``manifest.json`` of a prepared dataset.

    Raises:
        DataError: the file is missing, is not valid JSON, lacks a key, or its
            fingerprint does not match its content.
    """
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise DataError(f"{path}: file not found; expected a prepared dataset (run: repro-lits data prepare)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"{path}: invalid JSON ({err}); expected a manifest written by repro-lits data prepare") from err
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: top-level value is not an object; expected a manifest")
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise DataError(f"{path}: missing keys {missing}; expected a manifest written by repro-lits data prepare")
    if manifest["schema_version"] != SCHEMA_VERSION:
        raise DataError(
            f"{path}: schema_version {manifest['schema_version']!r}; expected {SCHEMA_VERSION}; prepare the dataset again"
        )
    if compute_fingerprint(manifest) != manifest["fingerprint"]:
        raise DataError(
            f"{path}: fingerprint does not match the manifest's content; the file was edited or is corrupt; "
            "prepare the dataset again"
        )
    return manifest
