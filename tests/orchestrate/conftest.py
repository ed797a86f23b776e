"""Fixtures of the orchestration tests: the smoke experiment with one epoch, its prepared data, and real runs."""

from __future__ import annotations

import pytest

from repro_lits.config import ExperimentConfig, load_experiment
from repro_lits.orchestrate import ExperimentResult, run_experiment

#: Overrides that make the smoke preset's runs as short as possible.
ONE_EPOCH = ["training.epochs=1"]


@pytest.fixture(scope="session")
def smoke_config() -> ExperimentConfig:
    return load_experiment("smoke", ONE_EPOCH)


@pytest.fixture(scope="session")
def prepared(smoke_config, tmp_path_factory):
    """The smoke experiment's synthetic dataset, prepared once per test session."""
    from repro_lits.data.cache import ensure_dataset

    return ensure_dataset(smoke_config, cache_root=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def local_study(smoke_config, prepared, tmp_path_factory) -> ExperimentResult:
    """One real run of each setup of the smoke experiment, trained locally with two jobs."""
    results = tmp_path_factory.mktemp("local-study")
    return run_experiment(
        smoke_config, setup="all", runs=1, results_dir=results, cache_dir=prepared.root,
        dataset_fingerprint=prepared.fingerprint, jobs=2,
    )

