"""Benchmark of ``repro-lits run``: per-run overhead against training time, jobs 2 against jobs 1, peak memory.

Runs the deterministic setup of an experiment (default: the cpu preset) twice
in fresh results folders, once with ``--jobs 1`` and once with ``--jobs 2``,
and reads the timings from the run records:

- per-run overhead: the orchestrator's wall time per run with jobs 1 (the whole
  call divided by the runs) minus the training loop's time (``train_time_s``).
  It is split into three parts: interpreter start and imports; the run's own
  set-up, evaluation and saving (record ``wall_time_s`` minus ``train_time_s``);
  and the orchestrator's claims, publishing and table rebuilds;
- throughput: runs per hour with ``--jobs 2`` against ``--jobs 1``;
- peak resident memory of each worker process (record ``peak_memory_mb``).

Usage: python benchmarks/bench_orchestrator.py [--runs 4] [--experiment cpu] [--set training.epochs=10]
The data are prepared before the clock starts. Prints a Markdown table and writes JSON with ``--json PATH``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

from repro_lits.config import load_experiment
from repro_lits.data.cache import ensure_dataset
from repro_lits.orchestrate import cpu_count, run_experiment
from repro_lits.record import read_record


def measure(config, dataset, *, runs: int, jobs: int, folder: Path) -> dict:
    """Run ``runs`` deterministic runs with ``jobs`` in flight; return wall time and per-run record figures."""
    started = time.perf_counter()
    result = run_experiment(
        config, setup="deterministic", runs=runs, results_dir=folder, cache_dir=dataset.root,
        dataset_fingerprint=dataset.fingerprint, jobs=jobs,
    )
    wall_s = time.perf_counter() - started
    failed = [outcome.run_id for outcome in result.outcomes if outcome.status != "finished"]
    if failed:
        raise SystemExit(f"benchmark runs did not finish: {failed}; see {result.experiment_dir}/runs")

    records = [read_record(result.experiment_dir / "runs" / outcome.run_id) for outcome in result.outcomes]
    return {
        "jobs": jobs,
        "runs": runs,
        "wall_s": wall_s,
        "process_s": [outcome.wall_time_s for outcome in result.outcomes],
        "run_wall_s": [record["wall_time_s"] for record in records],
        "train_s": [record["train_time_s"] for record in records],
        "peak_memory_mb": [record["peak_memory_mb"] for record in records],
    }


def summarise(serial: dict, parallel: dict) -> dict:
    """Derive the overhead split, the throughput ratio and memory figures from the two measurements."""
    runs = serial["runs"]
    per_run_s = serial["wall_s"] / runs
    train_s = statistics.mean(serial["train_s"])
    run_wall_s = statistics.mean(serial["run_wall_s"])
    process_s = statistics.mean(serial["process_s"])
    return {
        "per_run_s": per_run_s,
        "train_s": train_s,
        "overhead_s": per_run_s - train_s,
        "overhead_percent": 100.0 * (per_run_s - train_s) / train_s,
        "start_and_imports_s": process_s - run_wall_s,
        "setup_eval_save_s": run_wall_s - train_s,
        "orchestrator_s": per_run_s - process_s,
        "runs_per_hour_jobs1": 3600.0 * runs / serial["wall_s"],
        "runs_per_hour_jobs2": 3600.0 * parallel["runs"] / parallel["wall_s"],
        "speedup_jobs2": serial["wall_s"] / parallel["wall_s"] * parallel["runs"] / runs,
        "peak_memory_mb_max": max(serial["peak_memory_mb"] + parallel["peak_memory_mb"]),
        "peak_memory_mb_mean": statistics.mean(serial["peak_memory_mb"] + parallel["peak_memory_mb"]),
    }


def markdown(summary: dict, config, runs: int) -> str:
    epochs = config.training["epochs"]
    machine = platform.processor() or platform.machine()
    rows = [
        ("experiment", f"{config.name} ({epochs} epochs), deterministic setup, {runs} runs per jobs value"),
        ("machine", f"{machine}, {cpu_count()} usable cores, Python {platform.python_version()}"),
        ("training loop per run", f"{summary['train_s']:.1f} s"),
        ("orchestrator wall time per run (jobs 1)", f"{summary['per_run_s']:.1f} s"),
        ("overhead per run", f"{summary['overhead_s']:.1f} s ({summary['overhead_percent']:.1f} % of training)"),
        ("- interpreter start and imports", f"{summary['start_and_imports_s']:.1f} s"),
        ("- set-up, data load, evaluation, saving, record", f"{summary['setup_eval_save_s']:.1f} s"),
        ("- claims, publishing, table rebuilds", f"{summary['orchestrator_s']:.2f} s"),
        ("throughput jobs 1", f"{summary['runs_per_hour_jobs1']:.1f} runs/h"),
        ("throughput jobs 2", f"{summary['runs_per_hour_jobs2']:.1f} runs/h ({summary['speedup_jobs2']:.2f}x)"),
        ("peak memory per worker",
         f"{summary['peak_memory_mb_mean']:.0f} MiB mean, {summary['peak_memory_mb_max']:.0f} MiB max"),
    ]
    lines = ["| quantity | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="cpu", help="preset name or experiment TOML file (default cpu)")
    parser.add_argument("--runs", type=int, default=4, help="runs per jobs value (default 4)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value override")
    parser.add_argument("--json", type=Path, help="also write the raw figures to this JSON file")
    args = parser.parse_args()

    config = load_experiment(args.experiment, args.overrides)
    with tempfile.TemporaryDirectory(prefix="bench-orchestrator-") as scratch:
        scratch_dir = Path(scratch)
        dataset = ensure_dataset(config, cache_root=scratch_dir / "cache")
        serial = measure(config, dataset, runs=args.runs, jobs=1, folder=scratch_dir / "jobs1")
        parallel = measure(config, dataset, runs=args.runs, jobs=2, folder=scratch_dir / "jobs2")

    summary = summarise(serial, parallel)
    print(markdown(summary, config, args.runs))
    if args.json:
        args.json.write_text(json.dumps({"serial": serial, "parallel": parallel, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
