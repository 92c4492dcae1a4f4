"""Command-line options that several commands share, defined once so they read the same."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from apidistill.config import RunConfig

__all__ = ["apply_skip_invalid", "skip_invalid_option"]


def skip_invalid_option() -> Any:
    """``--skip-invalid/--no-skip-invalid`` for every command that reads the prompt file."""
    return typer.Option(
        None,
        "--skip-invalid/--no-skip-invalid",
        help="Skip invalid prompt rows and report how many; --no-skip-invalid stops at the "
        "first one, naming its file and line. Overrides prompts.skip_invalid of the run file.",
        show_default=False,
    )


def apply_skip_invalid(cfg: RunConfig, skip_invalid: bool | None) -> None:
    """The flag, when given, overrides ``prompts.skip_invalid`` of the run file."""
    if skip_invalid is not None:
        cfg.prompts.skip_invalid = skip_invalid
