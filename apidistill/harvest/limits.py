"""Per-teacher request and token rate limits that hold in every sliding window.

A token bucket with capacity = limit lets 2x the limit through in some windows (a full
bucket drained at the end of one minute, refilled and drained again at the start of the
next). :class:`SlidingWindow` instead keeps a log of what was sent: a unit counts from the
moment it is reserved until ``window_s`` after its request *finished*. Since the provider
receives a request after we reserve it and before we see its answer, every window the
provider can measure holds at most ``limit`` units.

Tokens are reserved at their worst case (input + max_tokens) and corrected to the actual
usage when the request finishes. :class:`RateLimiter` combines the windows with what the
provider says: ``x-ratelimit-remaining/reset`` headers (no more sends than it says remain
before its reset) and 429s (once they are more than noise — ``pause_after`` of the last
``of_last`` answers — every send pauses for the Retry-After; a lone 429 only delays its own
retry). Waiters wake from a timer or a release: nothing polls.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from apidistill.errors import ConfigError

if TYPE_CHECKING:  # the teacher SDKs load only when a teacher is built
    from apidistill.teachers.base import RateLimitSnapshot

__all__ = ["Headroom", "Permit", "RateLimiter", "SlidingWindow", "Stopped"]


class Stopped(Exception):
    """A wait for capacity was abandoned because the run is stopping."""


class SlidingWindow:
    """Pure accounting for "at most ``limit`` units in any ``window_s`` seconds".

    ``take`` holds units while a request is in flight; ``finish`` turns them into the
    request's actual units, which expire ``window_s`` after the finish.
    """

    def __init__(self, limit: int, window_s: float) -> None:
        if limit <= 0 or window_s <= 0:
            raise ValueError(f"limit and window_s must be > 0, got {limit}, {window_s}")
        self.limit = limit
        self.window_s = window_s
        self._held = 0
        self._ended: deque[tuple[float, int]] = deque()  # (expires_at, units), sorted
        self._ended_sum = 0

    def _expire(self, now: float) -> None:
        ended = self._ended
        while ended and ended[0][0] <= now:
            self._ended_sum -= ended.popleft()[1]

    def used(self, now: float) -> int:
        self._expire(now)
        return self._held + self._ended_sum

    def fits(self, units: int, now: float) -> bool:
        return self.used(now) + units <= self.limit

    def take(self, units: int) -> None:
        self._held += units

    def finish(self, reserved: int, actual: int, now: float) -> None:
        """The request holding ``reserved`` finished having used ``actual`` units."""
        self._held -= reserved
        if actual > 0:
            self._ended.append((now + self.window_s, actual))
            self._ended_sum += actual

    def free_at(self, units: int, now: float) -> float | None:
        """Earliest time ``units`` fit if nothing else finishes; ``None`` when only a
        finish of an in-flight request can make room."""
        over = self.used(now) + units - self.limit
        if over <= 0:
            return now
        for expires_at, n in self._ended:
            over -= n
            if over <= 0:
                return expires_at
        return None


@dataclass
class Headroom:
    """What the provider last said remains until its reset (``x-ratelimit-*`` headers)."""

    remaining: int | None = None
    until: float = 0.0

    def update(self, remaining: int | None, reset_s: float | None, now: float) -> None:
        if remaining is None:
            return
        self.remaining = remaining
        self.until = now + (reset_s if reset_s is not None else 1.0)

    def blocked_until(self, units: int, now: float) -> float:
        if self.remaining is None or now >= self.until:
            self.remaining = None
            return now
        return now if self.remaining >= units else self.until

    def take(self, units: int) -> None:
        if self.remaining is not None:
            self.remaining -= units


@dataclass
class Permit:
    """Capacity held by one send; release it exactly once when the send is over."""

    tokens: int
    _limiter: RateLimiter | None = field(repr=False, default=None)

    def release(self, actual_tokens: int | None = None) -> None:
        """``actual_tokens``: usage the provider reported; ``None`` keeps the reservation
        (outcome unknown), 0 when the provider rejected the request unbilled."""
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter._release(self.tokens, self.tokens if actual_tokens is None else actual_tokens)


class RateLimiter:
    """RPM + TPM limits of one teacher, plus pauses the provider asked for.

    Waiters are served first come, first served; each waits on a future woken by a timer
    set for the moment capacity frees up, or by a release.
    """

    def __init__(
        self,
        rpm: int | None = None,
        tpm: int | None = None,
        *,
        window_s: float = 60.0,
        pause_after: int = 10,
        of_last: int = 40,
    ) -> None:
        self.rpm = SlidingWindow(rpm, window_s) if rpm else None
        self.tpm = SlidingWindow(tpm, window_s) if tpm else None
        self.requests_headroom = Headroom()
        self.tokens_headroom = Headroom()
        self._paused_until = 0.0
        self._waiters: deque[tuple[int, asyncio.Future[Permit]]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._closed: BaseException | None = None
        self.pauses = 0  # how often a 429 paused sending (for the summary)
        self._recent: deque[bool] = deque(maxlen=of_last)  # True = answered 429/529
        self._pause_after = pause_after

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    # ----------------------------------------------------------------- acquiring

    def _blocked_until(self, tokens: int, now: float) -> float | None:
        """When a request of ``tokens`` may go: ``now`` = at once, ``None`` = after a release."""
        times = [self._paused_until, now]
        times.append(self.requests_headroom.blocked_until(1, now))
        times.append(self.tokens_headroom.blocked_until(tokens, now))
        for window, units in ((self.rpm, 1), (self.tpm, tokens)):
            if window is not None:
                t = window.free_at(units, now)
                if t is None:
                    return None
                times.append(t)
        return max(times)

    def _grant(self, tokens: int) -> Permit:
        if self.rpm is not None:
            self.rpm.take(1)
        if self.tpm is not None:
            self.tpm.take(tokens)
        self.requests_headroom.take(1)
        self.tokens_headroom.take(tokens)
        return Permit(tokens, self)

    async def acquire(self, tokens: int) -> Permit:
        """Wait until one request of ``tokens`` (worst case) fits every limit."""
        if self._closed is not None:
            raise Stopped("the run is stopping")
        if self.tpm is not None and tokens > self.tpm.limit:
            raise ConfigError(
                f"one request needs up to {tokens} tokens (input + max_tokens) but the "
                f"tokens-per-minute limit is {self.tpm.limit}",
                key="harvest.tpm",
                hint="raise harvest.tpm or lower harvest.max_tokens",
            )
        if not self._waiters:
            now = self._now()
            at = self._blocked_until(tokens, now)
            if at is not None and at <= now:
                return self._grant(tokens)
        fut: asyncio.Future[Permit] = asyncio.get_running_loop().create_future()
        self._waiters.append((tokens, fut))
        self._wake()
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                fut.result().release(0)
            self._wake()
            raise

    def _wake(self) -> None:
        """Grant every waiter that fits now; arm one timer for the next."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiters:
            tokens, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            now = self._now()
            at = self._blocked_until(tokens, now)
            if at is None:
                return  # a release will call _wake
            if at > now:
                self._timer = asyncio.get_running_loop().call_at(at, self._wake)
                return
            self._waiters.popleft()
            fut.set_result(self._grant(tokens))

    def _release(self, reserved: int, actual: int) -> None:
        now = self._now()
        if self.rpm is not None:
            self.rpm.finish(1, 1, now)
        if self.tpm is not None:
            self.tpm.finish(reserved, actual, now)
        if self._waiters:
            self._wake()

    # ----------------------------------------------------------------- adapting

    def note_outcome(self, rate_limited: bool, retry_after: float | None = None) -> None:
        """Record how one attempt ended. A lone 429 only delays its own retry; once
        ``pause_after`` of the last ``of_last`` answers were 429s the provider's limit is
        really reached, and every send pauses for the Retry-After."""
        self._recent.append(rate_limited)
        if rate_limited and sum(self._recent) >= self._pause_after:
            self.pause(retry_after if retry_after is not None else 1.0)

    def pause(self, seconds: float) -> None:
        """The provider answered 429: send nothing for ``seconds``."""
        if seconds <= 0:
            return
        until = self._now() + seconds
        if until > self._paused_until:
            self._paused_until = until
            self.pauses += 1

    def observe(self, snapshot: RateLimitSnapshot | None) -> None:
        """Follow the provider's own count of what remains before its reset."""
        if snapshot is None:
            return
        now = self._now()
        self.requests_headroom.update(snapshot.remaining_requests, snapshot.reset_requests_s, now)
        self.tokens_headroom.update(snapshot.remaining_tokens, snapshot.reset_tokens_s, now)

    def close(self) -> None:
        """Stop: every waiter gets :class:`Stopped`; later ``acquire`` calls too."""
        self._closed = Stopped("the run is stopping")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiters:
            _, fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(Stopped("the run is stopping"))
