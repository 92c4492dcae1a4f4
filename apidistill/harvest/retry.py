"""The one retry policy of apidistill: what is retried, how long to wait, when to give up.

Teachers send exactly one request and map every failure into :mod:`apidistill.errors`;
nothing else in the project retries. The decisions are plain functions (``classify``,
``backoff_s``) so they can be tested without I/O; :meth:`RetryPolicy.retrying` wraps them in
a tenacity ``AsyncRetrying`` for the engine.

Retried: 408, 409, 429, 5xx, 529 and connection/timeout failures (``RateLimited``,
``TeacherTimeout``, ``TeacherUnavailable``). Never retried: 400/401/403/404/422
(``TeacherRejected``), ``CapabilityError``, and anything that is not a ``TeacherError``
(a bug must not be hammered against a paid API).

``maybe_billed`` says whether a failed attempt may still have been billed (the request
reached the provider and the answer was lost): the engine keeps such an attempt's worst-case
cost charged as "at risk" and journals it as an outcome-unknown send.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from apidistill.errors import (
    CapabilityError,
    OutOfCredit,
    RateLimited,
    TeacherError,
    TeacherRejected,
    TeacherTimeout,
    TeacherUnavailable,
)

__all__ = [
    "FATAL_STATUS",
    "RETRYABLE_STATUS",
    "Failure",
    "RetryPolicy",
    "backoff_s",
    "classify",
]

RETRYABLE_STATUS = frozenset({408, 409, 429, 529})
FATAL_STATUS = frozenset({400, 401, 403, 404, 422})
RATE_STATUS = frozenset({429, 529})


@dataclass(frozen=True, slots=True)
class Failure:
    """How the engine must treat one failed attempt."""

    retryable: bool
    reason: str  # short, stable: rate_limited, timeout, unavailable, rejected, capability, ...
    maybe_billed: bool
    retry_after: float | None = None
    rate_limited: bool = False  # tell the limiter to pause this teacher


def _status_retryable(status: int) -> bool:
    return status in RETRYABLE_STATUS or 500 <= status <= 599


def classify(exc: BaseException) -> Failure:
    """Decide retry / reason / billing for an exception raised by one send."""
    if not isinstance(exc, Exception):  # CancelledError, KeyboardInterrupt: never retried
        return Failure(False, "cancelled", maybe_billed=True)
    if not isinstance(exc, TeacherError):
        return Failure(False, "internal", maybe_billed=True)
    status = exc.status
    retry_after = getattr(exc, "retry_after", None)
    billed_attr = getattr(exc, "maybe_billed", None)
    if isinstance(exc, CapabilityError):
        return Failure(False, "capability", _billed(billed_attr, False))
    if isinstance(exc, OutOfCredit):  # a 429 that is not a rate limit: adding credit fixes it
        return Failure(False, "out_of_credit", _billed(billed_attr, False))
    if isinstance(exc, TeacherRejected) or (status is not None and status in FATAL_STATUS):
        return Failure(False, "rejected", _billed(billed_attr, False))
    if isinstance(exc, RateLimited) or status in RATE_STATUS:
        return Failure(True, "rate_limited", _billed(billed_attr, False), retry_after, True)
    if isinstance(exc, TeacherTimeout) or status == 408:
        return Failure(True, "timeout", _billed(billed_attr, True), retry_after)
    if isinstance(exc, TeacherUnavailable):
        # No status = the connection failed: the request may have been read before it broke.
        return Failure(True, "unavailable", _billed(billed_attr, status is None), retry_after)
    if status is not None and _status_retryable(status):
        return Failure(True, "unavailable", _billed(billed_attr, False), retry_after)
    # A TeacherError the teacher could not place (malformed answer, unknown status): the
    # request reached the provider, so it may be billed; retrying it is the caller's choice.
    return Failure(False, "teacher_error", _billed(billed_attr, True), retry_after)


def _billed(flag: object, default: bool) -> bool:
    return default if flag is None else bool(flag)


def backoff_s(
    attempt: int,
    retry_after: float | None,
    *,
    initial_s: float = 0.5,
    max_s: float = 30.0,
    max_retry_after_s: float = 300.0,
    jitter: float = 0.25,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1).

    A provider's ``retry_after`` wins (up to ``max_retry_after_s``), plus up to 10% so that
    many waiters do not return in the same millisecond; otherwise exponential backoff with
    jitter that only shortens the wait (never below ``1 - jitter`` of the step).
    """
    r = (rng or random).random()
    if retry_after is not None and retry_after >= 0:
        base = min(retry_after, max_retry_after_s)
        return base + base * 0.1 * r
    step = min(initial_s * (2 ** max(attempt - 1, 0)), max_s)
    return step * (1.0 - jitter * r)


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts, per-request timeout and backoff shape (``max_retries`` retries after the
    first attempt)."""

    max_retries: int = 6
    timeout_s: float = 120.0
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 300.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")

    @classmethod
    def from_config(cls, cfg: object) -> RetryPolicy:
        """From a :class:`~apidistill.config.HarvestConfig` (duck-typed to avoid a cycle)."""
        return cls(max_retries=cfg.max_retries, timeout_s=cfg.timeout_s)  # type: ignore[attr-defined]

    def delay_for(self, attempt: int, exc: BaseException | None) -> float:
        retry_after = classify(exc).retry_after if exc is not None else None
        return backoff_s(
            attempt,
            retry_after,
            initial_s=self.initial_backoff_s,
            max_s=self.max_backoff_s,
            max_retry_after_s=self.max_retry_after_s,
            jitter=self.jitter,
        )

    def retrying(
        self,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        should_stop: Callable[[], bool] = lambda: False,
        attempts_done: int = 0,
    ) -> AsyncRetrying:
        """A fresh tenacity controller for one request (tenacity keeps per-object state, so
        never share one between concurrent requests). ``should_stop`` ends retrying early
        (graceful stop); ``sleep`` may wake early for the same reason. ``attempts_done``:
        attempts already made outside the controller (they count toward the limit and the
        backoff)."""

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome is not None else None
            return self.delay_for(state.attempt_number + attempts_done, exc)

        attempts = stop_after_attempt(max(self.max_retries + 1 - attempts_done, 1))

        def stop(state: RetryCallState) -> bool:
            return should_stop() or attempts(state)

        return AsyncRetrying(
            sleep=sleep,
            stop=stop,
            wait=wait,
            retry=retry_if_exception(lambda e: classify(e).retryable),
            reraise=True,
        )
