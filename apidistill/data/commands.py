"""CLI commands of this stage (wired in apidistill/cli.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from apidistill.errors import ConfigError

data_app = typer.Typer(no_args_is_help=True)


@data_app.command("inspect")
def inspect(path: Path) -> None:
    """Show counts and histograms of a dataset."""
    raise ConfigError("data inspect: not built yet")
