"""Fingerprint of the software and hardware a run used, for the run record.

Call :func:`collect` after the run's setup was applied: the GPU queries
start CUDA, and the thread counts it reports are the ones the setup set.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: Environment variables that change threading, hashing or determinism, recorded when set.
RELEVANT_VARIABLES = (
    "PYTHONHASHSEED", "CUBLAS_WORKSPACE_CONFIG", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS",
    "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "KMP_AFFINITY", "ATEN_CPU_CAPABILITY",
)


def collect() -> dict[str, Any]:
    """Collect Python, PyTorch, NumPy, CUDA, CPU, thread, OS and host facts as a JSON-ready dict."""
    return {
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "torch": _torch_facts(),
        "numpy": _numpy_facts(),
        "cuda": _cuda_facts(),
        "cpu": _cpu_facts(),
        "threads": {
            "torch_intra_op": torch.get_num_threads(),
            "torch_inter_op": torch.get_num_interop_threads(),
            "os_cpu_count": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        },
        "os": {
            "platform": platform.platform(),
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
        },
        "hostname": socket.gethostname(),
        "variables": {name: os.environ[name] for name in RELEVANT_VARIABLES if name in os.environ},
    }


def _torch_facts() -> dict[str, Any]:
    config = torch.__config__.show()
    return {
        "version": torch.__version__,
        "debug": torch.version.debug,
        "git_version": torch.version.git_version,
        # The build configuration: compiler, CPU capability, BLAS/LAPACK, oneDNN, OpenMP, CUDA flags.
        "config": config.strip().splitlines(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "parallel_info": torch.__config__.parallel_info().strip().splitlines(),
        "mkldnn_available": torch.backends.mkldnn.is_available(),
    }


def _numpy_facts() -> dict[str, Any]:
    facts: dict[str, Any] = {"version": np.__version__}
    try:
        config = np.show_config(mode="dicts")
    except (TypeError, ValueError):
        # NumPy before 1.26 prints its config and has no dict mode.
        return facts
    blas = config.get("Build Dependencies", {}).get("blas", {})
    facts["blas"] = {key: blas.get(key) for key in ("name", "version", "openblas configuration")}
    facts["simd"] = config.get("SIMD Extensions", {})
    return facts


def _cuda_facts() -> dict[str, Any]:
    available = torch.cuda.is_available()
    facts: dict[str, Any] = {
        "available": available,
        "torch_cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "driver_version": _nvidia_driver_version(),
        "devices": [],
    }
    if available:
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            facts["devices"].append({
                "index": index,
                "name": properties.name,
                "capability": f"{properties.major}.{properties.minor}",
                "memory_mb": round(properties.total_memory / 2**20),
                "multiprocessors": properties.multi_processor_count,
            })
    return facts


def _nvidia_driver_version() -> str | None:
    """Read the NVIDIA driver version from /proc, else from nvidia-smi; None without a driver."""
    version_file = Path("/proc/driver/nvidia/version")
    if version_file.is_file():
        first_line = version_file.read_text(encoding="utf-8", errors="replace").splitlines()[0]
        # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 ..."
        for token in first_line.split():
            if token.count(".") >= 1 and token.replace(".", "").isdigit():
                return token
    try:
        completed = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    versions = completed.stdout.split()
    return versions[0] if versions else None


def _cpu_facts() -> dict[str, Any]:
    """Read the CPU model, vendor and instruction-set flags of the first processor in /proc/cpuinfo."""
    facts: dict[str, Any] = {"processor": platform.processor() or None, "model": None, "vendor": None, "flags": []}
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return facts
    for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and facts["model"] is None:
            facts["model"] = value.strip()
        elif key == "vendor_id" and facts["vendor"] is None:
            facts["vendor"] = value.strip()
        elif key in ("flags", "Features") and not facts["flags"]:
            facts["flags"] = sorted(value.split())
        elif not line.strip() and facts["model"] is not None and facts["flags"]:
            break
    return facts


def git_commit(path: Path | None = None) -> str | None:
    """Return the git commit of the repro-lits checkout, or None outside a git checkout."""
    folder = path or Path(__file__).resolve().parent.parent
    try:
        completed = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        logger.debug("no git commit for %s", folder)
        return None
    return completed.stdout.strip() or None
