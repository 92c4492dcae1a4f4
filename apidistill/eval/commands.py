"""CLI commands of this stage (wired in apidistill/cli.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from apidistill.errors import ConfigError


def eval_cmd(config: Path = typer.Argument(..., help="YAML run file.")) -> None:
    raise ConfigError("eval: not built yet")


def report(run_dir: Path = typer.Argument(..., help="Run directory.")) -> None:
    raise ConfigError("report: not built yet")
