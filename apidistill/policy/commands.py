"""CLI commands of this stage (wired in apidistill/cli.py)."""

from __future__ import annotations

import typer

from apidistill.errors import ConfigError

policy_app = typer.Typer(no_args_is_help=True)


@policy_app.command("check")
def check(
    teacher: str = typer.Option(...), model: str = typer.Option(...), use: str = typer.Option(...)
) -> None:
    """Decide whether a teacher/model may be distilled for a use."""
    raise ConfigError("policy check: not built yet")
