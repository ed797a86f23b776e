"""One training run: apply the setup, train, test, hash and write the run record.

A run spec is a dict (the worker reads it from JSON):

- ``config``: resolved experiment values (``ExperimentConfig.to_dict()``);
- ``setup``: ``random``, ``seed`` or ``deterministic``;
- ``run_index``: int, 0 or more;
- ``cache_dir``: the prepared dataset folder (the one with ``manifest.json``);
- ``run_dir``: the folder the run writes its files to;
- ``seeds`` (optional): the ``seeds`` section of an earlier record, to replay it;
- ``threads`` (optional): an int (intra-op threads) or a dict with
  ``intra_op`` and ``inter_op``, overriding the config's thread counts;
- ``replay_epochs`` (optional): train only this many epochs.

Images are (N, 1, X, Y, Z) float32 batches of the prepared cubes, labels
(N, X, Y, Z) int64, predictions (X, Y, Z) uint8 per test case.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

import repro_lits
from repro_lits import environment
from repro_lits.config import ExperimentConfig, config_from_dict
from repro_lits.data.cache import PreparedDataset, load_prepared
from repro_lits.errors import ConfigError
from repro_lits.hashing import model_sha256, predictions_sha256, state_dict_sha256
from repro_lits.loss import FocalLoss
from repro_lits.metrics import StudyIoU, class_counts, summarize_test
from repro_lits.model import build_model, count_parameters
from repro_lits.record import PREDICTIONS_NAME, SCHEMA_VERSION, WEIGHTS_NAME, write_record
from repro_lits.setups import SETUP_NAMES, AppliedSetup, apply_setup, run_seed, seed_worker

logger = logging.getLogger(__name__)

#: Maximum length of the error text stored in a failed run's record.
MAX_ERROR_CHARS = 1000

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class RunSpec:
    """A validated run spec (see the module docstring for the keys)."""

    config: ExperimentConfig
    setup: str
    run_index: int
    cache_dir: Path
    run_dir: Path
    seeds: dict | None
    intra_op_threads: int
    inter_op_threads: int
    replay_epochs: int | None

    @property
    def run_id(self) -> str:
        return f"{self.setup}-{self.run_index:03d}"


def parse_spec(spec: dict) -> RunSpec:
    """Validate a run spec dict and resolve its config; ConfigError names the first invalid key."""
    if not isinstance(spec, dict):
        raise ConfigError(f"run spec must be a JSON object, found {type(spec).__name__}")
    missing = [key for key in ("config", "setup", "run_index", "cache_dir", "run_dir") if key not in spec]
    if missing:
        raise ConfigError(f"run spec lacks keys {missing}; expected config, setup, run_index, cache_dir, run_dir")
    if spec["setup"] not in SETUP_NAMES:
        raise ConfigError(f"run spec setup = {spec['setup']!r}; expected one of {list(SETUP_NAMES)}")
    run_index = spec["run_index"]
    if not isinstance(run_index, int) or isinstance(run_index, bool) or run_index < 0:
        raise ConfigError(f"run spec run_index = {run_index!r}; expected an integer, 0 or more")

    config = config_from_dict(spec["config"], origin="run spec")
    intra_op, inter_op = config.run["threads"], config.run["interop_threads"]
    threads = spec.get("threads")
    if isinstance(threads, int) and not isinstance(threads, bool):
        intra_op = threads
    elif isinstance(threads, dict):
        intra_op = threads.get("intra_op", intra_op)
        inter_op = threads.get("inter_op", inter_op)
    elif threads is not None:
        raise ConfigError(f"run spec threads = {threads!r}; expected an int or {{'intra_op': n, 'inter_op': m}}")
    for name, value in (("intra_op", intra_op), ("inter_op", inter_op)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"run spec threads.{name} = {value!r}; expected a positive integer")

    replay_epochs = spec.get("replay_epochs")
    if replay_epochs is not None and (not isinstance(replay_epochs, int) or replay_epochs <= 0):
        raise ConfigError(f"run spec replay_epochs = {replay_epochs!r}; expected a positive integer or null")
    seeds = spec.get("seeds")
    if seeds is not None and not isinstance(seeds, dict):
        raise ConfigError(f"run spec seeds = {seeds!r}; expected the seeds object of a run record or null")

    return RunSpec(
        config=config,
        setup=spec["setup"],
        run_index=run_index,
        cache_dir=Path(spec["cache_dir"]),
        run_dir=Path(spec["run_dir"]),
        seeds=seeds,
        intra_op_threads=intra_op,
        inter_op_threads=inter_op,
        replay_epochs=replay_epochs,
    )


class CubeDataset(Dataset):
    """Prepared cubes of some cases: item i is ((1, X, Y, Z) float32 image, (X, Y, Z) int64 labels)."""

    def __init__(self, dataset: PreparedDataset, cases: tuple[str, ...]) -> None:
        self.dataset = dataset
        self.cases = tuple(cases)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        case = self.cases[index]
        image = torch.from_numpy(np.array(self.dataset.image(case), dtype=np.float32))
        labels = torch.from_numpy(np.array(self.dataset.label(case), dtype=np.int64))
        return image.unsqueeze(0), labels


def resolve_device(requested: str) -> torch.device:
    """Map ``auto`` to CUDA when available, else CPU; ConfigError for ``cuda`` without CUDA."""
    if requested == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device = 'cuda' but PyTorch finds no CUDA device; set run.device = 'auto' or 'cpu'")
    return torch.device("cuda:0" if requested == "cuda" else "cpu")


def execute_run(spec: dict, progress: Progress | None = None) -> dict:
    """Run one training run from a spec and write its record; return the record.

    The setup is applied first. A failure after the spec was validated is
    recorded (status ``failed`` and a one-line error) instead of raised.

    Args:
        spec: the run spec (see the module docstring).
        progress: called with one event dict per epoch and at the end
            (``{"event": "epoch" | "finished" | "failed", "run_id": ..., ...}``).

    Raises:
        ConfigError: the spec is invalid (nothing is written then).
    """
    started = time.perf_counter()
    started_at = _utc_now()
    run = parse_spec(spec)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    record = _identity(run)
    record["started_at"] = started_at

    try:
        applied = apply_setup(
            run.setup,
            seed=run_seed(run.config.run, run.run_index),
            threads=run.intra_op_threads,
            interop_threads=run.inter_op_threads,
            replay_seeds=run.seeds,
        )
        record["seeds"] = applied.seeds
        record["switches"] = applied.switches
        record["threads"] = applied.threads
        device = resolve_device(run.config.run["device"])
        record["device"] = str(device)
        record["environment"] = environment.collect()
        record.update(_train_and_test(run, applied, device, record, progress))
        record["status"] = "finished"
    except Exception as err:  # noqa: BLE001 - every failure is recorded, then reported by status
        logger.exception("run %s failed", run.run_id)
        record["status"] = "failed"
        record["error"] = _one_line(err)

    record["wall_time_s"] = time.perf_counter() - started
    record["peak_memory_mb"] = _peak_memory_mb()
    # NOTE: the CUDA branches (device, GPU memory, CUBLAS_WORKSPACE_CONFIG) have only run on CPU-only machines so far.
    if record["device"].startswith("cuda"):
        record["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(record["device"]) / 2**20
    record["finished_at"] = _utc_now()
    path = write_record(run.run_dir, record)
    if progress is not None:
        progress({"event": record["status"], "run_id": run.run_id, "record": str(path), "error": record["error"]})
    return record


def _identity(run: RunSpec) -> dict[str, Any]:
    """Start a record with the run's identity and empty results, so a failed run has every key."""
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run.run_id,
        "experiment": run.config.name,
        "config_hash": run.config.config_hash,
        "config": run.config.to_dict(),
        "setup": run.setup,
        "run_index": run.run_index,
        "seeds": {},
        "switches": {},
        "threads": {"intra_op": run.intra_op_threads, "inter_op": run.inter_op_threads},
        "replay_epochs": run.replay_epochs,
        "dataset_fingerprint": None,
        "dataset_cases": {},
        "package_version": repro_lits.__version__,
        "git_commit": environment.git_commit(),
        "environment": {},
        "device": "unknown",
        "status": "failed",
        "error": None,
        "model_parameters": None,
        "epochs": [],
        "test": None,
        "weights_sha256": None,
        "predictions_sha256": None,
        "files": {},
        "wall_time_s": None,
        "train_time_s": None,
        "peak_memory_mb": None,
    }


def _train_and_test(run: RunSpec, applied: AppliedSetup, device: torch.device, record: dict,
                    progress: Progress | None) -> dict[str, Any]:
    """Train, validate, test and save the files; return the record's result keys.

    ``record["epochs"]`` grows as epochs finish, so a failed run keeps the epochs it completed.
    """
    dataset = load_prepared(run.cache_dir)
    record["dataset_fingerprint"] = dataset.fingerprint
    # Per-case hashes let a replay on changed data name the cases that differ.
    record["dataset_cases"] = {
        case: dataset.case_sha256(case) for case in (*dataset.train_cases, *dataset.test_cases)
    }
    training, model_config = run.config.training, run.config.model
    train_loader = DataLoader(
        CubeDataset(dataset, dataset.train_cases),
        batch_size=training["batch_size"],
        shuffle=True,
        generator=applied.loader_generator,
        worker_init_fn=seed_worker,
        num_workers=training["num_workers"],
    )
    test_cases = tuple(sorted(dataset.test_cases))
    test_loader = DataLoader(CubeDataset(dataset, test_cases), batch_size=1, shuffle=False,
                             num_workers=training["num_workers"])

    model = build_model(model_config).to(device)
    record["model_parameters"] = count_parameters(model)
    criterion = FocalLoss(training["class_weights"], gamma=training["focal_gamma"])
    optimizer = torch.optim.Adam(model.parameters(), lr=training["learning_rate"])
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=training["plateau_factor"],
        patience=training["plateau_patience"], min_lr=training["min_lr"],
    )

    epochs = training["epochs"] if run.replay_epochs is None else min(run.replay_epochs, training["epochs"])
    train_started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        entry = _train_epoch(model, train_loader, criterion, optimizer, device, epoch)
        scheduler.step(entry["loss"])
        validate_every = training["validate_every"]
        if validate_every and epoch % validate_every == 0:
            entry["val_iou"] = _validate(model, test_loader, device)
        record["epochs"].append(entry)
        logger.info("run %s epoch %d/%d loss %.5f", run.run_id, epoch, epochs, entry["loss"])
        if progress is not None:
            progress({"event": "epoch", "run_id": run.run_id, "epoch": epoch, "epochs": epochs, "loss": entry["loss"]})
    train_time = time.perf_counter() - train_started

    predictions, volume_counts = _predict(model, test_loader, test_cases, device)
    weights_hash = _save_weights(model, run.run_dir / WEIGHTS_NAME)
    _save_predictions(predictions, run.run_dir / PREDICTIONS_NAME)
    return {
        "test": summarize_test(volume_counts),
        "weights_sha256": weights_hash,
        "predictions_sha256": predictions_sha256(predictions),
        "files": {"weights": WEIGHTS_NAME, "predictions": PREDICTIONS_NAME},
        "train_time_s": train_time,
    }


def _train_epoch(model: torch.nn.Module, loader: DataLoader, criterion: FocalLoss,
                 optimizer: torch.optim.Optimizer, device: torch.device, epoch: int) -> dict[str, Any]:
    """Train one epoch; return its record entry with the mean of the batch losses."""
    started = time.perf_counter()
    learning_rate = optimizer.param_groups[0]["lr"]
    model.train()
    loss_sum, batches = 0.0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(images), labels)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item()
        batches += 1
    if batches == 0:
        raise ConfigError("the training split is empty; the prepared dataset needs at least one training case")
    return {
        "epoch": epoch,
        "loss": loss_sum / batches,
        "learning_rate": learning_rate,
        "wall_time_s": time.perf_counter() - started,
        "weights_sha256": model_sha256(model),
        "val_iou": None,
    }


@torch.no_grad()
def _validate(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float | None]:
    """Return the study's IoU per class over the loader's volumes (batch size 1)."""
    model.eval()
    metric = StudyIoU()
    for images, labels in loader:
        prediction = model(images.to(device)).argmax(dim=1)
        metric.update(prediction, labels)
    return metric.compute()


@torch.no_grad()
def _predict(model: torch.nn.Module, loader: DataLoader, cases: tuple[str, ...],
             device: torch.device) -> tuple[dict[str, np.ndarray], dict]:
    """Predict every test case; return case -> (X, Y, Z) uint8 labels and case -> class counts."""
    model.eval()
    predictions, counts = {}, {}
    for case, (images, labels) in zip(cases, loader, strict=True):
        labels_out = model(images.to(device)).argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
        predictions[case] = labels_out
        counts[case] = class_counts(labels_out, labels[0])
    return predictions, counts


def _save_weights(model: torch.nn.Module, path: Path) -> str:
    """Write the state dict (parameters and buffers) as safetensors, atomically; return its SHA-256."""
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    digest = state_dict_sha256(state)
    temp = _temp_path(path)
    try:
        save_file(state, str(temp), metadata={"weights_sha256": digest})
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return digest


def _save_predictions(predictions: dict[str, np.ndarray], path: Path) -> None:
    """Write case id -> (X, Y, Z) uint8 predictions with np.savez_compressed, atomically."""
    temp = _temp_path(path)
    try:
        with open(temp, "wb") as stream:
            np.savez_compressed(stream, **predictions)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _temp_path(path: Path) -> Path:
    handle, name = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    os.close(handle)
    return Path(name)


def _peak_memory_mb() -> float:
    """Peak resident memory of this process in MiB, from getrusage (Unix) or psutil (Windows).

    ru_maxrss is in KiB on Linux and in bytes on macOS.
    """
    try:
        import resource
    except ImportError:
        return psutil.Process().memory_info().peak_wset / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or "no message"
    return f"{type(err).__name__}: {text}"[:MAX_ERROR_CHARS]


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
