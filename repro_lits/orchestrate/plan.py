"""Run specs, the results folder layout, and planning: which runs are finished and which are still to do.

Layout of one experiment's results (``RESULTS/<experiment name>/``)::

    experiment.json             resolved config and config hash the folder belongs to
    runs/<run_id>/              published runs: record.json, weights.safetensors, predictions.npz, worker.log
    runs.parquet, volumes.parquet, epochs.parquet
    .claims/<run_id>.json       which orchestrator runs which run now
    .staging/<run_id>.<token>/  runs in progress; never read as results
    .trash/                     replaced run folders on their way out

A run is published by renaming its complete staging folder to ``runs/<run_id>``,
so ``runs/`` contains only runs whose record was written in full. A run
without ``record.json`` did not happen.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repro_lits.config import ExperimentConfig
from repro_lits.errors import ConfigError, UserInputError
from repro_lits.record import RECORD_NAME, read_record

logger = logging.getLogger(__name__)

#: The study's three setups, in the order runs are planned and tables are sorted.
SETUPS = ("random", "seed", "deterministic")

#: File in the experiment folder that binds the folder to one config hash.
EXPERIMENT_FILE = "experiment.json"


def run_id_for(setup: str, run_index: int) -> str:
    """Return the run id, for example ``deterministic-003`` for setup ``deterministic`` and run index 3."""
    return f"{setup}-{run_index:03d}"


@dataclass(frozen=True)
class RunSpec:
    """One run of an experiment: the resolved config, the setup and the 0-based run index."""

    config: ExperimentConfig
    setup: str
    run_index: int

    @property
    def run_id(self) -> str:
        return run_id_for(self.setup, self.run_index)

    @property
    def key(self) -> tuple[str, str, int]:
        """Identity of the run: (config hash, setup, run index)."""
        return (self.config.config_hash, self.setup, self.run_index)

    def worker_spec(self, *, cache_dir: Path, run_dir: Path) -> dict[str, Any]:
        """Build the JSON spec that ``python -m repro_lits.worker`` reads."""
        return {
            "config": self.config.to_dict(),
            "setup": self.setup,
            "run_index": self.run_index,
            "cache_dir": str(cache_dir),
            "run_dir": str(run_dir),
        }


def expand_setups(setup: str) -> tuple[str, ...]:
    """Turn a ``--setup`` value (one setup or ``all``) into the setups to run."""
    if setup == "all":
        return SETUPS
    if setup not in SETUPS:
        raise UserInputError(f"unknown setup {setup!r}; expected one of {', '.join(SETUPS)} or all")
    return (setup,)


def plan_runs(config: ExperimentConfig, *, setups: tuple[str, ...], runs: int) -> list[RunSpec]:
    """List the runs with indices ``0 .. runs-1`` of every setup, interleaved by run index.

    Interleaving (random-000, seed-000, deterministic-000, random-001, ...) gives
    every setup some finished runs early, when a long study is stopped half way.
    """
    if runs < 1:
        raise UserInputError(f"--runs {runs}: expected 1 or more runs per setup")
    return [RunSpec(config, setup, index) for index in range(runs) for setup in setups]


@dataclass(frozen=True)
class ExperimentLayout:
    """Paths of one experiment's results folder (see the module docstring)."""

    root: Path

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def claims_dir(self) -> Path:
        return self.root / ".claims"

    @property
    def staging_dir(self) -> Path:
        return self.root / ".staging"

    @property
    def trash_dir(self) -> Path:
        return self.root / ".trash"

    @property
    def experiment_file(self) -> Path:
        return self.root / EXPERIMENT_FILE

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def record_path(self, run_id: str) -> Path:
        return self.runs_dir / run_id / RECORD_NAME

    def create(self) -> None:
        for folder in (self.runs_dir, self.claims_dir, self.staging_dir, self.trash_dir):
            folder.mkdir(parents=True, exist_ok=True)


def layout_for(results_dir: Path, config: ExperimentConfig) -> ExperimentLayout:
    """Return the layout of ``results_dir/<experiment name>``."""
    name = config.name
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"experiment.name = {name!r} cannot name a results folder; use letters, digits, - or _")
    return ExperimentLayout(Path(results_dir) / name)


def load_run_record(layout: ExperimentLayout, run_id: str) -> dict | None:
    """Read a published run's record; None when the run has none or it is unreadable (logged, then redone)."""
    path = layout.record_path(run_id)
    if not path.is_file():
        return None
    try:
        return read_record(path)
    except UserInputError as err:
        logger.warning("ignoring run %s: %s", run_id, err)
        return None


def published_records(layout: ExperimentLayout) -> dict[str, dict]:
    """Read every published run's record, keyed by run id; unreadable ones are logged and left out."""
    records: dict[str, dict] = {}
    if not layout.runs_dir.is_dir():
        return records
    for run_dir in sorted(layout.runs_dir.iterdir()):
        if run_dir.name.startswith(".") or not run_dir.is_dir():
            continue
        record = load_run_record(layout, run_dir.name)
        if record is not None:
            records[run_dir.name] = record
    return records


def bind_experiment(layout: ExperimentLayout, config: ExperimentConfig) -> None:
    """Tie the results folder to this config, or raise ConfigError when it belongs to another one.

    The first orchestrator writes ``experiment.json`` (config values and hash);
    later ones compare hashes. Published records are checked as well, so a
    folder filled before ``experiment.json`` existed is also protected.
    """
    layout.create()
    expected = config.config_hash
    _write_once(layout.experiment_file, {"config_hash": expected, "config": config.to_dict()})

    try:
        bound = json.loads(layout.experiment_file.read_text(encoding="utf-8"))["config_hash"]
    except (ValueError, KeyError) as err:
        raise ConfigError(
            f"{layout.experiment_file} is invalid ({err}); delete it to rebind the folder {layout.root}"
        ) from err
    if bound != expected:
        raise ConfigError(_mismatch_message(layout, bound, expected))

    for run_id, record in published_records(layout).items():
        if record["config_hash"] != expected:
            raise ConfigError(_mismatch_message(layout, record["config_hash"], expected, run_id=run_id))


def check_dataset(layout: ExperimentLayout, fingerprint: str) -> None:
    """Raise ConfigError when finished runs in the folder used a dataset with another fingerprint."""
    for run_id, record in published_records(layout).items():
        recorded = record.get("dataset_fingerprint")
        if record["status"] == "finished" and recorded and recorded != fingerprint:
            raise ConfigError(
                f"{layout.root}: run {run_id} used dataset {recorded[:12]}, but the data now has fingerprint "
                f"{fingerprint[:12]}; use another --results folder or restore the data the runs used"
            )


def _mismatch_message(layout: ExperimentLayout, found: str, expected: str, run_id: str | None = None) -> str:
    where = f"run {run_id} in {layout.root}" if run_id else str(layout.root)
    return (
        f"{where} belongs to experiment {layout.root.name!r} with config hash {found[:12]}, but this config "
        f"hashes to {expected[:12]}; use another --results folder or rename the experiment (experiment.name)"
    )


def _write_once(path: Path, content: dict) -> None:
    """Create ``path`` with ``content`` unless it exists; two writers never produce a half-written file."""
    if path.exists():
        return
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(content, stream, indent=2, sort_keys=True)
            stream.flush()
            os.fsync(stream.fileno())
        os.link(temp_name, path)
    except FileExistsError:
        pass
    finally:
        Path(temp_name).unlink(missing_ok=True)
