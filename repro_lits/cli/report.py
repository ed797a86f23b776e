"""``repro-lits report``: statistics, figures and the report documents of an experiment's recorded runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from repro_lits.cli.common import configure_logging, user_errors
from repro_lits.report import build_report, terminal_table
from repro_lits.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED


@user_errors
def report(
    results: Annotated[
        Path, typer.Option("--results", help="Results folder that `repro-lits run` wrote (one subfolder per experiment).")
    ] = Path("results"),
    experiment: Annotated[
        str | None,
        typer.Option("--experiment", help="Experiment to report; required only when the results folder contains several."),
    ] = None,
    figures: Annotated[
        Path, typer.Option("--figures", help="Folder for the PNG (200 dpi) and SVG figures.")
    ] = Path("figures"),
    resamples: Annotated[
        int, typer.Option("--resamples", min=1, help="Bootstrap resamples for the confidence interval of the std.")
    ] = BOOTSTRAP_RESAMPLES,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap's random generator.")] = BOOTSTRAP_SEED,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
) -> None:
    """Write the statistics tables, figures, report.md and report.html of an experiment's runs.

    Example: repro-lits report --results results --experiment cpu --figures figures
    """
    configure_logging(verbose)
    outputs = build_report(
        results_dir=results, experiment=experiment, figures_dir=figures, resamples=resamples, seed=seed
    )
    console = Console(soft_wrap=True)
    if not console.is_terminal:
        # Piped or captured output gets 80 columns by default, which wraps the table's setup names.
        console.width = max(console.width, 120)
    console.print(terminal_table(outputs.data))
    for line in outputs.data.missing:
        console.print(f"missing: {line}", markup=False)
    console.print(f"report: {outputs.markdown} and {outputs.html}", markup=False)
    console.print(f"tables: {', '.join(str(path) for path in outputs.tables)}", markup=False)
    console.print(f"figures: {', '.join(str(path) for path in outputs.figures)}", markup=False)
