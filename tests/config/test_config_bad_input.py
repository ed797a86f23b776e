"""Invalid experiment values: each raises a one-line ConfigError naming the key, and the CLI exits with status 2."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from repro_lits.cli import app
from repro_lits.config import load_experiment
from repro_lits.errors import ConfigError


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("training.learning_rate=nan", "expected finite numbers"),
        ("training.learning_rate=inf", "expected finite numbers"),
        ("data.spacing_mm=nan", "expected finite numbers"),
        ("training.class_weights=[nan, 1, 1]", "expected finite numbers"),
        ("training.focal_gamma=-1", "training.focal_gamma = -1.0; expected 0 or more"),
        ("training.plateau_factor=2", "training.plateau_factor = 2.0; expected a factor between 0 and 1"),
        ("training.plateau_factor=0", "training.plateau_factor = 0.0; expected a factor between 0 and 1"),
        ("training.plateau_patience=-1", "training.plateau_patience = -1; expected 0 or more"),
        ("training.min_lr=-1", "training.min_lr = -1.0; expected 0 or more"),
        ("data.synthetic_cases=1", "data.synthetic_cases = 1; expected at least 2"),
        ("data.source=''", "data.source is empty"),
        ("run.seed=-1", "run.seed = -1; expected an integer from 0 to 2**64 - 1"),
        ("run.seed=99999999999999999999", "run.seed = 99999999999999999999; expected an integer from 0"),
        ("data.split_seed=-5", "data.split_seed = -5; expected an integer"),
        ("data.synthetic_seed=-1", "data.synthetic_seed = -1; expected an integer"),
        ('data.hu_window=["a", "b"]', "data.hu_window = ['a', 'b']; expected a list of numbers"),
    ],
)
def test_override_invalid_value(override, expected):
    with pytest.raises(ConfigError) as caught:
        load_experiment("smoke", [override])
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_edge_values_accepted():
    config = load_experiment("smoke", ["training.plateau_factor=0.5", "run.seed=0", "training.focal_gamma=0"])
    assert config.training["plateau_factor"] == 0.5
    assert config.run["seed"] == 0


def test_cli_nan_learning_rate_exit_2(tmp_path: Path):
    result = CliRunner().invoke(
        app,
        ["data", "prepare", "--src", str(tmp_path), "--out", str(tmp_path / "cache"),
         "--experiment", str(_experiment_file(tmp_path, "[training]\nlearning_rate = nan\n"))],
    )
    assert result.exit_code == 2
    assert "training.learning_rate = nan; expected finite numbers" in result.output
    assert "Traceback" not in result.output


def _experiment_file(folder: Path, text: str) -> Path:
    path = folder / "bad.toml"
    path.write_text(text, encoding="utf-8")
    return path
