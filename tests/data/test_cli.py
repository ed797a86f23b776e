"""The ``repro-lits data`` commands through typer's CliRunner."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from repro_lits.cli.data import app


def test_synth_then_prepare(tmp_path):
    runner = CliRunner()
    raw = tmp_path / "raw"
    result = runner.invoke(app, ["synth", "--out", str(raw), "--cases", "3", "--seed", "5"])
    assert result.exit_code == 0, result.output
    assert "wrote 3 cases" in result.stdout
    info = json.loads((raw / "synth.json").read_text())
    assert info["seed"] == 5
    assert sorted(info["sha256"]) == sorted(p.name for p in raw.glob("*.nii.gz"))

    cache = tmp_path / "cache"
    result = runner.invoke(app, ["prepare", "--src", str(raw), "--out", str(cache), "--experiment", "smoke"])
    assert result.exit_code == 0, result.output
    assert "prepared 3 cases" in result.stdout
    assert "3 computed" in result.stdout
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["params"] == {"mode": "mlf-core", "slice_count": 64, "downscale": 2, "cube_size": 16}
    assert manifest["fingerprint"] in result.stdout

    again = runner.invoke(app, ["prepare", "--src", str(raw), "--out", str(cache), "--experiment", "smoke", "--cube-size", "8"])
    assert again.exit_code == 0, again.output
    assert json.loads((cache / "manifest.json").read_text())["params"]["cube_size"] == 8


def test_prepare_spacing_mode_options(tmp_path):
    runner = CliRunner()
    raw = tmp_path / "raw"
    assert runner.invoke(app, ["synth", "--out", str(raw), "--cases", "2"]).exit_code == 0
    result = runner.invoke(
        app,
        ["prepare", "--src", str(raw), "--out", str(tmp_path / "c"), "--mode", "spacing",
         "--spacing-mm", "6", "--hu-window", "-150", "250", "--cube-size", "24"],
    )
    assert result.exit_code == 0, result.output
    params = json.loads((tmp_path / "c" / "manifest.json").read_text())["params"]
    assert params == {"mode": "spacing", "spacing_mm": 6.0, "hu_window": [-150.0, 250.0], "cube_size": 24}


def test_prepare_unknown_mode_is_user_error(tmp_path):
    result = CliRunner().invoke(app, ["prepare", "--src", str(tmp_path), "--out", str(tmp_path / "c"), "--mode", "bogus"])
    assert result.exit_code == 2
    assert "error: mode 'bogus'; expected one of ['mlf-core', 'spacing']" in result.output


def test_synth_one_case_is_user_error(tmp_path):
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path), "--cases", "1"])
    assert result.exit_code == 2
    assert "error: --cases 1: expected at least 2 cases" in result.output
