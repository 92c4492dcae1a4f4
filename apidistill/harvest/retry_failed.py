"""Which requests that failed for good in an earlier run a new run sends again.

A request journaled ``failed`` for a reason retrying cannot fix (``rejected`` after a 401 /
403 / 404, ``out_of_credit``, ``capability``, ``exceeds_tpm``...) is a final answer: a re-run
returns that failure without sending, so fixing the key or the model name changes nothing.
Once the cause is fixed, the user names the reasons to try again (``--retry-failed
rejected`` or ``harvest.retry_failed: [rejected]``; ``all`` for every reason).

What stays true whatever is asked:

- a request with an answer is never sent again (it is ``done``, not ``failed``);
- a failed request whose earlier send may have been billed (its answer was lost: a timeout or
  a reset before the final refusal, ``at_risk_usd > 0``) is not sent again unless the user
  also names ``at_risk``: re-sending it may pay twice for one answer.

Failures for reasons a later run retries anyway (``stopped``, ``rate_limited``, ``timeout``,
``unavailable``...; :data:`~apidistill.storage.journal.RETRYABLE_REASONS`) need no flag.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from apidistill.errors import ConfigError
from apidistill.storage.journal import RETRYABLE_REASONS, CachedRow

__all__ = ["FINAL_REASONS", "RetryFailed"]

#: Failure reasons a re-run returns without sending (unless asked to retry them).
FINAL_REASONS = frozenset({"rejected", "out_of_credit", "capability", "exceeds_tpm", "cancelled"})
ALL = "all"
AT_RISK = "at_risk"


@dataclass(frozen=True, slots=True)
class RetryFailed:
    """The user's choice. ``reasons``: the failure reasons to send again (``None``: every
    reason); ``at_risk``: also those whose earlier send may have been billed."""

    reasons: frozenset[str] | None = frozenset()
    at_risk: bool = False

    @classmethod
    def parse(
        cls, words: str | Iterable[str] | None, *, key: str = "--retry-failed"
    ) -> RetryFailed:
        """``"rejected,out_of_credit"``, ``["all", "at_risk"]``, ``"all"``; None: nothing."""
        if words is None:
            return cls()
        if isinstance(words, str):
            words = words.split(",")
        chosen = {w.strip() for w in words if w.strip()}
        known = FINAL_REASONS | RETRYABLE_REASONS | {ALL, AT_RISK}
        bad = sorted(chosen - known)
        if bad:
            raise ConfigError(
                f"unknown failure reason(s) {', '.join(map(repr, bad))}",
                key=key,
                hint=f"use 'all' or some of: {', '.join(sorted(FINAL_REASONS))}; add "
                "'at_risk' to also re-send requests that may already have been billed",
            )
        at_risk = AT_RISK in chosen
        chosen.discard(AT_RISK)
        if not chosen and at_risk:
            raise ConfigError(
                "'at_risk' alone names no failure reason",
                key=key,
                hint="name the reasons too, e.g. 'rejected,at_risk' or 'all,at_risk'",
            )
        return cls(None if ALL in chosen else frozenset(chosen), at_risk)

    @property
    def active(self) -> bool:
        return self.reasons is None or bool(self.reasons)

    def resends(self, row: CachedRow) -> bool:
        """Whether this final failure is to be sent again by this run."""
        if row.state != "failed" or row.reason in RETRYABLE_REASONS or not self.active:
            return False
        if (row.unknown_sends or row.at_risk_usd > 0) and not self.at_risk:
            return False
        return self.reasons is None or row.reason in self.reasons

    def reuses(self, row: CachedRow) -> bool:
        """Whether a re-run returns the journaled outcome of ``row`` without sending."""
        return row.reusable and not self.resends(row)

    def describe(self) -> str:
        what = "every reason" if self.reasons is None else ", ".join(sorted(self.reasons))
        return what + (" (at-risk requests too)" if self.at_risk else "")
