"""Command-line interface: ``repro-lits data|run|report|verify|env``.

Every command only parses options and calls a plain function of the package,
which Python code and the tests call directly.
"""

from repro_lits.cli.app import app

__all__ = ["app"]
