"""Command-line options that several commands share, defined once so they read the same."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from apidistill.config import RunConfig

__all__ = [
    "apply_retry_failed",
    "apply_skip_invalid",
    "fresh_option",
    "retry_failed_option",
    "skip_invalid_option",
]


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
    """The flag, when given, overrides ``prompts.skip_invalid`` of the run file and the
    ``skip_invalid`` of each ``prompts.imports`` entry."""
    if skip_invalid is not None:
        cfg.prompts.skip_invalid = skip_invalid
        for src in cfg.prompts.imports:
            src.skip_invalid = skip_invalid


def retry_failed_option() -> Any:
    """``--retry-failed REASONS`` for ``harvest`` and ``run``."""
    return typer.Option(
        None,
        "--retry-failed",
        metavar="REASONS",
        help="Send again the requests an earlier run gave up on for these reasons, once the "
        "cause is fixed: comma-separated (rejected, out_of_credit, capability, exceeds_tpm) or "
        "'all'; add 'at_risk' to also re-send requests that may already have been billed. "
        "Answered requests are never sent again. Overrides harvest.retry_failed.",
        show_default=False,
    )


def apply_retry_failed(cfg: RunConfig, value: str | None) -> None:
    """The flag, when given, replaces ``harvest.retry_failed``; checked before anything runs."""
    if value is None:
        return
    from apidistill.harvest.retry_failed import RetryFailed

    RetryFailed.parse(value, key="--retry-failed")
    cfg.harvest.retry_failed = value.split(",")


def fresh_option() -> Any:
    """``--fresh``: start the run over on purpose, moving its old state aside."""
    return typer.Option(
        False,
        "--fresh",
        help="Start this run over: move the run folder's journal, records, dataset and "
        "identity aside into a dated 'previous-*' folder (nothing is deleted), then run.",
    )
