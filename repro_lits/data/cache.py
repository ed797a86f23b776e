"""Prepared datasets on disk: open one (``load_prepared``) or build it on first use (``ensure_dataset``).

Cache layout under ``cache_root``::

    raw/synthetic-<cases>-<seed>/     phantoms in LiTS layout (written once per phantom parameters)
    prepared/<key>/                   manifest.json, images/<case_id>.npy, labels/<case_id>.npy

``<key>`` is the first 16 hex digits of the SHA-256 of the data source and the
preprocessing parameters, so every configuration gets its own folder.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from repro_lits.data.manifest import canonical_json, read_manifest, sha256_file
from repro_lits.data.prepare import folder_lock, prepare_with_settings, preprocessing_params
from repro_lits.data.synth import (
    GENERATOR_VERSION,
    PhantomParams,
    replace_folder,
    synthesize_dataset,
    synthetic_dataset_is_current,
)
from repro_lits.errors import DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedDataset:
    """A prepared dataset folder and its manifest.

    Attributes:
        root: the folder holding ``manifest.json``, ``images/`` and ``labels/``.
        manifest: the parsed ``manifest.json``.
        fingerprint: SHA-256 (hex) of the manifest's layout, parameters, case entries and split.
        train_cases, test_cases: case ids of the fixed split, in natural order.
    """

    root: Path
    manifest: dict
    fingerprint: str
    train_cases: tuple[str, ...]
    test_cases: tuple[str, ...]

    def _entry(self, case_id: str) -> dict:
        try:
            return self.manifest["cases"][case_id]
        except KeyError:
            raise DataError(
                f"{self.root}: no case {case_id!r}; expected one of {list(self.manifest['cases'])[:10]}"
            ) from None

    def _array(self, case_id: str, role: str) -> np.ndarray:
        path = self.root / self._entry(case_id)[role]["file"]
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: cannot read the prepared {role} ({err}); prepare the dataset again") from err

    def image(self, case_id: str) -> np.ndarray:
        """Load the image cube (X, Y, Z) float32, memory-mapped read-only (HU in mlf-core mode, [0, 1] in spacing mode)."""
        return self._array(case_id, "image")

    def label(self, case_id: str) -> np.ndarray:
        """Load the label cube (X, Y, Z) uint8 (0 background, 1 liver, 2 tumor), memory-mapped read-only."""
        return self._array(case_id, "label")

    def case_sha256(self, case_id: str) -> dict:
        """Recorded SHA-256 of the case's prepared arrays (``image``, ``label``) and source files (``source_image``, ``source_label``)."""
        entry = self._entry(case_id)
        hashes = {"image": entry["image"]["sha256"], "label": entry["label"]["sha256"]}
        for role, source in entry.get("source", {}).items():
            hashes[f"source_{role}"] = source["sha256"]
        return hashes


    def changed_cases(self) -> list[str]:
        """Re-hash every prepared array and return the ids of cases whose files differ from the manifest's SHA-256.

        ``load_prepared`` does not hash the arrays, to stay fast; call this to
        detect arrays edited or left half-written after the manifest was written.
        """
        changed = []
        for case_id, entry in self.manifest["cases"].items():
            for role in ("image", "label"):
                path = self.root / entry[role]["file"]
                if not path.is_file() or sha256_file(path) != entry[role]["sha256"]:
                    changed.append(case_id)
                    break
        return changed


def load_prepared(cache_dir: Path) -> PreparedDataset:
    """Open a prepared dataset folder.

    Raises:
        DataError: the manifest is missing, corrupt or does not match its
            fingerprint, or an array file it lists is missing.
    """
    root = Path(cache_dir)
    manifest = read_manifest(root)
    for case_id, entry in manifest["cases"].items():
        for role in ("image", "label"):
            if not (root / entry[role]["file"]).is_file():
                raise DataError(
                    f"{root / entry[role]['file']}: file not found; expected the prepared {role} of case {case_id}; "
                    "prepare the dataset again"
                )
    split = manifest["split"]
    return PreparedDataset(
        root=root,
        manifest=manifest,
        fingerprint=manifest["fingerprint"],
        train_cases=tuple(split["train"]),
        test_cases=tuple(split["test"]),
    )


def _synthetic_source(cache_root: Path, cases: int, seed: int) -> tuple[Path, dict]:
    """Write the phantoms once into ``raw/synthetic-<cases>-<seed>`` and return the folder and its identity."""
    params = PhantomParams()
    raw_root = cache_root / "raw"
    folder = raw_root / f"synthetic-{cases}-{seed}"
    with folder_lock(raw_root):
        if not synthetic_dataset_is_current(folder, cases=cases, seed=seed, params=params):
            tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=raw_root))
            try:
                synthesize_dataset(tmp, cases=cases, seed=seed, params=params)
                replace_folder(tmp, folder)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    identity = {"cases": cases, "seed": seed, "params_sha256": params.digest(), "generator_version": GENERATOR_VERSION}
    return folder, {"synthetic": identity}


def ensure_dataset(config, *, cache_root: Path) -> PreparedDataset:
    """Return the prepared dataset of an experiment config, building it on first use.

    ``config.data["source"] == "synthetic"`` writes ``synthetic_cases`` phantoms
    of ``synthetic_seed`` (once); any other value is a raw dataset folder. The
    data is then prepared with the config's preprocessing parameters into
    ``cache_root/prepared/<key>/``; an unchanged dataset is reused without
    reading its volumes. Two processes may call this at once: both folders are
    guarded by lock files.

    Raises:
        DataError: the source folder is missing or the data fails validation.
    """
    cache_root = Path(cache_root)
    data = config.data
    params = preprocessing_params(
        data["mode"],
        slice_count=data["slice_count"],
        downscale=data["downscale"],
        cube_size=data["cube_size"],
        spacing_mm=data["spacing_mm"],
        hu_window=tuple(data["hu_window"]),
    )
    if data["source"] == "synthetic":
        src, identity = _synthetic_source(cache_root, int(data["synthetic_cases"]), int(data["synthetic_seed"]))
    else:
        src = Path(data["source"]).expanduser()
        if not src.is_dir():
            raise DataError(f"data.source = {data['source']!r}: folder not found; expected 'synthetic' or a dataset folder")
        identity = {"path": str(src.resolve())}

    key_material = {
        "source": identity,
        "params": params.to_dict(),
        "test_fraction": data["test_fraction"],
        "split_seed": data["split_seed"],
    }
    key = hashlib.sha256(canonical_json(key_material)).hexdigest()[:16]
    out = cache_root / "prepared" / key
    prepare_with_settings(src, out, data)
    return load_prepared(out)
