"""CLI commands of this stage (wired in apidistill/cli.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from apidistill.errors import ConfigError


def run(config: Path = typer.Argument(..., help="YAML run file.")) -> None:
    raise ConfigError("run: not built yet")


def demo() -> None:
    raise ConfigError("demo: not built yet")


def bench(quick: bool = typer.Option(False, help="CI-sized run.")) -> None:
    raise ConfigError("bench: not built yet")
