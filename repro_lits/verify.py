"""Replay a recorded run from its record alone and compare weights and predictions bit for bit.

The replay uses the record's resolved config, setup, run index, seeds and
thread counts, on the record's device type. It runs in a fresh worker process
(``python -m repro_lits.worker``), so no PyTorch state of this process leaks
into it. Before it starts, the prepared dataset is checked against the
record's dataset fingerprint. Afterwards the weight hash is compared, and for
a full replay the predictions hash too. When they differ, the result names
the first differing state-dict tensor, the relative L2 distance of the
weights, the test IoU of both runs and the ranked environment differences
(see :mod:`repro_lits.envcheck`).
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from repro_lits.config import ExperimentConfig, config_from_dict, hash_values
from repro_lits.envcheck import EnvironmentDifference, environment_differences
from repro_lits.errors import DataError, UserInputError
from repro_lits.record import PREDICTIONS_NAME, RECORD_NAME, WEIGHTS_NAME, read_record
from repro_lits.setups import SETUP_NAMES

logger = logging.getLogger(__name__)

#: Exit status when the replay matches the record bit for bit.
EXIT_IDENTICAL = 0
#: Exit status when the replay differs from the record.
EXIT_DIFFERENT = 1
#: Exit status when the replay process failed, so that there is nothing to compare.
EXIT_REPLAY_FAILED = 3

#: Record key with the per-case hashes of the prepared dataset: case id -> hashes, as
#: ``PreparedDataset.case_sha256`` returns them.
DATASET_CASES_KEY = "dataset_cases"

_RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")

Progress = Callable[[dict[str, Any]], None]


class ReplayError(RuntimeError):
    """The replay process failed or wrote no usable record."""


@dataclass(frozen=True)
class TensorDifference:
    """The first state-dict tensor whose bytes differ between the recorded and the replayed weights.

    ``max_abs_difference`` is None when the tensor is missing on one side or
    the shapes differ.
    """

    name: str
    shape: tuple[int, ...]
    max_abs_difference: float | None


@dataclass
class VerifyResult:
    """Outcome of one verification: the verdict, the hashes compared and, when they differ, the diagnosis."""

    run_id: str
    record_path: Path
    setup: str
    device_recorded: str
    device_replayed: str
    epochs_compared: int
    epochs_recorded: int
    weights_recorded: str
    weights_replayed: str
    predictions_recorded: str | None
    predictions_replayed: str | None
    first_differing_epoch: int | None = None
    first_differing_tensor: TensorDifference | None = None
    tensors_compared: bool = False
    relative_l2: float | None = None
    differing_voxels: dict[str, int | None] | None = None
    test_iou_recorded: dict[str, Any] | None = None
    test_iou_replayed: dict[str, Any] | None = None
    environment: list[EnvironmentDifference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    replay_dir: Path | None = None

    @property
    def partial(self) -> bool:
        """True when fewer epochs were replayed than the record has."""
        return self.epochs_compared < self.epochs_recorded

    @property
    def identical(self) -> bool:
        """True when the weight hash matches and, for a full replay, the predictions hash too."""
        if self.weights_recorded != self.weights_replayed:
            return False
        return self.partial or self.predictions_recorded == self.predictions_replayed

    @property
    def verdict(self) -> str:
        return "identical" if self.identical else "different"

    @property
    def exit_code(self) -> int:
        return EXIT_IDENTICAL if self.identical else EXIT_DIFFERENT

    def to_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-ready dict, with the verdict."""
        values = asdict(self)
        values["record_path"] = str(self.record_path)
        values["replay_dir"] = None if self.replay_dir is None else str(self.replay_dir)
        values["verdict"] = self.verdict
        values["partial"] = self.partial
        return values


def resolve_record_path(target: str, results_dir: Path) -> Path:
    """Find a record from a path to ``record.json``, a run folder, or a run id under ``RESULTS/*/runs/``.

    Raises:
        UserInputError: nothing matches, or a run id matches runs of several experiments.
    """
    path = Path(target)
    if path.is_file():
        return path
    if path.is_dir():
        candidate = path / RECORD_NAME
        if candidate.is_file():
            return candidate
        raise UserInputError(f"run folder {path} has no {RECORD_NAME}; expected the folder of a finished run")
    if not _RUN_ID_PATTERN.fullmatch(target) or target.endswith(".json"):
        raise UserInputError(
            f"run record not found: {path}; expected a record.json, a run folder or a run id such as deterministic-000"
        )

    matches = sorted(Path(results_dir).glob(f"*/runs/{target}/{RECORD_NAME}"))
    if not matches:
        raise UserInputError(
            f"run {target!r} not found: no {results_dir}/*/runs/{target}/{RECORD_NAME}; "
            "pass the path to its record.json or the results folder with --results"
        )
    if len(matches) > 1:
        found = ", ".join(str(match) for match in matches)
        raise UserInputError(
            f"run id {target!r} exists in several experiments ({found}); pass the path to one record.json"
        )
    return matches[0]


def read_replayable_record(path: Path, *, epochs: int | None) -> dict:
    """Read a record and check that it has what a replay needs: a finished run and per-epoch weight hashes.

    Raises:
        UserInputError: invalid record, failed run, or an invalid ``epochs``.
    """
    record = read_record(path)
    if record["status"] != "finished":
        raise UserInputError(
            f"run record {path} belongs to a failed run (error: {record.get('error')}); "
            "only finished runs can be verified"
        )
    if record["setup"] not in SETUP_NAMES:
        raise UserInputError(f"run record {path}: setup {record['setup']!r}; expected one of {list(SETUP_NAMES)}")
    recorded_epochs = len(record["epochs"])
    if epochs is not None:
        if not 1 <= epochs <= recorded_epochs:
            raise UserInputError(f"--epochs {epochs}: expected 1 to {recorded_epochs}, the number of epochs in {path}")
        if not record["epochs"][epochs - 1].get("weights_sha256"):
            raise UserInputError(
                f"run record {path} has no weights_sha256 for epoch {epochs}; replay all epochs (omit --epochs)"
            )
    return record


def replay_config(record: dict, *, data_dir: Path | None, cuda_available: bool) -> tuple[ExperimentConfig, list[str]]:
    """Return the config to replay with and notes on what was changed for this machine.

    Only two values may change: ``data.source`` when ``--data`` names a raw
    dataset, and ``run.device`` so that the replay uses the recorded device type.
    """
    values = json.loads(json.dumps(record["config"]))
    notes = []
    if data_dir is not None and not (data_dir / "manifest.json").is_file():
        values["data"]["source"] = str(data_dir)

    recorded_device = str(record["device"])
    requested = values["run"]["device"]
    if recorded_device.startswith("cuda"):
        if not cuda_available:
            values["run"]["device"] = "cpu"
            notes.append(f"the run used {recorded_device}, but this machine has no CUDA device: replayed on the CPU")
    elif requested != "cpu" and cuda_available:
        values["run"]["device"] = "cpu"
    return config_from_dict(values, origin=f"run record {record['run_id']}"), notes


def prepare_dataset(config: ExperimentConfig, *, data_dir: Path | None, cache_root: Path) -> Any:
    """Load the prepared dataset a replay reads: ``data_dir`` if it is a prepared folder, else prepare it.

    Raises:
        DataError: the record's data source is a folder missing on this machine.
    """
    from repro_lits.data.cache import ensure_dataset, load_prepared

    if data_dir is not None:
        if not data_dir.is_dir():
            raise DataError(f"--data {data_dir}: folder not found; expected a raw dataset or a prepared dataset folder")
        if (data_dir / "manifest.json").is_file():
            return load_prepared(data_dir)

    source = config.data["source"]
    if source != "synthetic" and not Path(source).is_dir():
        raise DataError(
            f"the run's dataset {source} does not exist on this machine; pass --data with the raw dataset "
            "or the prepared dataset folder it used"
        )
    return ensure_dataset(config, cache_root=cache_root)


def check_dataset(record: dict, dataset: Any, *, cache_root: Path | None = None) -> None:
    """Raise DataError, naming the cases that differ, when the dataset's fingerprint is not the record's.

    The recorded per-case hashes come from the record's ``dataset_cases``, or
    else from a prepared dataset under ``cache_root/prepared/`` whose manifest
    has the recorded fingerprint (the data the run used, if this machine still
    has it).
    """
    recorded = record["dataset_fingerprint"]
    if dataset.fingerprint == recorded:
        return

    prefix = (f"dataset {dataset.root} has fingerprint {dataset.fingerprint[:12]}, "
              f"but run {record['run_id']} used {str(recorded)[:12]}")
    fix = "pass --data with the dataset the run used"
    recorded_cases = recorded_case_hashes(record, cache_root)
    if recorded_cases is None:
        raise DataError(f"{prefix}; the record has no per-case hashes, so the differing cases cannot be named; {fix}")

    current_cases = set(dataset.train_cases) | set(dataset.test_cases)
    changed = [case for case in sorted(set(recorded_cases) & current_cases, key=_natural_key)
               if dataset.case_sha256(case) != recorded_cases[case]]
    missing = sorted(set(recorded_cases) - current_cases, key=_natural_key)
    extra = sorted(current_cases - set(recorded_cases), key=_natural_key)
    parts = []
    if changed:
        parts.append(f"changed cases {_list_cases(changed)}")
    if missing:
        parts.append(f"cases missing here {_list_cases(missing)}")
    if extra:
        parts.append(f"cases not in the record {_list_cases(extra)}")
    if not parts:
        parts.append("every case matches, so the preprocessing parameters or the split differ")
    raise DataError(f"{prefix}: {'; '.join(parts)}; {fix}")


def recorded_case_hashes(record: dict, cache_root: Path | None) -> dict[str, dict] | None:
    """Return case id -> hashes of the data a run used, or None when neither the record nor the cache has them."""
    stored = record.get(DATASET_CASES_KEY)
    if isinstance(stored, dict):
        return stored
    if cache_root is None:
        return None

    from repro_lits.data.cache import load_prepared

    for manifest_path in sorted(Path(cache_root).glob("prepared/*/manifest.json")):
        try:
            original = load_prepared(manifest_path.parent)
        except DataError as err:
            logger.debug("skipping unreadable prepared dataset %s: %s", manifest_path.parent, err)
            continue
        if original.fingerprint == record["dataset_fingerprint"]:
            cases = set(original.train_cases) | set(original.test_cases)
            return {case: original.case_sha256(case) for case in cases}
    return None


def _natural_key(case: str) -> tuple:
    """Sort key that puts case "9" before case "10"."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", case))


def _list_cases(cases: list[str], limit: int = 10) -> str:
    listed = ", ".join(cases[:limit])
    return listed if len(cases) <= limit else f"{listed} and {len(cases) - limit} more"


def replay_spec(record: dict, config: ExperimentConfig, *, cache_dir: Path, run_dir: Path,
                epochs: int | None, threads: int | None) -> dict[str, Any]:
    """Build the worker spec that replays a record: its setup, run index, seeds and thread counts."""
    thread_counts = dict(record["threads"])
    if threads is not None:
        thread_counts["intra_op"] = threads
    full = epochs is None or epochs >= len(record["epochs"])
    return {
        "config": config.to_dict(),
        "setup": record["setup"],
        "run_index": record["run_index"],
        "cache_dir": str(cache_dir),
        "run_dir": str(run_dir),
        "seeds": record["seeds"],
        "threads": thread_counts,
        "replay_epochs": None if full else epochs,
    }


def run_replay(spec: dict[str, Any], *, progress: Progress | None = None) -> dict:
    """Run the spec in a fresh ``python -m repro_lits.worker`` process and return the replay's record.

    Raises:
        ReplayError: the worker failed or wrote no finished record.
    """
    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path = run_dir.parent / f"{run_dir.name}.spec.json"
    spec_path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    log_path = run_dir.parent / f"{run_dir.name}.worker.log"

    command = [sys.executable, "-m", "repro_lits.worker", str(spec_path)]
    logger.info("replaying %s in a fresh process: %s", spec.get("setup"), " ".join(command))
    with open(log_path, "w", encoding="utf-8") as log, subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=log, text=True,
    ) as process:
        for line in process.stdout or ():
            event = _parse_event(line)
            if event is not None and progress is not None:
                progress(event)
        exit_code = process.wait()

    record_path = run_dir / RECORD_NAME
    if exit_code != 0 or not record_path.is_file():
        raise ReplayError(f"the replay process failed (exit {exit_code}): {_failure_reason(record_path, log_path)}")
    return read_record(record_path)


def _parse_event(line: str) -> dict | None:
    try:
        event = json.loads(line)
    except ValueError:
        logger.debug("worker output that is not an event: %s", line.rstrip())
        return None
    return event if isinstance(event, dict) else None


def _failure_reason(record_path: Path, log_path: Path) -> str:
    """Return the replay's recorded error, else the last line of its log."""
    if record_path.is_file():
        try:
            error = json.loads(record_path.read_text(encoding="utf-8")).get("error")
        except ValueError:
            error = None
        if error:
            return str(error)
    lines = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return lines[-1] if lines else "no error output"


def verify_run(target: str, *, results_dir: Path = Path("results"), data_dir: Path | None = None,
               epochs: int | None = None, threads: int | None = None, output_dir: Path | None = None,
               progress: Progress | None = None) -> VerifyResult:
    """Replay a recorded run and compare it with its record.

    Args:
        target: path to ``record.json``, a run folder, or a run id under ``results_dir/*/runs/``.
        results_dir: results folder for run ids; the dataset cache is ``results_dir/.cache``.
        data_dir: raw dataset folder or prepared dataset folder (with ``manifest.json``);
            default: the record's ``data.source`` (synthetic data is generated again).
        epochs: replay only the first ``epochs`` epochs and compare the weight hash after that epoch.
        threads: intra-op thread count of the replay instead of the recorded one.
        output_dir: keep the replayed run in ``output_dir/<run_id>``; default: a temporary folder, deleted.
        progress: called with each event the worker prints.

    Raises:
        UserInputError: invalid target or options; DataError when the dataset is not the run's.
        ReplayError: the replay process failed.
    """
    import torch

    if threads is not None and threads < 1:
        raise UserInputError(f"--threads {threads}: expected 1 or more intra-op threads")
    record_path = resolve_record_path(target, Path(results_dir))
    record = read_replayable_record(record_path, epochs=epochs)
    config, notes = replay_config(record, data_dir=data_dir, cuda_available=torch.cuda.is_available())

    if output_dir is not None:
        _check_output_dir(Path(output_dir), record["run_id"])
    dataset = prepare_dataset(config, data_dir=data_dir, cache_root=Path(results_dir) / ".cache")
    check_dataset(record, dataset, cache_root=Path(results_dir) / ".cache")

    workspace = Path(tempfile.mkdtemp(prefix="repro-lits-verify-")) if output_dir is None else Path(output_dir)
    run_dir = workspace / record["run_id"]
    try:
        spec = replay_spec(record, config, cache_dir=Path(dataset.root).resolve(), run_dir=run_dir,
                           epochs=epochs, threads=threads)
        replayed = run_replay(spec, progress=progress)
        result = compare_runs(record, record_path, replayed, run_dir, epochs=epochs)
    finally:
        if output_dir is None:
            shutil.rmtree(workspace, ignore_errors=True)
    result.notes[:0] = notes
    result.replay_dir = None if output_dir is None else run_dir
    return result


def _check_output_dir(output_dir: Path, run_id: str) -> None:
    """Reject ``--output`` before any work when it contains the run's folder or lies below a file.

    The folder itself is created only when the replay starts.
    """
    run_dir = output_dir / run_id
    if run_dir.exists():
        raise UserInputError(f"--output {output_dir}: {run_dir} already exists; choose another folder or remove it")
    existing = next((path for path in (output_dir, *output_dir.parents) if path.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UserInputError(
            f"--output {output_dir}: cannot create the folder because {existing} is a file; "
            "expected a writable folder path"
        )


def compare_runs(record: dict, record_path: Path, replayed: dict, replay_dir: Path, *,
                 epochs: int | None) -> VerifyResult:
    """Compare a record with the record and files of its replay in ``replay_dir``."""
    recorded_epochs = len(record["epochs"])
    compared = recorded_epochs if epochs is None else min(epochs, recorded_epochs)
    partial = compared < recorded_epochs
    if partial:
        weights_recorded = record["epochs"][compared - 1]["weights_sha256"]
        weights_replayed = replayed["epochs"][compared - 1]["weights_sha256"]
    else:
        weights_recorded, weights_replayed = record["weights_sha256"], replayed["weights_sha256"]

    result = VerifyResult(
        run_id=record["run_id"],
        record_path=record_path,
        setup=record["setup"],
        device_recorded=str(record["device"]),
        device_replayed=str(replayed["device"]),
        epochs_compared=compared,
        epochs_recorded=recorded_epochs,
        weights_recorded=weights_recorded,
        weights_replayed=weights_replayed,
        predictions_recorded=None if partial else record["predictions_sha256"],
        predictions_replayed=None if partial else replayed["predictions_sha256"],
        first_differing_epoch=_first_differing_epoch(record["epochs"], replayed["epochs"], compared),
        test_iou_recorded=(record.get("test") or {}).get("iou"),
        test_iou_replayed=(replayed.get("test") or {}).get("iou"),
        environment=environment_differences(record, replayed),
    )
    result.notes.extend(_integrity_notes(record, record_path))
    if partial:
        result.notes.append(
            f"replayed {compared} of {recorded_epochs} epochs: compared the weight hash after epoch {compared}; "
            "the test IoU of the replay is after that epoch, the recorded one after the last"
        )
    if not result.identical:
        _diagnose(result, record, record_path, replay_dir)
    return result


def _first_differing_epoch(recorded: list[dict], replayed: list[dict], compared: int) -> int | None:
    for index in range(min(compared, len(recorded), len(replayed))):
        if recorded[index].get("weights_sha256") != replayed[index].get("weights_sha256"):
            return index + 1
    return None


def _integrity_notes(record: dict, record_path: Path) -> list[str]:
    """Check that the record agrees with itself: config hash and the hashes of its own weights and predictions."""
    notes = []
    if hash_values(record["config"]) != record["config_hash"]:
        notes.append("the record's config_hash does not match its config: the record was edited after the run")

    weights_file = _run_file(record, record_path, "weights")
    if weights_file is not None:
        from safetensors.torch import load_file

        from repro_lits.hashing import state_dict_sha256

        if state_dict_sha256(load_file(str(weights_file))) != record["weights_sha256"]:
            notes.append(
                f"the record's weights_sha256 does not match its own weights file {weights_file.name}: "
                "the record or the file was changed after the run"
            )
    predictions_file = _run_file(record, record_path, "predictions")
    if predictions_file is not None:
        from repro_lits.hashing import predictions_sha256

        if predictions_sha256(_load_predictions(predictions_file)) != record["predictions_sha256"]:
            notes.append(
                f"the record's predictions_sha256 does not match its own predictions file {predictions_file.name}: "
                "the record or the file was changed after the run"
            )
    return notes


def _run_file(record: dict, record_path: Path, kind: str) -> Path | None:
    name = (record.get("files") or {}).get(kind)
    if not name:
        return None
    path = record_path.parent / name
    return path if path.is_file() else None


def _load_predictions(path: Path) -> dict[str, Any]:
    """Read case id -> (X, Y, Z) uint8 predictions from an ``.npz`` file, without pickle."""
    import numpy as np

    with np.load(path, allow_pickle=False) as archive:
        return {case: archive[case] for case in archive.files}


def _diagnose(result: VerifyResult, record: dict, record_path: Path, replay_dir: Path) -> None:
    """Fill in the tensor, weight-distance and prediction comparisons of a replay that differs."""
    if result.partial:
        result.notes.append(
            "the record keeps only a hash of the weights after each epoch, so a partial replay cannot name "
            "the differing tensor; replay all epochs for that"
        )
    else:
        weights_file = _run_file(record, record_path, "weights")
        if weights_file is None:
            result.notes.append(
                "the record's weights file is not next to it, so the differing tensor cannot be named; "
                "copy the whole run folder"
            )
        else:
            order = _state_dict_order(record)
            first, relative_l2 = compare_weights(weights_file, replay_dir / WEIGHTS_NAME, order=order)
            result.tensors_compared = True
            result.first_differing_tensor = first
            result.relative_l2 = relative_l2
            if first is None:
                result.notes.append(
                    "the replayed weights equal the record's weights file bit for bit, so the record's hash "
                    "is what differs"
                )

        predictions_file = _run_file(record, record_path, "predictions")
        if predictions_file is not None:
            result.differing_voxels = compare_predictions(predictions_file, replay_dir / PREDICTIONS_NAME)

    if result.setup != "deterministic" and result.device_recorded.startswith("cuda"):
        result.notes.append(
            f"the {result.setup} setup allows non-deterministic CUDA algorithms, which alone can explain "
            "a difference on a GPU"
        )


def _state_dict_order(record: dict) -> list[str]:
    """Return the U-Net's state-dict key order for the record's ``[model]`` section."""
    from repro_lits.model import build_model

    return list(build_model(record["config"]["model"]).state_dict())


def compare_weights(recorded_file: Path, replayed_file: Path, *,
                    order: list[str]) -> tuple[TensorDifference | None, float | None]:
    """Compare two safetensors state dicts tensor by tensor.

    Returns:
        The first tensor, in ``order`` (then any other names, sorted), whose
        name, shape, dtype or bytes differ, with its maximum absolute
        difference; and the relative L2 distance ``||replayed - recorded|| /
        ||recorded||`` over all floating-point tensors (parameters and
        BatchNorm running statistics), or None when the names or shapes differ.
    """
    from safetensors.torch import load_file

    from repro_lits.hashing import tensor_bytes

    recorded = load_file(str(recorded_file))
    replayed = load_file(str(replayed_file))
    names = [name for name in order if name in recorded or name in replayed]
    names += sorted((set(recorded) | set(replayed)) - set(names))

    first = None
    squared_distance = squared_norm = 0.0
    comparable = True
    for name in names:
        before, after = recorded.get(name), replayed.get(name)
        if before is None or after is None or before.shape != after.shape or before.dtype != after.dtype:
            comparable = False
            if first is None:
                shape = tuple((before if before is not None else after).shape)
                first = TensorDifference(name, shape, None)
            continue
        if first is None and tensor_bytes(before) != tensor_bytes(after):
            delta = (after.double() - before.double()).abs().max().item()
            first = TensorDifference(name, tuple(before.shape), delta)
        if before.is_floating_point():
            squared_distance += (after.double() - before.double()).pow(2).sum().item()
            squared_norm += before.double().pow(2).sum().item()

    if not comparable:
        return first, None
    if squared_norm == 0.0:
        relative_l2 = 0.0 if squared_distance == 0.0 else math.inf
    else:
        relative_l2 = math.sqrt(squared_distance / squared_norm)
    return first, relative_l2


def compare_predictions(recorded_file: Path, replayed_file: Path) -> dict[str, int | None]:
    """Count the voxels whose predicted label differs, per test case; None for a case missing or of another shape."""
    recorded = _load_predictions(recorded_file)
    replayed = _load_predictions(replayed_file)
    counts: dict[str, int | None] = {}
    for case in sorted(set(recorded) | set(replayed)):
        before, after = recorded.get(case), replayed.get(case)
        if before is None or after is None or before.shape != after.shape:
            counts[case] = None
        else:
            counts[case] = int((before != after).sum())
    return counts
