"""Experiment files (TOML): defaults, validation, overrides and the config hash.

An experiment file states every setting that determines a run's result. Keys
missing from a file take the defaults below, which are the published study's
values where the study fixed one. The resolved config (every key, after
defaults and overrides) is what a run records, and its hash identifies the
experiment.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repro_lits.errors import ConfigError

#: Folder of the shipped experiment files (``smoke``, ``cpu``, ``paper``) in a source checkout.
EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"

#: Preset used when no experiment is given.
DEFAULT_EXPERIMENT = "cpu"

#: Every key an experiment may set, with its default. Sections group the keys by the module that reads them.
DEFAULTS: dict[str, dict[str, Any]] = {
    "experiment": {
        "name": "unnamed",
        "description": "",
    },
    "data": {
        # "synthetic" (the embedded phantoms) or a path to a raw dataset folder.
        "source": "synthetic",
        "synthetic_cases": 30,
        "synthetic_seed": 0,
        # "mlf-core" (the study's preprocessing) or "spacing" (isotropic resampling).
        "mode": "mlf-core",
        # mlf-core mode: slice axis padded or cut to this many slices (study: 512).
        "slice_count": 512,
        # mlf-core mode: block-mean downscale factor on every axis (study: 2).
        "downscale": 2,
        # Edge length in voxels of the cube cropped around the liver centre (study: 128).
        "cube_size": 128,
        # spacing mode: isotropic voxel spacing in mm and the HU window scaled to [0, 1].
        "spacing_mm": 2.0,
        "hu_window": [-200.0, 300.0],
        # Test split for datasets other than the 131 LiTS volumes (which use the study's 13).
        "test_fraction": 0.1,
        "split_seed": 0,
    },
    "model": {
        # Channels of the first encoder block (study: 32); deeper blocks use 2x and 4x.
        "width": 32,
        # Dropout3d rate inside every conv block (study: 0.25).
        "dropout": 0.25,
        # Dropout3d rate before every down- and upsampling step (study: 0.001).
        "sampling_dropout": 0.001,
    },
    "training": {
        "epochs": 1201,
        "batch_size": 4,
        "learning_rate": 1e-4,
        # Focal loss class weights (background, liver, tumor), normalised to sum 1.
        "class_weights": [0.2, 1.0, 2.5],
        "focal_gamma": 2.0,
        # ReduceLROnPlateau on the epoch's mean training loss.
        "plateau_factor": 0.1,
        "plateau_patience": 10,
        "min_lr": 1e-6,
        # Validate on the test split every this many epochs (0: never; the final test always runs).
        "validate_every": 10,
        "num_workers": 0,
    },
    "run": {
        # Seed of the seed and deterministic setups, 0 to 2**64 - 1 (the range torch.manual_seed accepts).
        "seed": 42,
        # "fixed": every run of an experiment uses `seed` (the study's design);
        # "run-index": run i uses seed + i.
        "seed_rule": "fixed",
        # PyTorch intra-op and inter-op CPU threads, set in every setup.
        "threads": 1,
        "interop_threads": 1,
        # "auto" (CUDA when present, else CPU), "cpu" or "cuda".
        "device": "auto",
    },
}

#: Seeds must fit torch.manual_seed, which rejects values outside 64 bits; NumPy rejects negative seeds.
SEED_LIMIT = 2**64

_CHOICES = {
    ("data", "mode"): ("mlf-core", "spacing"),
    ("run", "seed_rule"): ("fixed", "run-index"),
    ("run", "device"): ("auto", "cpu", "cuda"),
}


@dataclass(frozen=True)
class ExperimentConfig:
    """A resolved experiment: every key set, validated, with its hash.

    Attributes:
        values: section -> key -> value, with every key of :data:`DEFAULTS`.
        source: the experiment file it was read from, or ``None``.
    """

    values: dict[str, dict[str, Any]]
    source: Path | None = None

    @property
    def name(self) -> str:
        return self.values["experiment"]["name"]

    @property
    def data(self) -> dict[str, Any]:
        return self.values["data"]

    @property
    def model(self) -> dict[str, Any]:
        return self.values["model"]

    @property
    def training(self) -> dict[str, Any]:
        return self.values["training"]

    @property
    def run(self) -> dict[str, Any]:
        return self.values["run"]

    @property
    def config_hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON of the resolved values, description excluded."""
        return hash_values(self.values)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return copy.deepcopy(self.values)


def hash_values(values: dict[str, dict[str, Any]]) -> str:
    """Hash resolved config values; the free-text description does not change the hash."""
    hashed = copy.deepcopy(values)
    hashed.get("experiment", {}).pop("description", None)
    canonical = json.dumps(hashed, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def resolve_experiment_path(experiment: str | Path) -> Path:
    """Find an experiment file from a path or a preset name (``smoke``, ``cpu``, ``paper``).

    A preset name is looked up in ``./experiments/`` first, then in the
    experiments folder of the repro-lits checkout.
    """
    path = Path(experiment)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"experiment file not found: {path}; expected a TOML file or a preset name")
        return path
    for folder in (Path.cwd() / "experiments", EXPERIMENTS_DIR):
        candidate = folder / f"{experiment}.toml"
        if candidate.is_file():
            return candidate
    presets = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.toml"))
    raise ConfigError(f"unknown experiment {str(experiment)!r}; expected a .toml path or one of {presets}")


def load_experiment(experiment: str | Path = DEFAULT_EXPERIMENT, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read an experiment file, fill in defaults, apply ``section.key=value`` overrides and validate.

    Args:
        experiment: path to a TOML file, or a preset name.
        overrides: strings such as ``"training.epochs=5"``; the value is parsed as TOML
            (so ``5`` is an int and ``"abc"`` or a bare ``abc`` a string).

    Raises:
        ConfigError: the file cannot be parsed, a key is unknown or a value is invalid.
    """
    path = resolve_experiment_path(experiment)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from err
    values = merge_defaults(raw, origin=str(path))
    if values["experiment"]["name"] == "unnamed":
        values["experiment"]["name"] = path.stem
    for override in overrides or []:
        apply_override(values, override)
    validate(values, origin=str(path))
    return ExperimentConfig(values=values, source=path)


def config_from_dict(values: dict[str, Any], *, origin: str = "record") -> ExperimentConfig:
    """Rebuild a config from resolved values, for example those stored in a run record."""
    merged = merge_defaults(values, origin=origin)
    validate(merged, origin=origin)
    return ExperimentConfig(values=merged)


def merge_defaults(raw: dict[str, Any], *, origin: str) -> dict[str, dict[str, Any]]:
    """Return the defaults updated with ``raw``; unknown sections or keys raise ConfigError."""
    values = copy.deepcopy(DEFAULTS)
    for section, entries in raw.items():
        if section not in DEFAULTS:
            raise ConfigError(f"{origin}: unknown section [{section}]; expected one of {sorted(DEFAULTS)}")
        if not isinstance(entries, dict):
            raise ConfigError(f"{origin}: [{section}] must be a table of keys")
        for key, value in entries.items():
            if key not in DEFAULTS[section]:
                raise ConfigError(
                    f"{origin}: unknown key {section}.{key}; expected one of {sorted(DEFAULTS[section])}"
                )
            values[section][key] = value
    return values


def apply_override(values: dict[str, dict[str, Any]], override: str) -> None:
    """Set one ``section.key=value`` override in place; the value is parsed as TOML, else taken as a string."""
    if "=" not in override or "." not in override.split("=", 1)[0]:
        raise ConfigError(f"invalid override {override!r}; expected section.key=value, e.g. training.epochs=5")
    dotted, text = override.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    if section not in DEFAULTS or key not in DEFAULTS[section]:
        raise ConfigError(f"invalid override {override!r}: unknown key {section}.{key}")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    values[section][key] = value


def validate(values: dict[str, dict[str, Any]], *, origin: str) -> None:
    """Check types and ranges of every key; raise ConfigError naming the first invalid one."""
    for section, defaults in DEFAULTS.items():
        for key, default in defaults.items():
            value = values[section][key]
            _check_type(origin, section, key, value, default)
            values[section][key] = _normalise(value, default)
    for (section, key), choices in _CHOICES.items():
        if values[section][key] not in choices:
            raise ConfigError(
                f"{origin}: {section}.{key} = {values[section][key]!r}; expected one of {list(choices)}"
            )

    positive = [
        ("data", "synthetic_cases"), ("data", "slice_count"), ("data", "downscale"), ("data", "cube_size"),
        ("data", "spacing_mm"), ("model", "width"), ("training", "epochs"), ("training", "batch_size"),
        ("training", "learning_rate"), ("run", "threads"), ("run", "interop_threads"),
    ]
    for section, key in positive:
        if values[section][key] <= 0:
            raise ConfigError(f"{origin}: {section}.{key} = {values[section][key]!r}; expected a positive number")
    for key in ("dropout", "sampling_dropout"):
        if not 0.0 <= values["model"][key] < 1.0:
            raise ConfigError(f"{origin}: model.{key} = {values['model'][key]!r}; expected a rate in [0, 1)")
    if not 0.0 < values["data"]["test_fraction"] < 1.0:
        raise ConfigError(f"{origin}: data.test_fraction = {values['data']['test_fraction']!r}; expected (0, 1)")
    weights = values["training"]["class_weights"]
    if len(weights) != 3 or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(
            f"{origin}: training.class_weights = {weights!r}; expected 3 non-negative numbers with a positive sum"
        )
    window = values["data"]["hu_window"]
    if len(window) != 2 or not window[0] < window[1]:
        raise ConfigError(f"{origin}: data.hu_window = {window!r}; expected [low, high] with low < high")
    if values["data"]["cube_size"] % 4:
        raise ConfigError(
            f"{origin}: data.cube_size = {values['data']['cube_size']!r}; expected a multiple of 4 "
            "(the U-Net halves the cube twice)"
        )
    for section, key in (
        ("training", "validate_every"), ("training", "num_workers"), ("training", "plateau_patience"),
        ("training", "focal_gamma"), ("training", "min_lr"),
    ):
        if values[section][key] < 0:
            raise ConfigError(f"{origin}: {section}.{key} = {values[section][key]!r}; expected 0 or more")
    if not 0.0 < values["training"]["plateau_factor"] < 1.0:
        raise ConfigError(
            f"{origin}: training.plateau_factor = {values['training']['plateau_factor']!r}; "
            "expected a factor between 0 and 1 (ReduceLROnPlateau multiplies the learning rate by it)"
        )
    if values["data"]["synthetic_cases"] < 2:
        raise ConfigError(
            f"{origin}: data.synthetic_cases = {values['data']['synthetic_cases']!r}; "
            "expected at least 2 (one training and one test case)"
        )
    if not values["data"]["source"].strip():
        raise ConfigError(f"{origin}: data.source is empty; expected 'synthetic' or a dataset folder")
    _check_seeds(values, origin)


def _check_seeds(values: dict[str, dict[str, Any]], origin: str) -> None:
    """Check that every seed fits the generators that take it."""
    for section, key in (("run", "seed"), ("data", "synthetic_seed"), ("data", "split_seed")):
        seed = values[section][key]
        if not 0 <= seed < SEED_LIMIT:
            raise ConfigError(f"{origin}: {section}.{key} = {seed!r}; expected an integer from 0 to 2**64 - 1")


def _normalise(value: Any, default: Any) -> Any:
    """Make ints given for float keys floats, so that ``1`` and ``1.0`` hash alike."""
    if isinstance(default, float):
        return float(value)
    if isinstance(default, list) and default and isinstance(default[0], float):
        return [float(v) for v in value]
    return value


def _check_type(origin: str, section: str, key: str, value: Any, default: Any) -> None:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, list):
        ok = isinstance(value, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        )
        if not ok:
            raise ConfigError(f"{origin}: {section}.{key} = {value!r}; expected a list of numbers")
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(
            f"{origin}: {section}.{key} = {value!r} has type {type(value).__name__}; "
            f"expected {type(default).__name__}"
        )
    numbers = value if isinstance(value, list) else [value]
    if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
        raise ConfigError(f"{origin}: {section}.{key} = {value!r}; expected finite numbers, not NaN or infinity")
