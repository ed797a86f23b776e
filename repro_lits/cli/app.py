"""The typer application that assembles the command groups."""

from __future__ import annotations

import typer

from repro_lits.cli import data as data_commands

app = typer.Typer(
    name="repro-lits",
    help="Train a 3D U-Net on liver CT under the random, seed and deterministic setups and measure reproducibility.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_commands.app, name="data")
