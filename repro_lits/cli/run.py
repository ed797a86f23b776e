"""``repro-lits run``: train and record many runs of an experiment, resuming where earlier calls stopped.

The command only parses options, shows progress and prints the summary; the
work is :func:`repro_lits.orchestrate.run_experiment`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from repro_lits.cli.common import configure_logging, user_errors
from repro_lits.config import DEFAULT_EXPERIMENT, load_experiment
from repro_lits.orchestrate import ExperimentResult, RunEvent, expand_setups, run_experiment, with_data_source

logger = logging.getLogger(__name__)

#: Exit status when at least one run failed, and after Ctrl-C (128 + SIGINT).
EXIT_RUN_FAILED = 1
EXIT_INTERRUPTED = 130

#: Completed runs the live view keeps listing under the runs in flight.
RECENT_ROWS = 5


@user_errors
def run(
    setup: Annotated[
        str, typer.Option(help="Setup to run: random, seed, deterministic or all.")
    ] = "all",
    runs: Annotated[
        int, typer.Option(min=1, help="Runs per setup; finished runs count, so a rerun only adds the missing ones.")
    ] = 10,
    experiment: Annotated[
        str, typer.Option(help="Experiment preset (smoke, cpu, paper) or path to an experiment TOML file.")
    ] = DEFAULT_EXPERIMENT,
    data: Annotated[
        str | None,
        typer.Option(
            help="'synthetic' or a raw dataset folder (LiTS, Decathlon, ...); default: data.source of the experiment."
        ),
    ] = None,
    results: Annotated[
        Path, typer.Option(help="Results folder; runs and tables go to RESULTS/<experiment name>/.")
    ] = Path("results"),
    jobs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Runs in flight at once; default: CPU cores / run.threads, one per CUDA device, "
            "or the Dask cluster's worker threads.",
        ),
    ] = None,
    backend: Annotated[
        str, typer.Option(help="Where runs execute: local (worker processes here) or dask (an existing Dask cluster).")
    ] = "local",
    scheduler: Annotated[
        str | None, typer.Option(help="Dask scheduler address for --backend dask, e.g. tcp://10.0.0.5:8786.")
    ] = None,
    set_values: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override an experiment key, e.g. --set training.epochs=5 (repeatable)."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
) -> None:
    """Train and record RUNS runs per setup, one fresh process each, and rebuild the result tables.

    Finished runs are skipped, so the same command resumes an interrupted study
    and --runs 20 after --runs 10 adds ten. Example:

        repro-lits run --setup deterministic --runs 10 --experiment cpu
    """
    setups = expand_setups(setup)
    config = with_data_source(load_experiment(experiment, set_values or []), data)
    console = Console()
    live = console.is_terminal
    _configure_logging(console if live else None, verbose)
    total = runs * len(setups)
    view = LiveView(console, total=total, jobs=jobs) if live else LogView(total=total, jobs=jobs)

    try:
        with _sigterm_as_interrupt(), view.shown():
            result = run_experiment(
                config, setup=setup, runs=runs, results_dir=results, jobs=jobs, backend=backend,
                scheduler=scheduler, on_event=view.handle,
            )
    except KeyboardInterrupt:
        typer.echo("interrupted: runs in flight were stopped; rerun the same command to resume", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None

    print_summary(console, result)
    if any(summary.failed for summary in result.summaries):
        raise typer.Exit(EXIT_RUN_FAILED)


def print_summary(console: Console, result: ExperimentResult) -> None:
    """Print finished, failed and missing runs and distinct weight hashes per setup, and where the tables are."""
    table = Table(title=f"{result.experiment_dir.name}: runs per setup", title_justify="left")
    for column in ("setup", "finished", "failed", "missing", "distinct weight hashes"):
        table.add_column(column, justify="left" if column == "setup" else "right")
    for summary in result.summaries:
        table.add_row(
            summary.setup, f"{summary.finished}/{summary.requested}", str(summary.failed), str(summary.missing),
            str(summary.distinct_weights),
        )
    console.print(table)
    if any(summary.missing for summary in result.summaries):
        console.print(
            "missing runs are claimed by another orchestrator or were interrupted; rerun to complete them",
            soft_wrap=True,
        )
    console.print(f"tables: {', '.join(str(path) for path in result.tables.values())}", soft_wrap=True)


@dataclass
class _RunState:
    run_id: str
    state: str
    started: float
    epoch: int | None = None
    epochs: int | None = None
    loss: float | None = None
    ended: float | None = None
    detail: str = ""


class _Progress:
    """Run states and counts from the orchestrator's events; events arrive from several threads."""

    def __init__(self, total: int, jobs: int | None = None) -> None:
        self.total = total
        self.jobs = jobs
        self.lock = threading.Lock()
        self.states: dict[str, _RunState] = {}
        self.durations: list[float] = []
        self.counts = {"finished": 0, "failed": 0, "skipped": 0, "busy": 0, "interrupted": 0}

    def update(self, event: RunEvent) -> _RunState:
        now = time.monotonic()
        with self.lock:
            state = self.states.get(event.run_id)
            if state is None or event.kind == "started":
                state = _RunState(event.run_id, event.kind, now)
                self.states[event.run_id] = state
            state.state = "running" if event.kind in ("started", "epoch") else event.kind
            if event.kind == "epoch":
                state.epoch, state.epochs, state.loss = event.epoch, event.epochs, event.loss
            if event.kind in self.counts:
                self.counts[event.kind] += 1
                state.ended = now
                weights = f"(weights {event.weights_sha256[:12]})" if event.weights_sha256 else ""
                state.detail = event.error or weights
            if event.kind in ("finished", "failed") and event.wall_time_s is not None:
                self.durations.append(event.wall_time_s)
            return state

    def done(self) -> int:
        return sum(self.counts.values())

    def running(self) -> list[_RunState]:
        return [state for state in self.states.values() if state.state == "running"]

    def eta_s(self) -> float | None:
        """Estimate seconds left: mean run time so far times the runs left, divided by the runs in flight."""
        if not self.durations:
            return None
        parallel = max(1, self.jobs or len(self.running()) or 1)
        left = self.total - self.done()
        return sum(self.durations) / len(self.durations) * left / parallel

    def headline(self) -> str:
        eta = self.eta_s()
        counts = self.counts
        return (
            f"{self.done()}/{self.total} done: {counts['finished']} finished, {counts['failed']} failed, "
            f"{counts['skipped']} finished earlier, {counts['busy']} claimed elsewhere; {len(self.running())} running"
            + (f", ETA {_format_duration(eta)}" if eta is not None else "")
        )


class LogView:
    """Progress as plain log lines (output that is not a terminal)."""

    def __init__(self, total: int, jobs: int | None) -> None:
        self.progress = _Progress(total, jobs)

    @contextmanager
    def shown(self) -> Iterator[None]:
        yield

    def handle(self, event: RunEvent) -> None:
        state = self.progress.update(event)
        if event.kind == "started":
            logger.info("%s started (pid %s)", event.run_id, event.pid)
        elif event.kind == "epoch" and _worth_logging(event):
            logger.info("%s epoch %s/%s loss %.5f", event.run_id, event.epoch, event.epochs, event.loss or float("nan"))
        elif event.kind in ("finished", "failed", "interrupted", "skipped", "busy"):
            headline = self.progress.headline()
            logger.info("%s %s %s; %s", event.run_id, _describe_kind(event.kind), state.detail, headline)


class LiveView:
    """Progress as a rich live table: the runs in flight with epoch and loss, the last completed, counts and ETA."""

    def __init__(self, console: Console, total: int, jobs: int | None) -> None:
        self.console = console
        self.progress = _Progress(total, jobs)
        self._live: Live | None = None

    @contextmanager
    def shown(self) -> Iterator[None]:
        with Live(self._render(), console=self.console, refresh_per_second=4, transient=False) as live:
            self._live = live
            try:
                yield
            finally:
                live.update(self._render())
                self._live = None

    def handle(self, event: RunEvent) -> None:
        self.progress.update(event)
        if self._live is not None:
            self._live.update(self._render())

    def _render(self) -> Group:
        table = Table(expand=False)
        for column in ("run", "state", "epoch", "loss", "time"):
            table.add_column(column)
        now = time.monotonic()
        with self.progress.lock:
            states = list(self.progress.states.values())
        running = [state for state in states if state.state == "running"]
        recent = sorted((s for s in states if s.ended is not None and s.state in ("finished", "failed")),
                        key=lambda s: s.ended or 0.0)[-RECENT_ROWS:]
        for state in running + recent:
            epoch = f"{state.epoch}/{state.epochs}" if state.epoch is not None else ""
            loss = f"{state.loss:.5f}" if state.loss is not None else ""
            elapsed = (state.ended or now) - state.started
            style = {"failed": "red", "finished": "green"}.get(state.state, "")
            table.add_row(state.run_id, Text(state.state, style=style), epoch, loss, _format_duration(elapsed))
        return Group(Text(self.progress.headline()), table)


def _worth_logging(event: RunEvent) -> bool:
    """Log about five epoch lines per run, the last epoch always."""
    if not event.epoch or not event.epochs:
        return False
    return event.epoch == event.epochs or event.epoch % max(1, event.epochs // 5) == 0


def _describe_kind(kind: str) -> str:
    return {
        "finished": "finished", "failed": "failed:", "interrupted": "interrupted:",
        "skipped": "finished earlier, skipped", "busy": "claimed by another orchestrator, skipped",
    }[kind]


def _format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _configure_logging(console: Console | None, verbose: bool) -> None:
    if console is None:
        configure_logging(verbose)
        return
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
    )


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (kill, Slurm's scancel) like Ctrl-C, so the runs in flight are stopped and cleaned up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
