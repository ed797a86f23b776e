"""Prepare a raw dataset into the cache: check every case, preprocess it, write arrays, manifest and split.

Layout of the output folder::

    manifest.json
    images/<case_id>.npy   float32 (X, Y, Z)
    labels/<case_id>.npy   uint8 (X, Y, Z), 0 background, 1 liver, 2 tumor

Re-running on the same folder is incremental. A case is kept without reading
it when its parameters are unchanged and its source files have the same size
and modification time, or failing that the same SHA-256. Only changed cases
are recomputed. A lock file makes concurrent runs on one folder wait for each
other.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from repro_lits.data.layouts import CaseFiles, DatasetLayout, detect_layout
from repro_lits.data.manifest import (
    SCHEMA_VERSION,
    compute_fingerprint,
    read_manifest,
    sha256_file,
    write_manifest,
)
from repro_lits.data.mlf_core import MlfCoreParams, PreparedCase, preprocess_mlf_core
from repro_lits.data.spacing import SpacingParams, preprocess_spacing
from repro_lits.data.split import make_split
from repro_lits.data.study_pt import load_study_case
from repro_lits.data.volume import CaseError, load_case
from repro_lits.errors import DataError, UserInputError

logger = logging.getLogger(__name__)

MODES = ("mlf-core", "spacing")
LABEL_NAMES = ("background", "liver", "tumor")


@dataclass
class PrepareResult:
    """Outcome of a prepare run: ``computed`` and ``reused`` case ids, and ``skipped`` case id -> problems."""

    root: Path
    manifest: dict
    computed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)


def preprocessing_params(
    mode: str,
    *,
    slice_count: int = 512,
    downscale: int = 2,
    cube_size: int = 128,
    spacing_mm: float = 2.0,
    hu_window: tuple[float, float] = (-200.0, 300.0),
) -> MlfCoreParams | SpacingParams:
    """Build the parameter object of a preprocessing mode (``mlf-core`` or ``spacing``)."""
    if mode == "mlf-core":
        return MlfCoreParams(slice_count=slice_count, downscale=downscale, cube_size=cube_size)
    if mode == "spacing":
        return SpacingParams(spacing_mm=float(spacing_mm), hu_window=tuple(hu_window), cube_size=cube_size)
    raise UserInputError(f"mode {mode!r}; expected one of {list(MODES)}")


@contextmanager
def folder_lock(folder: Path):
    """Hold an exclusive lock on ``folder/.lock`` (POSIX ``flock``) for the duration of the block."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def save_array(path: Path, array: np.ndarray) -> str:
    """Write ``array`` as ``.npy`` (no pickle) atomically and return the file's SHA-256."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    data = buffer.getvalue()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def _stat(path: Path | None) -> list[int] | None:
    if path is None:
        return None
    info = path.stat()
    return [int(info.st_size), int(info.st_mtime_ns)]


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _build_case(case: CaseFiles, layout: DatasetLayout, params) -> tuple[PreparedCase, dict]:
    """Read, check and preprocess one case; return the cubes and the case's spacing and warnings."""
    if layout.kind == "study-pt":
        image, label = load_study_case(case)
        info = {"source_shape": list(image.shape), "padded": False, "note": "cube preprocessed by the study, copied as is"}
        return PreparedCase(image, label, info), {"spacing_mm": None, "output_spacing_mm": None, "warnings": []}

    volume = load_case(case)
    warnings = list(volume.warnings)
    spacing = [round(s, 6) for s in volume.spacing]
    if isinstance(params, SpacingParams):
        prepared = preprocess_spacing(volume.image, volume.label, volume.affine, params)
        output_spacing = [float(params.spacing_mm)] * 3
    else:
        prepared = preprocess_mlf_core(volume.image, volume.label, params)
        output_spacing = [round(s * params.downscale, 6) for s in spacing]
    if prepared.info.get("padded"):
        logger.debug(
            "case %s: cube zero-padded (low %s, high %s voxels) where the volume ends inside the crop",
            case.case_id, prepared.info["padding"]["low"], prepared.info["padding"]["high"],
        )
    return prepared, {"spacing_mm": spacing, "output_spacing_mm": output_spacing, "warnings": warnings}


def _old_manifest(out: Path) -> dict:
    try:
        return read_manifest(out)
    except DataError:
        return {}


def _reusable(out: Path, entry: dict | None, same_params: bool) -> bool:
    if not entry or not same_params:
        return False
    return (out / entry["image"]["file"]).is_file() and (out / entry["label"]["file"]).is_file()


def _source_hashes(case: CaseFiles, root: Path) -> dict:
    return {
        role: {"file": _relative(path, root), "sha256": sha256_file(path)}
        for role, path in (("image", case.image), ("label", case.label))
        if path is not None
    }


def prepare_dataset(
    src: Path,
    out: Path,
    *,
    mode: str = "mlf-core",
    slice_count: int = 512,
    downscale: int = 2,
    cube_size: int = 128,
    spacing_mm: float = 2.0,
    hu_window: tuple[float, float] = (-200.0, 300.0),
    test_fraction: float = 0.1,
    split_seed: int = 0,
    skip_invalid: bool = False,
) -> PrepareResult:
    """Check and preprocess every case of ``src`` into ``out``; write the manifest last.

    Args:
        src: raw dataset folder (LiTS, Decathlon Task03, nnU-Net v2 raw or study ``.pt`` cubes).
        out: cache folder; an existing prepared dataset there is updated incrementally.
        mode: ``mlf-core`` (the study's preprocessing; uses slice_count, downscale,
            cube_size) or ``spacing`` (uses spacing_mm, hu_window, cube_size).
        skip_invalid: leave out cases with problems (listed in the result and the
            manifest) instead of raising on the first one.

    Raises:
        DataError: a case or the layout has a problem and ``skip_invalid`` is false,
            or fewer than two usable cases remain.
    """
    src, out = Path(src), Path(out)
    if not 0.0 < test_fraction < 1.0:
        raise UserInputError(f"test_fraction {test_fraction!r}; expected a fraction between 0 and 1")
    params = preprocessing_params(
        mode, slice_count=slice_count, downscale=downscale, cube_size=cube_size, spacing_mm=spacing_mm, hu_window=hu_window
    )
    layout = detect_layout(src)
    params_dict = {"mode": "study-pt"} if layout.kind == "study-pt" else params.to_dict()
    if layout.kind == "study-pt":
        logger.info("%s: study .pt cubes are copied as they are; the %s parameters are not applied", src, mode)

    if layout.problems and not skip_invalid:
        more = f" (and {len(layout.problems) - 1} more problems)" if len(layout.problems) > 1 else ""
        raise DataError(f"{layout.problems[0]}{more}")
    for problem in layout.problems:
        logger.warning("ignored: %s", problem)

    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "images").mkdir(exist_ok=True)
        (out / "labels").mkdir(exist_ok=True)
    except OSError as err:
        raise UserInputError(f"{out}: cannot create the cache folder ({err.strerror}); expected a writable path") from err

    with folder_lock(out):
        old = _old_manifest(out)
        same_params = old.get("params") == params_dict and old.get("layout") == layout.kind
        result = PrepareResult(root=out, manifest={})
        cases: dict[str, dict] = {}
        stats: dict[str, dict] = {}
        # New arrays are written under temporary names and moved into place only once every case
        # and the split succeeded, so a failed run leaves the existing cache and manifest intact.
        staged: list[tuple[Path, Path]] = []
        try:
            for case in layout.cases:
                entry, stat = _prepare_one(
                    case, layout, params, params_dict, out, old, same_params, result, skip_invalid, staged
                )
                if entry is not None:
                    cases[case.case_id] = entry
                    stats[case.case_id] = stat
            split = make_split(
                layout.kind,
                [c.case_id for c in layout.cases],
                list(cases),
                test_fraction=test_fraction,
                split_seed=split_seed,
            )
        except BaseException:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
            raise
        for tmp, final in staged:
            os.replace(tmp, final)

        for stale in set(old.get("cases", {})) - set(cases):
            for kind in ("images", "labels"):
                (out / kind / f"{stale}.npy").unlink(missing_ok=True)

        manifest = {
            "schema_version": SCHEMA_VERSION,
            "layout": layout.kind,
            "params": params_dict,
            "cases": cases,
            "split": split,
            "skipped": result.skipped,
            "layout_problems": list(layout.problems),
            "source_root": str(src.resolve()),
            "source_stat": stats,
        }
        manifest["fingerprint"] = compute_fingerprint(manifest)
        write_manifest(out, manifest)

    result.manifest = manifest
    logger.info(
        "prepared %s into %s: %d computed, %d unchanged, %d skipped; fingerprint %s",
        src, out, len(result.computed), len(result.reused), len(result.skipped), manifest["fingerprint"][:12],
    )
    return result



def prepare_with_settings(src: Path, out: Path, data: dict[str, Any], *, skip_invalid: bool = False) -> PrepareResult:
    """Run :func:`prepare_dataset` with the preprocessing keys of an experiment's ``[data]`` section."""
    return prepare_dataset(
        src,
        out,
        mode=data["mode"],
        slice_count=data["slice_count"],
        downscale=data["downscale"],
        cube_size=data["cube_size"],
        spacing_mm=data["spacing_mm"],
        hu_window=tuple(data["hu_window"]),
        test_fraction=data["test_fraction"],
        split_seed=data["split_seed"],
        skip_invalid=skip_invalid,
    )

def _prepare_one(case, layout, params, params_dict, out, old, same_params, result, skip_invalid, staged):
    """Reuse or compute one case; return its manifest entry and file stats, or (None, None) when skipped.

    A computed case's arrays go to temporary files, appended to ``staged`` as (temporary, final) paths.
    """
    case_id = case.case_id
    old_entry = old.get("cases", {}).get(case_id)
    stat = {"image": _stat(case.image), "label": _stat(case.label)}
    if _reusable(out, old_entry, same_params) and old.get("source_stat", {}).get(case_id) == stat:
        result.reused.append(case_id)
        return old_entry, stat

    sources = _source_hashes(case, layout.root)
    if _reusable(out, old_entry, same_params) and old_entry.get("source") == sources:
        result.reused.append(case_id)
        return old_entry, stat

    try:
        prepared, extras = _build_case(case, layout, params)
    except CaseError as err:
        if not skip_invalid:
            raise
        result.skipped[case_id] = err.problems
        for problem in err.problems:
            logger.warning("skipped case %s: %s", case_id, problem)
        return None, None
    except ValueError as err:
        # NOTE: preprocessing raises ValueError only for inputs that load_case already rejects; kept as a guard.
        if not skip_invalid:
            raise DataError(f"case {case_id}: preprocessing failed: {err}") from err
        result.skipped[case_id] = [f"case {case_id}: preprocessing failed: {err}"]
        return None, None

    arrays = (
        ("images", prepared.image.astype(np.float32, copy=False)),
        ("labels", prepared.label.astype(np.uint8, copy=False)),
    )
    hashes = []
    for kind, array in arrays:
        final = out / kind / f"{case_id}.npy"
        tmp = final.with_name(f".{final.name}.staged-{os.getpid()}")
        staged.append((tmp, final))
        hashes.append(save_array(tmp, array))
    image_sha, label_sha = hashes
    counts = np.bincount(prepared.label.ravel(), minlength=3)
    for warning in extras["warnings"]:
        logger.warning("%s", warning)
    entry = {
        "source": sources,
        "image": {"file": f"images/{case_id}.npy", "sha256": image_sha, "dtype": "float32"},
        "label": {"file": f"labels/{case_id}.npy", "sha256": label_sha, "dtype": "uint8"},
        "shape": list(prepared.image.shape),
        "source_shape": prepared.info["source_shape"],
        "spacing_mm": extras["spacing_mm"],
        "output_spacing_mm": extras["output_spacing_mm"],
        "label_voxels": {name: int(counts[i]) for i, name in enumerate(LABEL_NAMES)},
        "padded": bool(prepared.info.get("padded", False)),
        "preprocessing": prepared.info,
        "warnings": extras["warnings"],
    }
    result.computed.append(case_id)
    logger.info(
        "case %s: prepared %s -> %s (liver %d, tumor %d voxels)",
        case_id, prepared.info["source_shape"], list(prepared.image.shape), counts[1], counts[2],
    )
    logger.debug("case %s: %s", case_id, prepared.info)
    return entry, stat
