"""CLI commands of this stage (wired in apidistill/cli.py)."""

from __future__ import annotations

import typer

from apidistill.errors import ConfigError


def serve(model: str = typer.Option("smollm2-135m-instruct", help="Model to serve.")) -> None:
    raise ConfigError("serve: not built yet")
