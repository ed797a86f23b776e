"""Pairwise disagreement between the runs of each setup, read from their prediction and weight files.

For every pair of finished runs of one setup, this module computes the prediction
churn (fraction of test voxels whose predicted class differs) and the relative L2
distance between the final weights. It reads ``predictions.npz`` (one uint8
(X, Y, Z) label map per test case id) and ``weights.safetensors`` from each run
folder, one test case at a time, so memory contains one case per run.
"""

from __future__ import annotations

import itertools
import logging
import zipfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors import SafetensorError
from safetensors.numpy import load_file

from repro_lits.errors import DataError
from repro_lits.stats import Churn, finished_runs, ordered_setups, prediction_churn, relative_weight_distance

logger = logging.getLogger(__name__)

#: File names inside a run folder, as the run record's ``files`` entry sets them.
WEIGHTS_FILE = "weights.safetensors"
PREDICTIONS_FILE = "predictions.npz"


@dataclass(frozen=True)
class RunPair:
    """Disagreement between two finished runs of one setup.

    ``churn`` is the fraction of all test voxels whose predicted class differs; ``liver_churn``
    the same fraction inside the union of both runs' liver-or-tumor predictions (label >= 1).
    ``weight_distance`` is ``||a - b|| / ((||a|| + ||b||) / 2)`` over the flattened floating-point
    tensors. A value is ``None`` where a file is missing, and ``note`` then names the file.
    """

    setup: str
    run_a: str
    run_b: str
    same_weights_hash: bool
    same_predictions_hash: bool
    voxels: int | None
    differing_voxels: int | None
    churn: float | None
    liver_union_voxels: int | None
    liver_differing_voxels: int | None
    liver_churn: float | None
    weight_distance: float | None
    note: str


def load_weight_vector(path: Path) -> np.ndarray:
    """Read a safetensors file and return every floating-point tensor, flattened in name order, as 1-D float64.

    Integer tensors (such as BatchNorm's ``num_batches_tracked`` counter) are left out, because
    they count steps rather than hold learned values.
    """
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, TypeError) as err:
        raise DataError(f"{path}: cannot read the weights ({err}); expected a safetensors file of float tensors") from err
    parts = [tensors[name].ravel() for name in sorted(tensors) if np.issubdtype(tensors[name].dtype, np.floating)]
    if not parts:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate(parts).astype(np.float64)


def compare_pairs(runs: pd.DataFrame) -> list[RunPair]:
    """Compare every pair of finished runs within each setup of a runs table.

    ``runs`` needs the columns setup, run_id, run_index, run_dir (the run folder),
    weights_sha256 and predictions_sha256. Runs are paired in run-index order.

    Raises:
        DataError: two runs of a setup have different test cases, label-map shapes or weight tensors.
    """
    finished = finished_runs(runs)
    pairs: list[RunPair] = []
    for setup in ordered_setups(finished["setup"].tolist()):
        group = finished[finished["setup"] == setup].sort_values("run_index")
        if len(group) < 2:
            continue
        pairs.extend(_compare_setup(setup, group))
    return pairs


def _compare_setup(setup: str, group: pd.DataFrame) -> list[RunPair]:
    run_ids = group["run_id"].tolist()
    folders = {run_id: Path(folder) for run_id, folder in zip(run_ids, group["run_dir"], strict=True)}
    weights_hash = dict(zip(run_ids, group["weights_sha256"], strict=True))
    predictions_hash = dict(zip(run_ids, group["predictions_sha256"], strict=True))
    index_pairs = list(itertools.combinations(run_ids, 2))

    churns = _churn_of_pairs(folders, index_pairs)
    distances = _distance_of_pairs(folders, index_pairs)

    result = []
    for a, b in index_pairs:
        churn = churns.get((a, b))
        distance, distance_note = distances[(a, b)]
        notes = [] if churn is not None else [f"{PREDICTIONS_FILE} missing in {_missing(folders, a, b, PREDICTIONS_FILE)}"]
        if distance_note:
            notes.append(distance_note)
        same_predictions = predictions_hash[a] == predictions_hash[b]
        if churn is not None and same_predictions and churn.differing:
            logger.warning("%s and %s have equal prediction hashes but %d differing voxels", a, b, churn.differing)
            notes.append("prediction hashes equal but the label maps differ")
        result.append(
            RunPair(
                setup=setup,
                run_a=a,
                run_b=b,
                same_weights_hash=weights_hash[a] == weights_hash[b],
                same_predictions_hash=same_predictions,
                voxels=churn.voxels if churn else None,
                differing_voxels=churn.differing if churn else None,
                churn=churn.fraction if churn else None,
                liver_union_voxels=churn.liver_union if churn else None,
                liver_differing_voxels=churn.liver_differing if churn else None,
                liver_churn=churn.liver_fraction if churn else None,
                weight_distance=distance,
                note="; ".join(notes),
            )
        )
    return result


def _churn_of_pairs(folders: dict[str, Path], pairs: list[tuple[str, str]]) -> dict[tuple[str, str], Churn]:
    """Sum the churn counts over all test cases for each pair whose runs both have predictions."""
    present = {run_id for run_id, folder in folders.items() if (folder / PREDICTIONS_FILE).is_file()}
    usable = [(a, b) for a, b in pairs if a in present and b in present]
    if not usable:
        return {}

    totals = {pair: Churn(0, 0, 0, 0) for pair in usable}
    with ExitStack() as stack:
        archives = {
            run_id: stack.enter_context(_open_predictions(folders[run_id] / PREDICTIONS_FILE))
            for run_id in sorted(present)
        }
        reference_id = min(present)
        cases = sorted(archives[reference_id].files)
        for run_id, archive in archives.items():
            if sorted(archive.files) != cases:
                raise DataError(
                    f"{folders[run_id] / PREDICTIONS_FILE}: test cases {sorted(archive.files)} differ from "
                    f"{cases} in {reference_id}; expected the same test split in every run of a setup"
                )
        for case in cases:
            maps = {run_id: _read_map(archive, case, folders[run_id] / PREDICTIONS_FILE)
                    for run_id, archive in archives.items()}
            for a, b in usable:
                if maps[a].shape != maps[b].shape:
                    raise DataError(
                        f"case {case}: label map of {a} has shape {maps[a].shape} but {b} has {maps[b].shape}; "
                        "expected the same prepared data in every run"
                    )
                totals[(a, b)] = totals[(a, b)] + prediction_churn(maps[a], maps[b])
    return totals


#: Errors of a corrupt .npz: not a zip file, bad member data, or a member that needs pickle.
NPZ_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def _open_predictions(path: Path):
    try:
        return np.load(path, allow_pickle=False)
    except NPZ_READ_ERRORS as err:
        raise DataError(
            f"{path}: cannot read the predictions ({err}); expected the .npz of label maps that the run wrote; "
            "rerun the run or remove its folder"
        ) from err


def _read_map(archive, case: str, path: Path) -> np.ndarray:
    try:
        return archive[case]
    except NPZ_READ_ERRORS as err:
        raise DataError(
            f"{path}: cannot read the label map of case {case} ({err}); rerun the run or remove its folder"
        ) from err


def _distance_of_pairs(
    folders: dict[str, Path], pairs: list[tuple[str, str]]
) -> dict[tuple[str, str], tuple[float | None, str]]:
    """Return the relative weight distance of each pair, or ``None`` with a note when a file is missing."""
    vectors = {
        run_id: load_weight_vector(folder / WEIGHTS_FILE)
        for run_id, folder in folders.items()
        if (folder / WEIGHTS_FILE).is_file()
    }
    distances = {}
    for a, b in pairs:
        if a not in vectors or b not in vectors:
            distances[(a, b)] = (None, f"{WEIGHTS_FILE} missing in {_missing(folders, a, b, WEIGHTS_FILE)}")
            continue
        if vectors[a].shape != vectors[b].shape:
            raise DataError(
                f"{folders[a] / WEIGHTS_FILE} has {vectors[a].size} weights but {folders[b] / WEIGHTS_FILE} has "
                f"{vectors[b].size}; expected the same model in every run of an experiment"
            )
        distance = relative_weight_distance(vectors[a], vectors[b])
        distances[(a, b)] = (distance, "" if distance is not None else "both weight vectors are zero")
    return distances


def _missing(folders: dict[str, Path], a: str, b: str, name: str) -> str:
    return " and ".join(run_id for run_id in (a, b) if not (folders[run_id] / name).is_file())


def pairs_table(pairs: list[RunPair]) -> pd.DataFrame:
    """Return the pairs as a DataFrame with one row per pair and the fields of :class:`RunPair` as columns."""
    columns = list(RunPair.__dataclass_fields__)
    return pd.DataFrame([[getattr(pair, name) for name in columns] for pair in pairs], columns=columns)
