"""Environment checks: can this machine run the deterministic setup, and how do two run environments differ.

:func:`check_deterministic_setup` checks the first, partly in this
process and partly in a fresh one that applies the ``deterministic`` setup
and trains a tiny U-Net twice. :func:`environment_differences` lists what
differs between two run records (device, thread counts, switches, seeds and
the :func:`repro_lits.environment.collect` fingerprint), ranked by how likely
each difference is to explain weights that differ.

Ranking rule: every difference belongs to one cause in :data:`CAUSES`, and
the cause has a fixed score for CPU runs and one for CUDA runs (the device
of the recorded run). Differences are sorted by score, highest first, then
by key. A cause scores high when it directly selects another floating-point
code path for the kernels that compute the weights. Such causes are the
device, the replayed seeds and the PyTorch version. On CPU they also include
the intra-op thread count, which splits convolution and reduction sums
differently, and the SIMD instruction set PyTorch dispatches to. On CUDA they
include the GPU model, the CUDA and cuDNN versions and the determinism switches. A cause scores low when it
reaches the kernels only indirectly or not at all for that device, such as
CUDA versions in a CPU run. The scores order causes; they are not
probabilities.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cause:
    """One kind of environment difference, with its ranking scores for CPU and CUDA runs."""

    name: str
    cpu_score: int
    cuda_score: int
    reason: str


#: Causes of a difference between a run and its replay, with the ranking scores described in the module docstring.
CAUSES: dict[str, Cause] = {cause.name: cause for cause in (
    Cause("device", 100, 100, "another device type runs other kernels"),
    Cause("seeds", 95, 95, "the replay drew other random numbers (initial weights, crops, dropout)"),
    Cause("torch version", 85, 85, "another PyTorch release may change kernels and their summation order"),
    Cause("intra-op threads", 80, 20,
          "CPU kernels split convolutions and reductions by thread count, which changes the order of "
          "floating-point sums"),
    Cause("gpu", 2, 90, "another GPU model selects other CUDA and cuDNN kernels"),
    Cause("cuda version", 3, 80, "another CUDA, cuDNN or cuBLAS release ships other kernels"),
    Cause("cpu instruction set", 75, 15,
          "PyTorch and oneDNN pick AVX2, AVX-512 or other SIMD code paths at run time, with other "
          "summation order"),
    Cause("determinism switches", 30, 75,
          "deterministic-algorithm, cuDNN, TF32 and cuBLAS workspace switches select other kernels"),
    Cause("torch build", 70, 50, "another build configuration links other BLAS, oneDNN or OpenMP code"),
    Cause("thread variables", 40, 10, "OMP_NUM_THREADS or MKL_NUM_THREADS change the BLAS and OpenMP thread pools"),
    Cause("cuda driver", 2, 40, "another driver may change how kernels are compiled and scheduled"),
    Cause("cpu model", 30, 5, "another CPU model may run other BLAS code paths even with the same flags"),
    Cause("inter-op threads", 25, 5, "eager-mode training runs ops one at a time, so inter-op threads rarely matter"),
    Cause("numpy", 15, 15, "NumPy computes the data pipeline's random crops and array preprocessing"),
    Cause("cpu count", 15, 5, "the CPU count matters only through thread-count defaults, which every setup sets"),
    Cause("python", 10, 10, "another Python release may change hashing or the random module"),
    Cause("cpu flags other", 10, 3, "CPU flags that are not SIMD extensions do not select kernels"),
    Cause("operating system", 10, 10, "another OS or C library may change math-library results"),
    Cause("other", 5, 5, "not known to select kernels"),
)}

#: Keys that always differ between machines or between a run and its replay, and explain nothing.
IGNORED_KEYS = ("environment.hostname", "seeds.replayed", "seeds.mode", "switches.environment.PYTHONHASHSEED_at_start")

#: Substrings of CPU flag names that are SIMD extensions (x86 and Arm).
SIMD_FLAG_MARKERS = ("sse", "avx", "fma", "f16c", "amx", "vnni", "bf16", "asimd", "sve", "neon", "fp16")

#: Values of CUBLAS_WORKSPACE_CONFIG that make cuBLAS deterministic (CUDA 10.2 and later).
DETERMINISTIC_CUBLAS_CONFIGS = (":4096:8", ":16:8")


@dataclass(frozen=True)
class EnvironmentDifference:
    """One fact that differs between a recorded run and its replay."""

    key: str
    recorded: Any
    current: Any
    cause: str
    score: int
    reason: str

    def describe(self) -> str:
        """Return one line: the key and both values."""
        return f"{self.key}: {_short(self.recorded)} -> {_short(self.current)}"


def comparable_facts(record: dict) -> dict[str, Any]:
    """Return the parts of a run record that describe where and how it ran, flattened to dotted keys."""
    sections = {
        "device": record.get("device"),
        "threads": record.get("threads"),
        "seeds": record.get("seeds"),
        "switches": record.get("switches"),
        "environment": record.get("environment"),
    }
    return _flatten(sections)


def environment_differences(recorded: dict, replayed: dict) -> list[EnvironmentDifference]:
    """List what differs between two run records' environments, ranked as the module docstring describes.

    Args:
        recorded: the run record being verified.
        replayed: the record of its replay (its environment is this machine's).
    """
    on_cuda = str(recorded.get("device", "cpu")).startswith("cuda")
    before = comparable_facts(recorded)
    after = comparable_facts(replayed)

    differences = []
    for key in sorted(set(before) | set(after)):
        if key in IGNORED_KEYS:
            continue
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        cause = CAUSES[classify(key, old, new)]
        score = cause.cuda_score if on_cuda else cause.cpu_score
        old, new = _list_change(old, new)
        differences.append(EnvironmentDifference(key, old, new, cause.name, score, cause.reason))
    # Within a score, the record's own keys (threads, device, ...) come before the fingerprint's.
    differences.sort(key=lambda difference: (-difference.score, difference.key.startswith("environment."),
                                             difference.key))
    return differences


def classify(key: str, old: Any = None, new: Any = None) -> str:
    """Return the name of the cause in :data:`CAUSES` that a differing key belongs to."""
    if key == "device":
        return "device"
    if key.startswith("seeds."):
        return "seeds"
    if key.startswith("switches."):
        return "determinism switches"
    if key.endswith("CUBLAS_WORKSPACE_CONFIG"):
        return "determinism switches"
    if key in ("threads.intra_op", "environment.threads.torch_intra_op"):
        return "intra-op threads"
    if key in ("threads.inter_op", "environment.threads.torch_inter_op"):
        return "inter-op threads"
    if key.startswith("environment.threads."):
        return "cpu count"
    if key.endswith(("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "KMP_AFFINITY")):
        return "thread variables"
    if key.endswith("ATEN_CPU_CAPABILITY") or key == "environment.torch.cpu_capability":
        return "cpu instruction set"
    if key == "environment.torch.parallel_info":
        return _classify_parallel_info(old, new)
    if key in ("environment.torch.version", "environment.torch.git_version", "environment.torch.debug"):
        return "torch version"
    if key.startswith("environment.torch."):
        return "torch build"
    if key.startswith("environment.cuda.devices"):
        return "gpu"
    if key == "environment.cuda.driver_version":
        return "cuda driver"
    if key.startswith("environment.cuda."):
        return "cuda version"
    if key == "environment.cpu.flags":
        return "cpu instruction set" if _simd_flags_changed(old, new) else "cpu flags other"
    if key.startswith("environment.cpu."):
        return "cpu model"
    if key.startswith("environment.numpy."):
        return "numpy"
    if key.startswith("environment.python."):
        return "python"
    if key.startswith("environment.os."):
        return "operating system"
    return "other"


def _classify_parallel_info(old: Any, new: Any) -> str:
    """PyTorch's parallel_info lines mix thread counts with library versions; a thread line decides."""
    changed = set(_as_list(old)) ^ set(_as_list(new))
    if any("get_num_threads" in line or "max_threads" in line for line in changed):
        return "intra-op threads"
    if changed and all("interop" in line for line in changed):
        return "inter-op threads"
    return "torch build"


def _simd_flags_changed(old: Any, new: Any) -> bool:
    changed = set(_as_list(old)) ^ set(_as_list(new))
    return any(marker in flag.lower() for flag in changed for marker in SIMD_FLAG_MARKERS)


def _as_list(value: Any) -> list:
    if isinstance(value, list):
        return [str(item).strip() for item in value]
    return [] if value is None else [str(value)]


def _list_change(old: Any, new: Any) -> tuple[Any, Any]:
    """Shorten two differing lists to the items only one of them has."""
    if isinstance(old, list) and isinstance(new, list):
        old_items, new_items = _as_list(old), _as_list(new)
        removed = [item for item in old_items if item not in new_items]
        added = [item for item in new_items if item not in old_items]
        return removed, added
    return old, new


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to dotted keys; a list of dicts gets index keys, other lists stay whole."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        flat = {}
        for index, item in enumerate(value):
            flat.update(_flatten(item, f"{prefix}.{index}"))
        return flat
    return {prefix: value}


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Check:
    """Result of one check of this machine: its name, whether it passed (None: does not apply) and why."""

    name: str
    ok: bool | None
    detail: str


@dataclass(frozen=True)
class DeterminismReport:
    """Whether this machine can run the deterministic setup, with the checks and the environment fingerprint."""

    ready: bool
    device: str
    checks: list[Check]
    environment: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"ready": self.ready, "device": self.device, "checks": [asdict(check) for check in self.checks],
                "environment": self.environment}


def check_deterministic_setup(*, timeout_s: float = 300.0) -> DeterminismReport:
    """Check whether the ``deterministic`` setup can run here and return the checks and the environment.

    In this process it checks CUDA, ``CUBLAS_WORKSPACE_CONFIG`` and whether
    CUDA already started (then setting the variable is too late for a run in
    this process). In a fresh process it applies the deterministic setup,
    trains a width-2 U-Net for two steps twice on the device a run would
    use, and compares the two weight hashes. The environment fingerprint
    comes from that process, after the setup, as a run records it.
    """
    import torch

    checks = [_check_deterministic_api(torch)]
    cuda_available = torch.cuda.is_available()
    device = "cuda" if cuda_available else "cpu"
    checks.extend(_cuda_checks(torch, cuda_available))

    probe = _run_probe(device, timeout_s=timeout_s)
    checks.extend(probe["checks"])
    environment = probe.get("environment")
    if environment is None:
        from repro_lits.environment import collect

        environment = collect()
        checks.append(Check("environment source", None,
                            "collected in this process because the probe failed; thread counts are this "
                            "process's defaults, not a run's"))
    ready = all(check.ok is not False for check in checks)
    return DeterminismReport(ready=ready, device=device, checks=checks, environment=environment)


def _check_deterministic_api(torch: Any) -> Check:
    if not hasattr(torch, "use_deterministic_algorithms"):
        return Check("deterministic algorithms", False,
                     f"PyTorch {torch.__version__} has no torch.use_deterministic_algorithms; "
                     "install PyTorch 1.8 or later")
    return Check("deterministic algorithms", True,
                 f"torch.use_deterministic_algorithms is available (PyTorch {torch.__version__})")


def _cuda_checks(torch: Any, cuda_available: bool) -> list[Check]:
    """Check CUDA, cuDNN and CUBLAS_WORKSPACE_CONFIG in this process."""
    # NOTE: the branches below that need CUDA have not been run: the machines this was tested on have no GPU.
    if not cuda_available:
        return [Check("cuda", None,
                      "CUDA is not available: runs use the CPU, where the cuBLAS and cuDNN switches do not apply")]

    checks = [Check("cuda", True, f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s)")]
    if torch.backends.cudnn.is_available():
        checks.append(Check("cudnn", True, f"cuDNN {torch.backends.cudnn.version()}"))
    else:
        checks.append(Check("cudnn", None, "cuDNN is not available; the cuDNN switches do not apply"))

    value = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if torch.cuda.is_initialized():
        if value in DETERMINISTIC_CUBLAS_CONFIGS:
            checks.append(Check("CUBLAS_WORKSPACE_CONFIG", True,
                                f"set to {value} and CUDA already started in this process"))
        else:
            checks.append(Check(
                "CUBLAS_WORKSPACE_CONFIG", False,
                f"CUDA already started in this process with CUBLAS_WORKSPACE_CONFIG={value!r}, so setting it now "
                "is too late for a run in this process; run each training in a fresh process (repro-lits run "
                "does) or export CUBLAS_WORKSPACE_CONFIG=:4096:8 before starting Python",
            ))
    elif value is None:
        checks.append(Check("CUBLAS_WORKSPACE_CONFIG", True,
                            "not set; the deterministic setup sets :4096:8 in the run's process before CUDA starts"))
    elif value not in DETERMINISTIC_CUBLAS_CONFIGS:
        checks.append(Check("CUBLAS_WORKSPACE_CONFIG", True,
                            f"set to {value!r}, which is not deterministic; the deterministic setup replaces it "
                            "with :4096:8 in the run's process"))
    else:
        checks.append(Check("CUBLAS_WORKSPACE_CONFIG", True, f"set to {value}"))
    return checks


#: Code the probe process runs: apply the deterministic setup, then train a tiny U-Net twice.
_PROBE_CODE = "import sys; from repro_lits.envcheck import probe_main; probe_main(sys.argv[1])"


def _run_probe(device: str, *, timeout_s: float) -> dict[str, Any]:
    """Run :func:`probe_main` in a fresh Python process and parse its JSON output."""
    command = [sys.executable, "-c", _PROBE_CODE, device]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"checks": [Check("probe", False, f"the probe process timed out after {timeout_s:.0f} s")]}
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        return {"checks": [Check("probe", False, f"the probe process failed (exit {completed.returncode}): {last}")]}
    result = json.loads(lines[-1])
    result["checks"] = [Check(**check) for check in result["checks"]]
    return result


def probe_main(device: str) -> None:
    """Entry point of the probe process: print one JSON line with the checks and the environment."""
    from repro_lits.config import DEFAULTS
    from repro_lits.setups import apply_setup

    checks: list[dict[str, Any]] = []
    applied = apply_setup("deterministic", seed=DEFAULTS["run"]["seed"], threads=DEFAULTS["run"]["threads"],
                          interop_threads=DEFAULTS["run"]["interop_threads"])
    switches = applied.switches
    checks.append(asdict(Check(
        "deterministic setup", True,
        f"applied in a fresh process: deterministic algorithms {switches['use_deterministic_algorithms']}, "
        f"cuDNN deterministic {switches['cudnn_deterministic']}, cuDNN benchmark {switches['cudnn_benchmark']}, "
        f"CUBLAS_WORKSPACE_CONFIG {switches['environment'].get('CUBLAS_WORKSPACE_CONFIG')}",
    )))
    try:
        first = _probe_training(device, DEFAULTS["run"]["seed"])
        second = _probe_training(device, DEFAULTS["run"]["seed"])
    except RuntimeError as err:
        message = str(err).strip().splitlines()[0]
        checks.append(asdict(Check("deterministic training", False,
                                   f"a training step failed under the deterministic setup on {device}: {message}")))
    else:
        same = first == second
        detail = (f"two seeded training runs of a width-2 U-Net on {device} gave identical weights"
                  if same else f"two seeded training runs of a width-2 U-Net on {device} gave different weights")
        checks.append(asdict(Check("deterministic training", same, detail)))

    from repro_lits.environment import collect

    print(json.dumps({"checks": checks, "environment": collect()}))


def _probe_training(device: str, seed: int) -> str:
    """Train a width-2 U-Net for two Adam steps on random (2, 1, 8, 8, 8) cubes and return its weight hash."""
    import torch

    from repro_lits.hashing import model_sha256
    from repro_lits.model import UNet3D

    torch.manual_seed(seed)
    model = UNet3D(width=2, dropout=0.25, sampling_dropout=0.001).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        images = torch.randn(2, 1, 8, 8, 8, device=device)
        labels = torch.randint(0, 3, (2, 8, 8, 8), device=device)
        probabilities = model(images)
        loss = torch.nn.functional.nll_loss(torch.log(probabilities + 1e-6), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model_sha256(model)
