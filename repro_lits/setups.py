"""The three setups of the study (random, seed, deterministic) as named sets of switches.

A run applies its setup first, in its own process, before it builds a model
or a data loader and before CUDA starts. :func:`apply_setup` returns what it
applied and which seeds the run got, for the run record. Every setup sets
the PyTorch intra-op and inter-op CPU thread counts.

- ``random``: no seed is chosen. PyTorch (2.13, the pinned version) draws its
  initial seed from OS entropy in every process, and the setup reads it back
  with ``torch.initial_seed()``. It reseeds the generator with that value, so
  that draws made before the setup do not matter, and derives the Python
  ``random``, NumPy and data-loader seeds from it. Replaying those recorded
  seeds repeats the run's random numbers. Non-deterministic algorithms are
  allowed and cuDNN benchmarking is on.
- ``seed``: Python ``random``, NumPy, PyTorch CPU and CUDA and the
  data-loader shuffling generator seeded with the run seed, and
  ``PYTHONHASHSEED`` set. Non-deterministic algorithms are still allowed, and
  cuDNN benchmarking is on as in ``random``.
- ``deterministic``: as ``seed``, plus
  ``torch.use_deterministic_algorithms(True)`` (an op without a deterministic
  implementation raises), cuDNN deterministic and not benchmarking, TF32 off
  for CUDA matmuls and cuDNN, and ``CUBLAS_WORKSPACE_CONFIG=:4096:8``, which
  must be set before CUDA starts.

``torch`` is imported inside the functions that need it, so that the worker
can compute ``PYTHONHASHSEED`` and restart itself before PyTorch loads.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from repro_lits.errors import ConfigError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: Value of CUBLAS_WORKSPACE_CONFIG that makes cuBLAS deterministic (CUDA 10.2 and later).
CUBLAS_WORKSPACE_CONFIG = ":4096:8"

#: Largest seed NumPy's legacy global generator and PYTHONHASHSEED accept, plus one.
SEED_MODULUS = 2**32


@dataclass(frozen=True)
class Setup:
    """The switches one setup flips, as data."""

    name: str
    description: str
    #: Seed Python, NumPy, PyTorch and the loader from the run seed (else read back what PyTorch drew).
    seeded: bool
    #: torch.use_deterministic_algorithms(True), without warn_only.
    deterministic_algorithms: bool
    cudnn_deterministic: bool
    cudnn_benchmark: bool
    #: Set the fp32 precision of CUDA matmuls and cuDNN to "ieee" (TF32 off); else keep PyTorch's default.
    tf32_off: bool
    #: Value for CUBLAS_WORKSPACE_CONFIG, or None to leave the variable alone.
    cublas_workspace_config: str | None


SETUPS: dict[str, Setup] = {
    "random": Setup(
        name="random",
        description="Nothing seeded by the run; non-deterministic algorithms allowed; cuDNN benchmarking on.",
        seeded=False,
        deterministic_algorithms=False,
        cudnn_deterministic=False,
        cudnn_benchmark=True,
        tf32_off=False,
        cublas_workspace_config=None,
    ),
    "seed": Setup(
        name="seed",
        description="Python, NumPy, PyTorch (CPU, CUDA) and loader seeded, PYTHONHASHSEED set; "
                    "non-deterministic algorithms allowed; cuDNN benchmarking on.",
        seeded=True,
        deterministic_algorithms=False,
        cudnn_deterministic=False,
        cudnn_benchmark=True,
        tf32_off=False,
        cublas_workspace_config=None,
    ),
    "deterministic": Setup(
        name="deterministic",
        description="As seed, plus deterministic algorithms, cuDNN deterministic without benchmarking, "
                    "TF32 off and CUBLAS_WORKSPACE_CONFIG=:4096:8.",
        seeded=True,
        deterministic_algorithms=True,
        cudnn_deterministic=True,
        cudnn_benchmark=False,
        tf32_off=True,
        cublas_workspace_config=CUBLAS_WORKSPACE_CONFIG,
    ),
}

#: Setup names in the order the study reports them.
SETUP_NAMES = tuple(SETUPS)


@dataclass
class AppliedSetup:
    """Result of :func:`apply_setup`: the seeds, the switches as read back, and the loader generator.

    ``seeds``, ``switches`` and ``threads`` are JSON-ready and go into the run record.
    """

    name: str
    seeds: dict[str, Any]
    switches: dict[str, Any]
    threads: dict[str, int]
    loader_generator: torch.Generator = field(repr=False)


def get_setup(name: str) -> Setup:
    """Look up a setup by name; ConfigError for an unknown name."""
    try:
        return SETUPS[name]
    except KeyError:
        raise ConfigError(f"unknown setup {name!r}; expected one of {list(SETUP_NAMES)}") from None


def run_seed(run_config: dict, run_index: int) -> int:
    """Return the seed of a seeded run from the ``[run]`` section.

    ``seed_rule = "fixed"`` gives every run ``seed`` (the study's design);
    ``"run-index"`` gives run i the seed ``seed + i``.
    """
    if run_config["seed_rule"] == "run-index":
        return int(run_config["seed"]) + int(run_index)
    return int(run_config["seed"])


def python_hash_seed(setup_name: str, run_config: dict, run_index: int,
                     replay_seeds: dict | None = None) -> str | None:
    """Return the PYTHONHASHSEED a run should start with, or None where the setup leaves it alone.

    The random setup leaves it alone, unless it replays a run whose record stores one.
    """
    seed = run_seed(run_config, run_index)
    return _hash_seed(get_setup(setup_name), seed, replay_seeds)


def seed_worker(worker_id: int) -> None:
    """Seed NumPy and Python ``random`` in a DataLoader worker from its PyTorch seed.

    PyTorch seeds each worker with the loader's base seed + worker id, and the
    base seed comes from the loader's generator, so the workers' seeds follow
    from the recorded loader seed.
    """
    import torch

    worker_seed = torch.initial_seed() % SEED_MODULUS
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def apply_setup(name: str, *, seed: int | None, threads: int, interop_threads: int,
                replay_seeds: dict | None = None) -> AppliedSetup:
    """Apply a setup's switches, thread counts and seeds to this process and return what was applied.

    Call it first in the run's process: before a model, a data loader or a
    CUDA context exists.

    Args:
        name: ``random``, ``seed`` or ``deterministic``.
        seed: the run seed of the seeded setups (ignored by ``random``).
        threads: PyTorch intra-op CPU threads.
        interop_threads: PyTorch inter-op CPU threads.
        replay_seeds: the ``seeds`` section of an earlier run's record; its
            seeds replace the setup's own, so that the run repeats that run's
            random numbers. The setup's other switches stay.

    Raises:
        ConfigError: unknown setup, or a seeded setup without a seed.
        RuntimeError: CUDA already started in this process and the setup needs
            CUBLAS_WORKSPACE_CONFIG, or the inter-op thread count cannot be
            changed any more.
    """
    import torch

    setup = get_setup(name)
    if setup.seeded and seed is None and replay_seeds is None:
        raise ConfigError(f"setup {name!r} needs a run seed; set run.seed in the experiment")
    if setup.cublas_workspace_config is not None and torch.cuda.is_initialized():
        raise RuntimeError(
            f"setup {name!r} must set CUBLAS_WORKSPACE_CONFIG before CUDA starts, but CUDA is already "
            "initialised in this process; apply the setup first, in a fresh process"
        )

    hash_seed = _hash_seed(setup, seed, replay_seeds)
    environment = _set_environment(setup, hash_seed)
    thread_counts = _set_threads(threads, interop_threads)
    switches = _set_torch_flags(setup)
    switches["environment"] = environment
    seeds = _set_seeds(setup, seed, replay_seeds)
    seeds["python_hash_seed"] = hash_seed

    generator = torch.Generator()
    generator.manual_seed(seeds["loader_seed"])
    logger.info("applied setup %s: seeds %s, threads %s", name, seeds, thread_counts)
    return AppliedSetup(name=name, seeds=seeds, switches=switches, threads=thread_counts,
                        loader_generator=generator)


def _hash_seed(setup: Setup, seed: int | None, replay_seeds: dict | None) -> str | None:
    """Return the PYTHONHASHSEED value the setup sets, or None where it leaves the variable alone."""
    if replay_seeds is not None:
        value = replay_seeds.get("python_hash_seed")
        return None if value is None else str(value)
    if setup.seeded:
        return str(seed % SEED_MODULUS)
    return None


def _set_environment(setup: Setup, hash_seed: str | None) -> dict[str, Any]:
    """Set the setup's environment variables and return them with how far they took effect."""
    hash_seed_before = os.environ.get("PYTHONHASHSEED")
    if hash_seed is not None:
        os.environ["PYTHONHASHSEED"] = hash_seed
    if setup.cublas_workspace_config is not None:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = setup.cublas_workspace_config

    return {
        "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED"),
        # Python reads PYTHONHASHSEED once at start: setting it here reaches child processes only.
        # The worker restarts itself with the variable set, so there it was already in place.
        "PYTHONHASHSEED_at_start": hash_seed_before,
        "python_hash_randomization": bool(sys.flags.hash_randomization),
        "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def _set_threads(threads: int, interop_threads: int) -> dict[str, int]:
    """Set PyTorch's CPU thread counts and return them as read back."""
    import torch

    torch.set_num_threads(int(threads))
    if torch.get_num_interop_threads() != interop_threads:
        try:
            torch.set_num_interop_threads(int(interop_threads))
        except RuntimeError as err:
            raise RuntimeError(
                f"cannot set PyTorch inter-op threads to {interop_threads} (now {torch.get_num_interop_threads()}): "
                "parallel work already started in this process; apply the setup first, in a fresh process"
            ) from err
    return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}


def _set_torch_flags(setup: Setup) -> dict[str, Any]:
    """Set the algorithm and backend flags and return them as read back from PyTorch."""
    import torch

    torch.use_deterministic_algorithms(setup.deterministic_algorithms)
    torch.backends.cudnn.deterministic = setup.cudnn_deterministic
    torch.backends.cudnn.benchmark = setup.cudnn_benchmark
    if setup.tf32_off:
        # The fp32_precision API of PyTorch 2.9 and later; "ieee" disables TF32.
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.cudnn.rnn.fp32_precision = "ieee"

    return {
        "setup": setup.name,
        "use_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cuda_matmul_fp32_precision": torch.backends.cuda.matmul.fp32_precision,
        "cudnn_conv_fp32_precision": torch.backends.cudnn.conv.fp32_precision,
        "cudnn_rnn_fp32_precision": torch.backends.cudnn.rnn.fp32_precision,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "mkldnn_fp32_precision": torch.backends.mkldnn.fp32_precision,
    }


def _set_seeds(setup: Setup, seed: int | None, replay_seeds: dict | None) -> dict[str, Any]:
    """Seed PyTorch, NumPy and Python ``random`` and return the seeds used."""
    import torch

    if replay_seeds is not None:
        try:
            torch_seed = int(replay_seeds["torch_initial_seed"])
            numpy_seed = int(replay_seeds["numpy_seed"])
            python_seed = int(replay_seeds["python_seed"])
            loader_seed = int(replay_seeds["loader_seed"])
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(
                f"replay seeds {replay_seeds!r} lack {err}; expected the seeds section of a run record"
            ) from err
        mode = "set"
        run_seed_value = replay_seeds.get("run_seed")
    elif setup.seeded:
        torch_seed = numpy_seed = python_seed = loader_seed = int(seed)
        numpy_seed %= SEED_MODULUS
        mode = "set"
        run_seed_value = int(seed)
    else:
        torch_seed = torch.initial_seed()
        numpy_seed = torch_seed % SEED_MODULUS
        python_seed = loader_seed = torch_seed
        mode = "observed"
        run_seed_value = None

    # torch.manual_seed seeds the CPU generator and every CUDA device's generator.
    torch.manual_seed(torch_seed)
    np.random.seed(numpy_seed)
    random.seed(python_seed)
    return {
        "mode": mode,
        "replayed": replay_seeds is not None,
        "run_seed": run_seed_value,
        "torch_initial_seed": torch.initial_seed(),
        "numpy_seed": numpy_seed,
        "python_seed": python_seed,
        "loader_seed": loader_seed,
    }
