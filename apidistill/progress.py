"""Rich progress bars shared by every long stage: count, rate, ETA and (for harvest) spend.

Progress goes to stderr so stdout stays parseable; it turns itself off when stderr is not a
terminal unless ``APIDISTILL_PROGRESS=1`` (CI logs still get one line per finished task).
"""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = ["RateColumn", "console", "make_progress"]

console = Console(stderr=True)


class RateColumn(ProgressColumn):
    """Items per second (``unit`` names the items)."""

    def __init__(self, unit: str = "it") -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text(f"– {self.unit}/s", style="progress.data.speed")
        return Text(f"{speed:.2f} {self.unit}/s", style="progress.data.speed")


def make_progress(*extra: ProgressColumn | str, unit: str = "it") -> Progress:
    """A progress display: description, bar, n/total, rate, elapsed, ETA, then ``extra``
    columns (e.g. ``"{task.fields[spend]}"`` for harvest spend)."""
    enabled = sys.stderr.isatty() or os.environ.get("APIDISTILL_PROGRESS") == "1"
    cols: list[ProgressColumn | str] = [
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    cols.extend(TextColumn(c) if isinstance(c, str) else c for c in extra)
    return Progress(*cols, console=console, disable=not enabled, transient=False)
