"""The harvest progress bar: done/failed, rate, ETA and spend (``apidistill.progress``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from apidistill.costs.budget import Budget, format_usd
from apidistill.harvest.results import HarvestResult, HarvestSummary

if TYPE_CHECKING:
    from apidistill.harvest.engine import HarvestEngine

__all__ = ["HarvestProgress", "spend_text"]


def spend_text(budget: Budget | None, summary: HarvestSummary, unpriced: bool) -> str:
    """``$0.0123 of $5`` with a budget, ``$0.0123`` without, ``spend unknown`` if unpriced."""
    if unpriced:
        return "spend unknown"
    if budget is not None:
        risk = f" (+{format_usd(budget.at_risk)} at risk)" if budget.at_risk else ""
        return f"{format_usd(budget.spent)} of {format_usd(budget.limit)}{risk}"
    return format_usd(summary.spent_usd)


class HarvestProgress:
    """A rich bar when stderr is a terminal (or ``APIDISTILL_PROGRESS=1``); silent otherwise.

    Updates are throttled to ~10 per second so a fast cache replay does not spend its time
    drawing.
    """

    def __init__(self, *, total: int | None, budget: Budget | None, enabled: bool) -> None:
        self.total = total
        self.budget = budget
        self.enabled = enabled
        self._progress: Any = None
        self._task: Any = None
        self._pending = 0
        self._last = 0.0
        self._t0 = time.monotonic()
        self._unpriced = False
        self.elapsed_s = 0.0

    def start(self, engine: HarvestEngine) -> None:
        self._t0 = time.monotonic()
        self._unpriced = engine.price is None
        if not self.enabled:
            return
        from apidistill.progress import make_progress

        progress = make_progress(
            "[red]{task.fields[failed]} failed",
            "{task.fields[cached]} cached",
            "[green]{task.fields[spend]}",
            unit="req",
        )
        if progress.disable:
            return
        self._progress = progress
        progress.start()
        self._task = progress.add_task(
            f"harvest {engine.teacher.model}", total=self.total, failed=0, cached=0, spend="$0"
        )

    def advance(self, result: HarvestResult, summary: HarvestSummary) -> None:
        if self._progress is None:
            return
        self._pending += 1
        now = time.monotonic()
        if now - self._last < 0.1:
            return
        self._flush(summary, now)

    def _flush(self, summary: HarvestSummary, now: float) -> None:
        self._last = now
        self._progress.update(
            self._task,
            advance=self._pending,
            failed=summary.failed_total,
            cached=summary.cached,
            spend=spend_text(self.budget, summary, self._unpriced),
        )
        self._pending = 0

    def stop(self, summary: HarvestSummary) -> None:
        self.elapsed_s = time.monotonic() - self._t0
        if self._progress is None:
            return
        self._flush(summary, time.monotonic())
        self._progress.stop()
        for line in summary.lines():
            self._progress.console.print(line, highlight=False)
        self._progress = None
