"""Command-line options that several commands share, defined once so they read the same."""

from __future__ import annotations

from typing import Any

import typer

__all__ = ["skip_invalid_option"]


def skip_invalid_option() -> Any:
    """``--skip-invalid/--no-skip-invalid`` for every command that reads the prompt file."""
    return typer.Option(
        None,
        "--skip-invalid/--no-skip-invalid",
        help="Skip invalid prompt rows and report how many; --no-skip-invalid stops at the "
        "first one, naming its file and line. Overrides prompts.skip_invalid of the run file.",
        show_default=False,
    )
