"""Run one training run in a fresh process: ``python -m repro_lits.worker SPEC.json``.

SPEC.json contains a run spec (see :mod:`repro_lits.train`). The worker prints
one JSON object per line on stdout for each event:
``{"event": "epoch", "run_id": ..., "epoch": 3, "epochs": 30, "loss": 0.1}``
and at the end ``{"event": "finished" | "failed", "run_id": ..., "record":
PATH, "error": null | "one line"}``. Log messages go to stderr.

Exit status: 0 when the run finished, 1 when it failed (its record is
written then too), 2 when the spec file cannot be read or is invalid (no
record is written).

For the seed and deterministic setups, and for replays that recorded one,
the worker restarts itself with ``PYTHONHASHSEED`` set before PyTorch is
imported, because Python reads that variable only at start.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from repro_lits.config import config_from_dict
from repro_lits.errors import UserInputError
from repro_lits.setups import python_hash_seed

EXIT_FINISHED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def read_spec(path: Path) -> dict[str, Any]:
    """Read a run spec JSON file; UserInputError when it is missing or not a JSON object."""
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserInputError(f"run spec not found: {path}") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UserInputError(f"cannot read run spec {path}: {err}") from err
    if not isinstance(spec, dict):
        raise UserInputError(f"invalid run spec {path}: expected a JSON object, found {type(spec).__name__}")
    return spec


def hash_seed_for_spec(spec: dict[str, Any]) -> str | None:
    """Return the PYTHONHASHSEED the spec's run needs, or None where its setup leaves it alone."""
    config = config_from_dict(spec.get("config", {}), origin="run spec")
    return python_hash_seed(spec.get("setup", ""), config.run, int(spec.get("run_index", 0)), spec.get("seeds"))


def emit(event: dict[str, Any]) -> None:
    """Print one event as a JSON line on stdout."""
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """Run the spec named on the command line; return the exit status."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m repro_lits.worker SPEC.json\n")
        return EXIT_USAGE
    spec_path = Path(args[0])
    try:
        spec = read_spec(spec_path)
        hash_seed = hash_seed_for_spec(spec)
    except (UserInputError, TypeError, ValueError) as err:
        sys.stderr.write(f"error: {err}\n")
        return EXIT_USAGE

    if hash_seed is not None and os.environ.get("PYTHONHASHSEED") != hash_seed:
        environment = dict(os.environ, PYTHONHASHSEED=hash_seed)
        os.execve(sys.executable, [sys.executable, "-m", "repro_lits.worker", str(spec_path)], environment)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(name)s: %(message)s", stream=sys.stderr)
    # Imported after the restart: this loads PyTorch.
    from repro_lits.train import execute_run

    try:
        record = execute_run(spec, progress=emit)
    except UserInputError as err:
        sys.stderr.write(f"error: {err}\n")
        return EXIT_USAGE
    return EXIT_FINISHED if record["status"] == "finished" else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
