"""Tests of experiment files: presets, defaults, overrides, validation and the config hash."""

from pathlib import Path

import pytest

from repro_lits.config import DEFAULTS, config_from_dict, load_experiment
from repro_lits.errors import ConfigError


@pytest.mark.parametrize("preset", ["smoke", "cpu", "paper"])
def test_presets_load_and_name_themselves(preset):
    config = load_experiment(preset)
    assert config.name == preset
    assert set(config.values) == set(DEFAULTS)
    assert len(config.config_hash) == 64


def test_paper_preset_has_study_values():
    config = load_experiment("paper")
    assert config.data["cube_size"] == 128
    assert config.data["slice_count"] == 512
    assert config.model["width"] == 32
    assert config.model["dropout"] == 0.25
    assert config.training["batch_size"] == 4
    assert config.training["epochs"] == 1201
    assert config.training["learning_rate"] == 1e-4
    assert config.training["class_weights"] == [0.2, 1.0, 2.5]
    assert config.training["validate_every"] == 10


def test_override_changes_value_and_hash():
    base = load_experiment("smoke")
    changed = load_experiment("smoke", ["training.epochs=7"])
    assert changed.training["epochs"] == 7
    assert changed.config_hash != base.config_hash


def test_int_for_float_key_hashes_like_float(tmp_path: Path):
    as_int = tmp_path / "a.toml"
    as_float = tmp_path / "b.toml"
    as_int.write_text('[experiment]\nname = "x"\n[training]\nlearning_rate = 1\n')
    as_float.write_text('[experiment]\nname = "x"\n[training]\nlearning_rate = 1.0\n')
    assert load_experiment(as_int).config_hash == load_experiment(as_float).config_hash


def test_description_does_not_change_hash(tmp_path: Path):
    first = tmp_path / "a.toml"
    second = tmp_path / "b.toml"
    first.write_text('[experiment]\nname = "x"\ndescription = "one"\n')
    second.write_text('[experiment]\nname = "x"\ndescription = "two"\n')
    assert load_experiment(first).config_hash == load_experiment(second).config_hash


def test_round_trip_through_dict_keeps_hash():
    config = load_experiment("cpu")
    assert config_from_dict(config.to_dict()).config_hash == config.config_hash


@pytest.mark.parametrize(
    ("text", "match"),
    [
        pytest.param("[training]\nepochs = 0\n", "training.epochs = 0", id="zero-epochs"),
        pytest.param("[training]\nepochs = 'ten'\n", "expected int", id="string-epochs"),
        pytest.param("[trainig]\nepochs = 3\n", r"unknown section \[trainig\]", id="typo-section"),
        pytest.param("[training]\nepoch = 3\n", "unknown key training.epoch", id="typo-key"),
        pytest.param("[data]\nmode = 'fast'\n", "data.mode = 'fast'", id="bad-mode"),
        pytest.param("[training]\nclass_weights = [1.0, 2.0]\n", "class_weights", id="two-weights"),
        pytest.param("[data]\ncube_size = 30\n", "multiple of 4", id="cube-not-divisible"),
        pytest.param("[model]\ndropout = 1.5\n", r"model.dropout = 1.5", id="dropout-above-one"),
        pytest.param("[training\n", "invalid TOML", id="broken-toml"),
    ],
)
def test_invalid_experiment_rejected(tmp_path: Path, text: str, match: str):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_experiment(path)


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="unknown experiment 'nope'.*cpu"):
        load_experiment("nope")


def test_missing_file_named():
    with pytest.raises(ConfigError, match="experiment file not found: missing.toml"):
        load_experiment("missing.toml")


@pytest.mark.parametrize("override", ["epochs=3", "training.nope=3", "training.epochs"])
def test_invalid_override_rejected(override: str):
    with pytest.raises(ConfigError, match="invalid override"):
        load_experiment("smoke", [override])
