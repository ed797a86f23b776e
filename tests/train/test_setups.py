"""Tests of the three setups, each applied in a fresh Python process so no switch leaks into pytest."""

import json
import os
import subprocess
import sys

import pytest

from repro_lits.errors import ConfigError
from repro_lits.setups import SETUPS, apply_setup, python_hash_seed, run_seed

# Applies a setup, then draws one number from each generator and prints everything as JSON.
SCRIPT = """
import json, random, sys
import numpy as np, torch
from repro_lits.setups import apply_setup
arguments = json.loads(sys.argv[1])
applied = apply_setup(**arguments)
print(json.dumps({
    "seeds": applied.seeds, "switches": applied.switches, "threads": applied.threads,
    "draws": [torch.rand(1).item(), float(np.random.random()), random.random(),
              torch.rand(1, generator=applied.loader_generator).item()],
}))
"""


def _apply_in_subprocess(**arguments) -> dict:
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONHASHSEED", "CUBLAS_WORKSPACE_CONFIG")}
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(arguments)],
        capture_output=True, text=True, check=True, env=environment, timeout=120,
    )
    return json.loads(completed.stdout)


def test_deterministic_switches_applied():
    result = _apply_in_subprocess(name="deterministic", seed=7, threads=1, interop_threads=1)
    switches = result["switches"]
    assert switches["use_deterministic_algorithms"] is True
    assert switches["deterministic_warn_only"] is False
    assert switches["cudnn_deterministic"] is True
    assert switches["cudnn_benchmark"] is False
    assert switches["cuda_matmul_fp32_precision"] == "ieee"
    assert switches["cudnn_conv_fp32_precision"] == "ieee"
    assert switches["environment"]["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert switches["environment"]["PYTHONHASHSEED"] == "7"
    assert result["threads"] == {"intra_op": 1, "inter_op": 1}


def test_seed_setup_seeds_every_generator():
    result = _apply_in_subprocess(name="seed", seed=7, threads=2, interop_threads=1)
    seeds = result["seeds"]
    assert seeds["mode"] == "set"
    assert [seeds[k] for k in ("run_seed", "torch_initial_seed", "numpy_seed", "python_seed", "loader_seed")] == [7] * 5
    assert seeds["python_hash_seed"] == "7"
    assert result["switches"]["use_deterministic_algorithms"] is False
    assert result["switches"]["cudnn_benchmark"] is True
    assert result["threads"] == {"intra_op": 2, "inter_op": 1}

    import random

    import numpy as np
    import torch

    expected_torch = torch.rand(1, generator=torch.Generator().manual_seed(7)).item()
    assert result["draws"][0] == expected_torch
    assert result["draws"][1] == np.random.RandomState(7).random_sample()
    assert result["draws"][2] == random.Random(7).random()
    assert result["draws"][3] == expected_torch


def test_random_seeds_differ_and_replay():
    first = _apply_in_subprocess(name="random", seed=None, threads=1, interop_threads=1)
    second = _apply_in_subprocess(name="random", seed=None, threads=1, interop_threads=1)
    assert first["seeds"]["mode"] == "observed"
    assert first["seeds"]["run_seed"] is None
    assert first["seeds"]["torch_initial_seed"] != second["seeds"]["torch_initial_seed"]
    assert first["draws"] != second["draws"]

    replay = _apply_in_subprocess(name="random", seed=None, threads=1, interop_threads=1,
                                  replay_seeds=first["seeds"])
    assert replay["seeds"]["replayed"] is True
    assert replay["seeds"]["torch_initial_seed"] == first["seeds"]["torch_initial_seed"]
    assert replay["draws"] == first["draws"]


def test_seed_rule():
    assert run_seed({"seed": 42, "seed_rule": "fixed"}, 5) == 42
    assert run_seed({"seed": 42, "seed_rule": "run-index"}, 5) == 47


def test_hash_seed_per_setup():
    run = {"seed": 42, "seed_rule": "fixed"}
    assert python_hash_seed("random", run, 3) is None
    assert python_hash_seed("seed", run, 3) == "42"
    assert python_hash_seed("deterministic", run, 3) == "42"
    assert python_hash_seed("random", run, 3, {"python_hash_seed": "9"}) == "9"


def test_setups_are_ordered_as_study():
    assert list(SETUPS) == ["random", "seed", "deterministic"]


def test_unknown_setup_rejected():
    with pytest.raises(ConfigError, match="unknown setup 'fast'"):
        apply_setup("fast", seed=1, threads=1, interop_threads=1)
