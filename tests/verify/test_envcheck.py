"""Tests of the environment comparison and its ranking, and of the deterministic-setup check."""

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from repro_lits.envcheck import CAUSES, IGNORED_KEYS, classify, environment_differences

from .conftest import make_app


def make_record(device: str = "cpu") -> dict:
    """Return the parts of a run record that the environment comparison reads."""
    return {
        "device": device,
        "threads": {"intra_op": 1, "inter_op": 1},
        "seeds": {"mode": "set", "replayed": False, "torch_initial_seed": 42, "numpy_seed": 42},
        "switches": {"use_deterministic_algorithms": True, "cudnn_benchmark": False},
        "environment": {
            "python": {"version": "3.11.7"},
            "torch": {"version": "2.13.0+cpu", "cpu_capability": "AVX512",
                      "parallel_info": ["ATen/Parallel:", "at::get_num_threads() : 1", "OpenMP 201511"]},
            "cuda": {"torch_cuda_version": None, "cudnn_version": None, "devices": []},
            "cpu": {"model": "Intel Xeon", "flags": ["avx2", "avx512f", "fpu", "sse4_2"]},
            "threads": {"torch_intra_op": 1, "torch_inter_op": 1, "os_cpu_count": 2},
            "os": {"platform": "Linux-6.1"},
            "hostname": "machine-a",
        },
    }


def test_identical_records_have_no_differences():
    assert environment_differences(make_record(), make_record()) == []


def test_hostname_and_replay_flags_ignored():
    recorded = make_record()
    replayed = make_record()
    replayed["environment"]["hostname"] = "machine-b"
    replayed["seeds"]["replayed"] = True
    assert environment_differences(recorded, replayed) == []
    assert "environment.hostname" in IGNORED_KEYS


def test_thread_count_ranked_first_on_cpu():
    recorded = make_record()
    replayed = make_record()
    replayed["threads"]["intra_op"] = 2
    replayed["environment"]["threads"]["torch_intra_op"] = 2
    replayed["environment"]["torch"]["parallel_info"][1] = "at::get_num_threads() : 2"
    replayed["environment"]["os"]["platform"] = "Linux-6.8"

    differences = environment_differences(recorded, replayed)

    causes = [difference.cause for difference in differences]
    assert causes[:3] == ["intra-op threads"] * 3
    assert causes[-1] == "operating system"
    first = next(difference for difference in differences if difference.key == "threads.intra_op")
    assert (first.recorded, first.current) == (1, 2)


def test_cuda_version_ranked_by_device():
    recorded_cpu = make_record("cpu")
    replayed_cpu = copy.deepcopy(recorded_cpu)
    replayed_cpu["environment"]["cuda"]["cudnn_version"] = 90100
    replayed_cpu["environment"]["python"]["version"] = "3.12.1"
    on_cpu = environment_differences(recorded_cpu, replayed_cpu)
    assert [difference.cause for difference in on_cpu] == ["python", "cuda version"]

    recorded_gpu = make_record("cuda:0")
    replayed_gpu = copy.deepcopy(recorded_gpu)
    replayed_gpu["environment"]["cuda"]["cudnn_version"] = 90100
    replayed_gpu["environment"]["python"]["version"] = "3.12.1"
    on_gpu = environment_differences(recorded_gpu, replayed_gpu)
    assert [difference.cause for difference in on_gpu] == ["cuda version", "python"]


def test_device_change_ranked_above_everything():
    recorded = make_record("cuda:0")
    replayed = make_record("cpu")
    replayed["environment"]["torch"]["version"] = "2.12.0+cpu"
    differences = environment_differences(recorded, replayed)
    assert differences[0].cause == "device"
    assert differences[1].cause == "torch version"


def test_cpu_flags_split_simd_from_other():
    recorded = make_record()
    no_avx512 = make_record()
    no_avx512["environment"]["cpu"]["flags"] = ["avx2", "fpu", "sse4_2"]
    simd = environment_differences(recorded, no_avx512)
    assert [difference.cause for difference in simd] == ["cpu instruction set"]
    assert simd[0].recorded == ["avx512f"]
    assert simd[0].current == []

    hypervisor = make_record()
    hypervisor["environment"]["cpu"]["flags"] = ["avx2", "avx512f", "fpu", "hypervisor", "sse4_2"]
    other = environment_differences(recorded, hypervisor)
    assert [difference.cause for difference in other] == ["cpu flags other"]


@pytest.mark.parametrize(("key", "cause"), [
    pytest.param("device", "device", id="device"),
    pytest.param("seeds.torch_initial_seed", "seeds", id="seed"),
    pytest.param("switches.environment.CUBLAS_WORKSPACE_CONFIG", "determinism switches", id="cublas"),
    pytest.param("environment.variables.OMP_NUM_THREADS", "thread variables", id="omp"),
    pytest.param("environment.torch.git_version", "torch version", id="torch-git"),
    pytest.param("environment.torch.config", "torch build", id="torch-config"),
    pytest.param("environment.cuda.devices.0.name", "gpu", id="gpu"),
    pytest.param("environment.cuda.driver_version", "cuda driver", id="driver"),
    pytest.param("environment.numpy.version", "numpy", id="numpy"),
    pytest.param("environment.unknown", "other", id="other"),
])
def test_classify_keys(key, cause):
    assert classify(key) == cause
    assert cause in CAUSES


@pytest.mark.slow
def test_env_command_reports_ready_cpu():
    result = CliRunner().invoke(make_app(), ["env", "--json"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ready"] is True
    assert report["environment"]["torch"]["version"] == torch.__version__
    assert report["environment"]["threads"]["torch_intra_op"] == 1
    checks = {check["name"]: check for check in report["checks"]}
    assert checks["deterministic training"]["ok"] is True
    if not torch.cuda.is_available():
        assert report["device"] == "cpu"
        assert checks["cuda"]["ok"] is None


@pytest.mark.slow
def test_env_command_text_output():
    result = CliRunner().invoke(make_app(), ["env"])

    assert result.exit_code == 0, result.output
    assert result.output.startswith("deterministic setup: ready on ")
    assert f"torch.version: {torch.__version__}" in result.output
