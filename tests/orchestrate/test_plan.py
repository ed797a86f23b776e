"""Run specs, planning and the binding of a results folder to one config."""

from __future__ import annotations

import json

import pytest

from repro_lits.config import load_experiment
from repro_lits.errors import ConfigError, UserInputError
from repro_lits.orchestrate import expand_setups, layout_for, plan_runs, run_id_for, with_data_source
from repro_lits.orchestrate.plan import bind_experiment


def test_run_id_pads_index():
    assert run_id_for("deterministic", 3) == "deterministic-003"
    assert run_id_for("seed", 120) == "seed-120"


def test_plan_interleaves_setups(smoke_config):
    specs = plan_runs(smoke_config, setups=expand_setups("all"), runs=2)
    assert [spec.run_id for spec in specs] == [
        "random-000", "seed-000", "deterministic-000", "random-001", "seed-001", "deterministic-001",
    ]


def test_plan_growth_keeps_earlier_runs(smoke_config):
    ten = plan_runs(smoke_config, setups=("seed",), runs=10)
    twenty = plan_runs(smoke_config, setups=("seed",), runs=20)
    assert [spec.key for spec in twenty[:10]] == [spec.key for spec in ten]
    assert len(twenty) == 20


def test_run_key_includes_config_hash(smoke_config):
    other = load_experiment("smoke", ["training.epochs=3"])
    assert plan_runs(smoke_config, setups=("seed",), runs=1)[0].key != plan_runs(other, setups=("seed",), runs=1)[0].key


def test_worker_spec_contents(smoke_config, tmp_path):
    spec = plan_runs(smoke_config, setups=("seed",), runs=1)[0]
    worker_spec = spec.worker_spec(cache_dir=tmp_path / "cache", run_dir=tmp_path / "run")
    assert worker_spec["config"] == smoke_config.to_dict()
    assert worker_spec["setup"] == "seed"
    assert worker_spec["run_index"] == 0
    assert worker_spec["cache_dir"] == str(tmp_path / "cache")
    assert worker_spec["run_dir"] == str(tmp_path / "run")


@pytest.mark.parametrize("setup", ["Random", "seeds", ""])
def test_unknown_setup_rejected(setup):
    with pytest.raises(UserInputError, match="expected one of random, seed, deterministic or all"):
        expand_setups(setup)


def test_zero_runs_rejected(smoke_config):
    with pytest.raises(UserInputError, match="expected 1 or more"):
        plan_runs(smoke_config, setups=("seed",), runs=0)


def test_folder_of_other_config_rejected(smoke_config, tmp_path):
    layout = layout_for(tmp_path, smoke_config)
    bind_experiment(layout, smoke_config)
    bound = json.loads(layout.experiment_file.read_text())
    assert bound["config_hash"] == smoke_config.config_hash

    changed = load_experiment("smoke", ["training.epochs=5"])
    with pytest.raises(ConfigError, match="use another --results folder"):
        bind_experiment(layout_for(tmp_path, changed), changed)


def test_rebinding_same_config_accepted(smoke_config, tmp_path):
    layout = layout_for(tmp_path, smoke_config)
    bind_experiment(layout, smoke_config)
    bind_experiment(layout, smoke_config)
    assert layout.runs_dir.is_dir()


def test_data_folder_made_absolute(smoke_config, tmp_path, monkeypatch):
    (tmp_path / "ct").mkdir()
    monkeypatch.chdir(tmp_path)
    config = with_data_source(smoke_config, "ct")
    assert config.data["source"] == str(tmp_path / "ct")
    assert config.config_hash != smoke_config.config_hash


def test_missing_data_folder_rejected(smoke_config, tmp_path):
    with pytest.raises(UserInputError, match="folder not found"):
        with_data_source(smoke_config, tmp_path / "absent")


def test_synthetic_data_keeps_hash(smoke_config):
    assert with_data_source(smoke_config, "synthetic").config_hash == smoke_config.config_hash
    assert with_data_source(smoke_config, None) is smoke_config
