"""What a harvest hands back: one result per request, one summary per run."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from apidistill.costs.budget import format_usd
from apidistill.records import Completion, TeacherRequest
from apidistill.storage.journal import RETRYABLE_REASONS, Recovery

# Reasons a re-run retries on its own (outcome_unknown: resend_unknown decides).
_RETRIED_ANYWAY = RETRYABLE_REASONS | {"outcome_unknown"}

__all__ = ["HarvestInterrupted", "HarvestResult", "HarvestSummary", "StopReason"]

# How many different messages the summary keeps per failure reason.
_FIRST_ERRORS = 3

StopReason = Literal["budget", "max_requests", "interrupt", "closed"]


@dataclass(frozen=True, slots=True)
class HarvestResult:
    """The outcome of one request. Exactly one of ``completion`` / ``error`` is set.

    ``from_cache``: answered by an earlier run (or by an identical request earlier in this
    one) and not sent again. ``reason`` is a short stable word for failures
    (``rate_limited``, ``timeout``, ``unavailable``, ``rejected``, ``capability``,
    ``stopped``, ``exceeds_tpm``, ``internal``...).
    """

    key: str
    request: TeacherRequest
    completion: Completion | None
    error: str | None = None
    from_cache: bool = False
    reason: str | None = None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.completion is not None


@dataclass
class HarvestSummary:
    """Counts and money for one run (this process), plus what it found from earlier runs."""

    done: int = 0  # answered by a send of this run
    cached: int = 0  # answered before, returned without sending
    failed: Counter[str] = field(default_factory=Counter)  # reason -> count
    # reason -> the first few distinct messages (the provider's text and the hint)
    first_errors: dict[str, list[str]] = field(default_factory=dict)
    retried_failed: int = 0  # final failures of earlier runs sent again (retry_failed)
    sends: int = 0  # attempts that went out (retries included)
    resent: int = 0  # sends of requests an earlier send may already have been billed for
    recovered: int = 0  # outcome-unknown requests answered from the provider's store, unsent
    unknown_found: int = 0  # outcome-unknown requests found on open (crash / fault)
    crashed_found: int = 0  # of which left in flight by the last killed process
    crashes_total: int = 0  # killed processes the journal found, every run
    crashed_total: int = 0  # requests they left in flight, all of them together
    crashed_total_usd: Decimal = Decimal(0)  # their worst case, all together
    at_risk_found_usd: Decimal = Decimal(0)  # their worst-case cost, still charged
    unknown_this_run: int = 0  # sends of this run whose outcome is unknown
    spent_usd: Decimal = Decimal(0)  # settled by this run
    at_risk_usd: Decimal = Decimal(0)  # became at risk in this run
    total_spent_usd: Decimal = Decimal(0)  # whole journal, every run
    total_at_risk_usd: Decimal = Decimal(0)
    unpriced: bool = False  # costs unknown: the budget counted requests only
    rate_limit_pauses: int = 0
    # answers whose usage was missing (charged at the reservation) or outside what the
    # request could produce (apidistill.costs.usage_check); flag -> count
    usage_flags: Counter[str] = field(default_factory=Counter)
    stopped_by: StopReason | None = None
    stop_message: str | None = None
    elapsed_s: float = 0.0
    # over the answers delivered (sent or from the journal): logprobs NaN/±inf/masked
    logprobs_invalid: int = 0  # sampled-token values stored as -100
    logprobs_dropped: int = 0  # top-list alternatives left out

    def count_recovery(self, rec: Recovery) -> None:
        """Note what opening the journal found from earlier runs (both engines report it)."""
        self.unknown_found = rec.unknown
        self.crashed_found = rec.crashed
        self.crashes_total = rec.crashes_total
        self.crashed_total = rec.crashed_total
        self.crashed_total_usd = rec.crashed_total_usd
        self.at_risk_found_usd = rec.unknown_at_risk_usd

    def count_answer(self, result: HarvestResult) -> None:
        """Note what one delivered answer carries that the numbers above do not show."""
        comp = result.completion
        if comp is not None:
            self.logprobs_invalid += comp.logprobs_invalid
            self.logprobs_dropped += comp.logprobs_dropped

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    def note_failure(self, reason: str, error: str | None) -> None:
        """Count one failed request; keep its message if it is among the first of its kind."""
        self.failed[reason] += 1
        text = (error or "").strip()
        if text.startswith(f"{reason}: "):
            text = text[len(reason) + 2 :]
        kept = self.first_errors.setdefault(reason, [])
        if text and len(kept) < _FIRST_ERRORS and text not in kept:
            kept.append(text)

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for k, v in self.__dict__.items():
            out[k] = str(v) if isinstance(v, Decimal) else dict(v) if isinstance(v, Counter) else v
        return out

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line (for the CLI and logs)."""
        out = [
            f"done {self.done}, from cache {self.cached}, failed {self.failed_total}"
            + (f" ({', '.join(f'{k} {v}' for k, v in self.failed.most_common())})"
               if self.failed else ""),
            f"spent {format_usd(self.spent_usd)} this run, {format_usd(self.total_spent_usd)} "
            "in all"
            if not self.unpriced
            else "spend unknown: the model has no price (allow_unpriced)",
        ]  # fmt: skip
        for reason, n in self.failed.most_common():
            for text in self.first_errors.get(reason, []):
                lines = text.splitlines()
                out.append(f"  {reason} ({n}): {lines[0]}")
                out.extend(f"    {ln.strip()}" for ln in lines[1:] if ln.strip())
        final = sorted(r for r in self.failed if r not in _RETRIED_ANYWAY)
        if final:
            out.append(
                "  a re-run returns these failures without sending; once the cause is fixed, "
                f"re-run with --retry-failed {','.join(final)} (answered requests are never "
                "sent again)"
            )
        if self.retried_failed:
            out.append(f"sent again {self.retried_failed} request(s) that had failed before")
        if self.unknown_found:
            out.append(
                f"found {self.unknown_found} request(s) whose outcome was unknown "
                f"({self.crashed_found} left in flight by the last stopped process); "
                f"{format_usd(self.at_risk_found_usd)} may have been billed for them"
            )
        if self.crashed_found and self.crashes_total > 1:
            out.append(
                f"in all, {self.crashes_total} stopped processes left {self.crashed_total} "
                f"request(s) in flight (worst case {format_usd(self.crashed_total_usd)}), as the "
                "journal "
                "records"
            )
        if self.recovered:
            out.append(
                f"recovered {self.recovered} lost answer(s) from the provider's stored "
                "completions instead of re-sending them"
            )
        if self.resent:
            out.append(f"re-sent {self.resent} request(s) that may already have been billed")
        if self.unknown_this_run:
            out.append(
                f"{self.unknown_this_run} send(s) lost their answer after sending "
                f"({format_usd(self.at_risk_usd)} at risk, kept charged in the budget)"
            )
        if self.usage_flags.get("usage_missing"):
            out.append(
                f"{self.usage_flags['usage_missing']} answer(s) came without usage: charged at "
                "their reservation, not at $0 (flagged in the journal)"
            )
        if self.usage_flags.get("usage_out_of_bounds"):
            out.append(
                f"{self.usage_flags['usage_out_of_bounds']} answer(s) reported more tokens than "
                "the request could produce (flagged in the journal; booked as reported)"
            )
        if self.logprobs_invalid or self.logprobs_dropped:
            out.append(
                f"logprobs without a usable value (NaN, ±inf or masked): "
                f"{self.logprobs_invalid} sampled token(s) stored as -100, "
                f"{self.logprobs_dropped} top alternative(s) left out"
            )
        if self.stopped_by:
            out.append(f"stopped early ({self.stopped_by}): {self.stop_message or ''}".rstrip())
        return out


class HarvestInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM stopped the harvest after draining what was in flight.

    A ``KeyboardInterrupt`` (so programs stop as the user asked) that carries the run's
    ``summary``: everything answered so far is journaled and a re-run resumes.
    """

    def __init__(self, summary: HarvestSummary) -> None:
        super().__init__("harvest interrupted; everything answered so far is saved")
        self.summary = summary
