"""``repro-lits data``: synthesise, check and prepare CT datasets."""

from __future__ import annotations

import typer

app = typer.Typer(help="Synthesise, check and prepare CT datasets.", no_args_is_help=True)
