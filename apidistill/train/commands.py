"""CLI commands of this stage (wired in apidistill/cli.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from apidistill.errors import ConfigError


def train(config: Path = typer.Argument(..., help="YAML run file.")) -> None:
    raise ConfigError("train: not built yet")
