"""The typer application that assembles the commands."""

from __future__ import annotations

import typer

from repro_lits.cli import data as data_commands
from repro_lits.cli.report import report
from repro_lits.cli.run import run
from repro_lits.cli.verify import env, verify

app = typer.Typer(
    name="repro-lits",
    help="Train a 3D U-Net on liver CT under the random, seed and deterministic setups and measure reproducibility.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_commands.app, name="data")
app.command("run")(run)
app.command("report")(report)
app.command("verify")(verify)
app.command("env")(env)
