"""The async scheduler: bounded workers pull requests, and each request goes
budget → rate limits → journal ``sent`` → teacher → journal answer → result.

Memory stays flat for any number of prompts: a reader task keeps at most a few hundred
requests ahead, a bounded queue feeds ``concurrency`` workers, and results leave through a
bounded queue as they arrive (never a ``gather`` over all inputs).

Stopping is graceful whatever the cause (Ctrl-C/SIGTERM, budget, the consumer closing):
no new send and no retry starts, what is in flight finishes and is journaled, so a resume
re-sends nothing. ``max_requests`` only caps how many new requests this run starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from apidistill.costs.budget import Budget
from apidistill.costs.prices import ModelPrice, worst_case_cost
from apidistill.costs.tokens import byte_bound_tokens
from apidistill.costs.usage_check import USAGE_STOP_HINT, judge_usage, usage_flag_message
from apidistill.errors import BudgetExceeded, ConfigError, DataError, TeacherTimeout, redact
from apidistill.harvest.limits import RateLimiter, Stopped
from apidistill.harvest.results import HarvestResult, HarvestSummary, StopReason
from apidistill.harvest.retry import Failure, RetryPolicy, classify
from apidistill.harvest.retry_failed import RetryFailed
from apidistill.harvest.writer import AsyncJournal
from apidistill.records import Completion, TeacherRequest
from apidistill.storage.journal import CachedRow, JournalStore, JournalWriteError

if TYPE_CHECKING:  # the teacher SDKs load only when a teacher is built
    from apidistill.teachers.base import Teacher

__all__ = ["HarvestEngine", "StopSignal", "claim_ahead_for", "upper_bound_input_tokens"]

_END = object()
_LOOKAHEAD = 256


def claim_ahead_for(concurrency: int) -> int:
    """How many requests may be journaled ``sent`` while they wait for a send slot.

    Enough to cover the commit's latency (a few ms, while slots free every few ms at
    hundreds of requests per second), small next to ``concurrency``: it is how many more
    outcome-unknown rows than requests in flight a kill -9 can leave behind."""
    return max(2, concurrency // 8)


def upper_bound_input_tokens(request: TeacherRequest) -> int:
    """The engine's default reservation count: :func:`~apidistill.costs.tokens.byte_bound_tokens`
    (no byte-level tokenizer exceeds it). Pass ``count_input_tokens`` (e.g. a
    :class:`~apidistill.costs.tokens.TokenCounter` bound) to reserve closer to the count; a
    reported usage above what was reserved is flagged and stops the run."""
    return byte_bound_tokens(request)


class StopSignal:
    """Why the run stops. ``request`` is loop-thread only; use ``request_threadsafe``
    from signal handlers and other threads."""

    def __init__(self) -> None:
        self.reason: StopReason | None = None
        self.message: str | None = None
        self.hint: str | None = None  # what the user can do about it, when the cause knows
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_stop: list[Callable[[], None]] = []

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def on_stop(self, fn: Callable[[], None]) -> None:
        self._on_stop.append(fn)
        if self.reason is not None:
            fn()

    def request(
        self, reason: StopReason, message: str | None = None, hint: str | None = None
    ) -> None:
        if self.reason is not None:
            return
        self.reason, self.message, self.hint = reason, message, hint
        self._event.set()
        for fn in self._on_stop:
            fn()

    def request_threadsafe(self, reason: StopReason, message: str | None = None) -> None:
        if self._loop is None or self._loop.is_closed():
            self.reason, self.message = self.reason or reason, self.message or message
            return
        self._loop.call_soon_threadsafe(self.request, reason, message)

    def is_set(self) -> bool:
        return self.reason is not None

    async def sleep(self, seconds: float) -> None:
        """Sleep, waking early when the run stops (retry backoffs use this)."""
        if self.is_set() or seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)


@dataclass
class _Attempts:
    prior_unknown: int  # maybe-billed sends of earlier runs
    input_bound: int = 0  # the input tokens the reservation covers
    worst: Decimal | None = None  # the reservation
    holding: bool = True  # holds a budget reservation
    sends: int = 0
    unknown_here: int = 0


@dataclass(frozen=True)
class _BadInput:
    error: Exception


class _StopBeforeSend(Exception):
    """Stopped before this request's first send: nothing to journal, no result."""


class HarvestEngine:
    """One harvest run over an open journal. Build with the pieces, then ``await run()``."""

    def __init__(
        self,
        *,
        teacher: Teacher,
        journal: AsyncJournal,
        limiter: RateLimiter,
        policy: RetryPolicy,
        stop: StopSignal,
        budget: Budget | None = None,
        price: ModelPrice | None = None,
        concurrency: int = 16,
        max_requests: int | None = None,
        count_input_tokens: Callable[[TeacherRequest], int] | None = None,
        resend_unknown: bool = True,
        retry_failed: RetryFailed | None = None,
    ) -> None:
        self.teacher = teacher
        self.journal = journal
        self.limiter = limiter
        self.policy = policy
        self.stop = stop
        self.budget = budget
        self.price = price
        self.concurrency = concurrency
        self.max_requests = max_requests
        self.count_input_tokens = count_input_tokens or upper_bound_input_tokens
        self.resend_unknown = resend_unknown
        self.retry_failed = retry_failed or RetryFailed()
        self.summary = HarvestSummary()
        self._teacher_id = teacher.teacher_id
        self._model = teacher.model
        self._inflight: dict[str, list[TeacherRequest]] = {}
        self._started = 0
        self._emit: Callable[[HarvestResult], Awaitable[None]] | None = None
        self._budget_waiters: list[asyncio.Future[None]] = []
        stop.on_stop(self._budget_moved)  # a stop wakes requests waiting for budget
        self._slots = asyncio.Semaphore(concurrency)
        self.claim_ahead = claim_ahead_for(concurrency)
        self._ahead = asyncio.Semaphore(self.claim_ahead)
        stop.on_stop(limiter.close)

    # ------------------------------------------------------------------ run

    async def run(
        self,
        requests: Iterable[TeacherRequest] | AsyncIterable[TeacherRequest],
        emit: Callable[[HarvestResult], Awaitable[None]],
    ) -> HarvestSummary:
        """Harvest ``requests``; every result goes to ``emit`` once journaled."""
        self._emit = emit
        await self._restore()
        inbox: asyncio.Queue[Any] = asyncio.Queue(maxsize=_LOOKAHEAD)
        # More workers than send slots, so journaling an answer never idles a slot.
        n_workers = self.concurrency + min(self.concurrency, 64)
        work: asyncio.Queue[Any] = asyncio.Queue(maxsize=n_workers * 2)
        self.stop.on_stop(lambda: None if inbox.full() else inbox.put_nowait(_END))
        try:
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(self._read(requests, inbox))
                workers = [tg.create_task(self._worker(work)) for _ in range(n_workers)]
                bad_input = await self._pump(inbox, work)
                reader.cancel()
                for _ in workers:
                    await work.put(_END)
        except BaseExceptionGroup as group:  # surface the first real error, not a group
            first = group.exceptions[0]
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        await self._finish()
        if bad_input is not None:  # everything before the bad item was harvested
            raise bad_input
        return self.summary

    async def _restore(self) -> None:
        rec = self.journal.recovery
        if rec is not None:
            self.summary.count_recovery(rec)
        if self.budget is not None:
            totals = await self.journal.call(JournalStore.totals, _utc_day_start())
            self.budget.restore(
                spent=totals.spent_usd,
                at_risk=totals.at_risk_usd,
                spent_today=totals.spent_today_usd,
            )
        await self.journal.call(
            JournalStore.note,
            "run_start",
            {"teacher": self._teacher_id, "model": self._model, "concurrency": self.concurrency},
        )

    async def _finish(self) -> None:
        s = self.summary
        totals = await self.journal.call(JournalStore.totals, None)
        s.total_spent_usd, s.total_at_risk_usd = totals.spent_usd, totals.at_risk_usd
        s.unpriced = self.price is None
        s.rate_limit_pauses = self.limiter.pauses
        if self.stop.reason is not None and s.stopped_by is None:
            s.stopped_by, s.stop_message = self.stop.reason, self.stop.message
        await self.journal.call(JournalStore.note, "run_end", s.as_dict())

    # ---------------------------------------------------------------- input

    async def _read(self, requests: Any, inbox: asyncio.Queue[Any]) -> None:
        i = 0
        try:
            if isinstance(requests, AsyncIterable):
                async for req in requests:
                    await inbox.put(_check_item(req, i))
                    i += 1
            else:
                for req in requests:
                    await inbox.put(_check_item(req, i))
                    i += 1
        except Exception as exc:  # bad item or a failing iterator: drain, then raise it
            await inbox.put(_BadInput(exc))
            return
        await inbox.put(_END)

    async def _pump(self, inbox: asyncio.Queue[Any], work: asyncio.Queue[Any]) -> Exception | None:
        """Move requests from the reader to the workers; returns the input's error, if any."""
        while not self.stop.is_set():
            chunk = [await inbox.get()]
            while len(chunk) < _LOOKAHEAD and not inbox.empty():
                chunk.append(inbox.get_nowait())
            tail = next((j for j, x in enumerate(chunk) if not isinstance(x, TeacherRequest)), None)
            todo = chunk if tail is None else chunk[:tail]
            if todo and not await self._dispatch(todo, work):
                return None
            if tail is not None:
                marker = chunk[tail]
                return marker.error if isinstance(marker, _BadInput) else None
        return None

    async def _dispatch(self, chunk: list[TeacherRequest], work: asyncio.Queue[Any]) -> bool:
        """Queue what needs sending, answer cache hits; False once no more may start."""
        keys = [r.cache_key(self._teacher_id, self._model) for r in chunk]
        rows = await self.journal.call(JournalStore.lookup, list(set(keys)))
        for req, key in zip(chunk, keys, strict=True):
            if self.stop.is_set():
                return False
            if key in self._inflight:
                self._inflight[key].append(req)
                continue
            row = rows.get(key)
            if row is not None and self.retry_failed.reuses(row):
                await self._send_out(_cached_result(req, key, row))
                continue
            if row is not None and row.unknown_sends and not self.resend_unknown:
                await self._send_out(_unknown_result(req, key, row))
                continue
            if self.max_requests is not None and self._started >= self.max_requests:
                self.summary.stopped_by = "max_requests"
                self.summary.stop_message = f"started {self._started} new request(s)"
                return False
            self._started += 1
            if row is not None and self.retry_failed.resends(row):
                self.summary.retried_failed += 1
            self._inflight[key] = []
            await work.put((req, key, row))
        return True

    async def _send_out(self, result: HarvestResult) -> None:
        self.summary.count_answer(result)
        if not result.ok:
            self.summary.note_failure(result.reason or "error", result.error)
        elif result.from_cache:
            self.summary.cached += 1
        assert self._emit is not None
        await self._emit(result)

    # --------------------------------------------------------------- workers

    async def _worker(self, work: asyncio.Queue[Any]) -> None:
        while True:
            item = await work.get()
            if item is _END:
                return
            req, key, row = item
            result: HarvestResult | None = None
            try:
                if not self.stop.is_set():
                    result = await self._process(req, key, row)
            finally:
                dups = self._inflight.pop(key, [])
            if result is None:
                continue
            await self._send_out(result)
            for dup in dups:
                await self._send_out(replace(result, request=dup, from_cache=True))

    def _output_bound(self, req: TeacherRequest) -> int:
        """The most output tokens the request can be billed for: ``max_tokens`` plus the
        overrun the teacher's server is known to add (``Capabilities.output_overrun_tokens``)."""
        return req.params.max_tokens + self.teacher.capabilities.output_overrun_tokens

    async def _process(
        self, req: TeacherRequest, key: str, row: CachedRow | None
    ) -> HarvestResult | None:
        est_in = self.count_input_tokens(req)
        worst = (
            worst_case_cost(self.price, est_in, self._output_bound(req))
            if self.price is not None
            else None
        )
        st = _Attempts(
            prior_unknown=row.unknown_sends if row is not None else 0,
            input_bound=est_in,
            worst=worst,
        )
        if not await self._reserve(key, worst):
            return None
        try:
            if st.prior_unknown and row is not None:
                # the provider may still be finishing it: look until its timeout has passed
                until = row.updated_at + self.policy.timeout_s
                if (found := await self._recover(req, key, st, until)) is not None:
                    return found
            # The first attempt runs bare (most succeed; tenacity's setup costs ~60 µs), the
            # retries run under the policy's tenacity controller.
            try:
                return await self._attempt(req, key, worst, est_in, st, 1)
            except Exception as exc:
                if not classify(exc).retryable or self.policy.max_retries < 1:
                    raise
                if self.stop.is_set():
                    raise
                await self.stop.sleep(self.policy.delay_for(1, exc))
            retrying = self.policy.retrying(
                sleep=self.stop.sleep, should_stop=self.stop.is_set, attempts_done=1
            )
            async for attempt in retrying:
                with attempt:
                    n = attempt.retry_state.attempt_number + 1
                    if st.unknown_here and (found := await self._recover(req, key, st, 0.0)):
                        return found
                    return await self._attempt(req, key, worst, est_in, st, n)
        except _StopBeforeSend:
            return None
        except Stopped as exc:
            await self.journal.call(JournalStore.stopped, key, str(exc))
            return self._failure(req, key, "stopped", f"stopped before a retry: {exc}", st)
        except ConfigError as exc:  # e.g. larger than the whole TPM limit: never sendable
            return self._failure(req, key, "exceeds_tpm", exc.message, st)
        except JournalWriteError:
            raise  # cannot record anything more: stop the run
        except Exception as exc:
            info = classify(exc)
            return self._failure(req, key, info.reason, redact(str(exc)), st)
        finally:
            if st.holding and self.budget is not None:
                self.budget.release(key)
                self._budget_moved()
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _reserve(self, key: str, worst: Decimal | None) -> bool:
        """Hold the worst case before sending. When it does not fit but other requests hold
        reservations, wait for them to settle (an answer usually costs far less than its
        worst case) and try again; stop the run only when nothing else is reserved, i.e.
        when the budget is really spent."""
        if self.budget is None:
            return True
        while True:
            try:
                self.budget.reserve(key, worst)
                return True
            except BudgetExceeded as exc:
                if self.budget.reserved <= 0 or self.stop.is_set():
                    self.stop.request("budget", exc.message, exc.hint)
                    return False
            # Budget only moves on this loop's thread, so nothing can change between the
            # failed reserve and registering the waiter: no wake-up is lost.
            waiter = asyncio.get_running_loop().create_future()
            self._budget_waiters.append(waiter)
            await waiter

    def _budget_moved(self) -> None:
        """A reservation was settled or released: wake the requests waiting for budget."""
        waiters, self._budget_waiters = self._budget_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def _attempt(
        self,
        req: TeacherRequest,
        key: str,
        worst: Decimal | None,
        est_in: int,
        st: _Attempts,
        attempt_number: int,
    ) -> HarvestResult:
        """One send. ``sent`` is committed to the journal *before* the request takes its
        concurrency slot, so the commit (a writer-thread round trip and an fsync) overlaps
        the wait for a slot instead of adding to every request's time in it; the slot then
        covers rate-limit grant → send → answer, and ``concurrency`` is exactly the number
        of requests the provider holds. At most ``claim_ahead`` requests are journaled
        ``sent`` while they wait for a slot (a kill -9 reports them as outcome-unknown,
        though they never left; server-side duplicates stay ≤ ``concurrency``). A request
        that is stopped before its send is un-claimed. Journaling the answer happens after
        the slot is free."""
        first = st.sends == 0
        if not st.holding:
            if self.stop.is_set() or not await self._reserve(key, worst):
                raise Stopped(self.stop.message or "budget reached")
            st.holding = True
        async with self._ahead:
            if self.stop.is_set():
                raise _StopBeforeSend() if first else Stopped(self.stop.message or "stopping")
            claim = await self.journal.call(
                JournalStore.claim,
                key,
                teacher_id=self._teacher_id,
                model=self._model,
                request_json=req.model_dump_json(),
                prompt_id=req.prompt_id,
                label=_meta_str(req, "label"),
                split=_meta_str(req, "split"),
                reserved_usd=worst,
            )
            if claim.completion_json is not None:  # answered meanwhile by an identical request
                completion = Completion.model_validate_json(claim.completion_json)
                return HarvestResult(key, req, completion, from_cache=True)
            await self._slots.acquire()  # a cancel here leaves the row 'sent': unknown, safe
        try:
            if self.stop.is_set():
                await self._unclaim(key)
                raise _StopBeforeSend() if first else Stopped(self.stop.message or "stopping")
            try:
                permit = await self.limiter.acquire(est_in + self._output_bound(req))
            except Stopped:
                await self._unclaim(key)
                if first:
                    raise _StopBeforeSend() from None
                raise
            st.sends += 1
            self.summary.sends += 1
            if st.prior_unknown or st.unknown_here:
                self.summary.resent += 1
            try:
                async with asyncio.timeout(self.policy.timeout_s):
                    response = await self.teacher.complete(req)
            except BaseException as exc:
                error = _as_timeout(exc, self.policy.timeout_s)
                info = classify(error)
                permit.release(None if info.maybe_billed else 0)
                if isinstance(error, asyncio.CancelledError):
                    raise  # the row stays 'sent'; the next open reports it as unknown
            else:
                error = None
                usage = response.completion.usage
                permit.release(usage.input_tokens + usage.output_tokens)
                self.limiter.observe(response.rate_limits)
                self.limiter.note_outcome(False)
        finally:
            self._slots.release()
        if error is not None:
            await self._attempt_failed(key, worst, st, error, info, attempt_number)
            raise error
        return await self._answered(req, key, st, response)

    async def _unclaim(self, key: str) -> None:
        """Undo a claim whose request never left (the run stopped while it waited)."""
        await self.journal.call(JournalStore.unclaim, key, "the run stopped before this send")

    async def _recover(
        self, req: TeacherRequest, key: str, st: _Attempts, until: float
    ) -> HarvestResult | None:
        """Before re-sending a request whose earlier send may have been billed, ask the
        provider for its stored answer (teachers with ``can_recover``: OpenAI ``store``),
        again with backoff until the wall-clock time ``until`` (an answer still being
        generated is stored only when done). None: not found, or the lookup failed: the
        request is sent again (counted as a re-send)."""
        if not getattr(self.teacher, "can_recover", False):
            return None
        delay = 0.25
        while True:
            try:
                async with asyncio.timeout(self.policy.timeout_s):
                    response = await self.teacher.recover(req)  # type: ignore[attr-defined]
            except Exception:  # a failed lookup must not fail the request: re-send instead
                return None
            if response is not None:
                return await self._answered(req, key, st, response, recovered=True)
            left = until - time.time()
            if left <= 0 or self.stop.is_set():
                return None
            await self.stop.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)

    async def _answered(
        self,
        req: TeacherRequest,
        key: str,
        st: _Attempts,
        response: Any,
        *,
        recovered: bool = False,
    ) -> HarvestResult:
        completion = response.completion
        verdict = judge_usage(
            completion.usage,
            price=self.price,
            input_bound=st.input_bound,
            max_tokens=self._output_bound(req),
            reserved=st.worst,
            reported_cost=completion.cost_usd,
        )
        cost = verdict.cost
        completion = completion.model_copy(update={"cost_usd": cost, "request_hash": key})
        usage = completion.usage
        released = await self.journal.call(
            JournalStore.done,
            key,
            completion_json=completion.model_dump_json(),
            cost_usd=cost,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            recovered=recovered,
            usage_flag=verdict.flag,
            usage_detail=verdict.detail,
        )
        if verdict.flag is not None:
            self.summary.usage_flags[verdict.flag] += 1
        if verdict.stop:  # the cap is no longer guaranteed: no further send
            self.stop.request("budget", usage_flag_message(verdict), USAGE_STOP_HINT)
        if self.budget is not None:
            if not recovered:
                self.budget.settle(key, cost)
            else:  # the earlier, at-risk send is what was billed: no re-send is needed
                if st.holding:
                    self.budget.release(key)
                self.budget.settle_at_risk(cost, released)
            self._budget_moved()
            st.holding = False
        if recovered:
            self.summary.recovered += 1
        else:
            self.summary.done += 1
        if cost is not None:
            self.summary.spent_usd += cost
        return HarvestResult(key, req, completion, attempts=st.sends)

    async def _attempt_failed(
        self,
        key: str,
        worst: Decimal | None,
        st: _Attempts,
        exc: BaseException,
        info: Failure,
        attempt_number: int,
    ) -> None:
        self.limiter.note_outcome(info.rate_limited, info.retry_after)
        final = not info.retryable or attempt_number > self.policy.max_retries or self.stop.is_set()
        if info.maybe_billed:
            st.unknown_here += 1
            self.summary.unknown_this_run += 1
            if self.budget is not None and st.holding:
                self.budget.mark_at_risk(key)
                self._budget_moved()  # nothing freed, but a waiter may now be the last one
                st.holding = False
            if worst is not None:
                self.summary.at_risk_usd += worst
        await self.journal.call(
            JournalStore.attempt_failed,
            key,
            reason=info.reason,
            error=redact(str(exc))[:2000],
            maybe_billed=info.maybe_billed,
            final=final,
        )

    def _failure(
        self, req: TeacherRequest, key: str, reason: str, message: str, st: _Attempts
    ) -> HarvestResult:
        return HarvestResult(
            key, req, None, error=f"{reason}: {message}", reason=reason, attempts=st.sends
        )


# ------------------------------------------------------------------ helpers


def _utc_day_start() -> float:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def _check_item(item: object, index: int) -> TeacherRequest:
    if isinstance(item, TeacherRequest):
        return item
    raise DataError(
        f"request #{index} is a {type(item).__name__}, not a TeacherRequest",
        hint="build each item with apidistill.TeacherRequest(messages=[...], params=...)",
    )


def _meta_str(req: TeacherRequest, name: str) -> str | None:
    value = req.metadata.get(name)
    return None if value is None else str(value)


def _as_timeout(exc: BaseException, timeout_s: float) -> BaseException:
    if isinstance(exc, TimeoutError) and not isinstance(exc, TeacherTimeout):
        err = TeacherTimeout(
            f"no answer within {timeout_s:g} s",
            hint="raise harvest.timeout_s if the teacher is slow but healthy",
        )
        err.maybe_billed = True  # type: ignore[attr-defined]
        return err
    return exc


def _cached_result(req: TeacherRequest, key: str, row: CachedRow) -> HarvestResult:
    if row.state == "done" and row.completion_json is not None:
        return HarvestResult(
            key, req, Completion.model_validate_json(row.completion_json), from_cache=True
        )
    return HarvestResult(
        key,
        req,
        None,
        error=f"{row.reason}: {row.error or ''}".rstrip(": "),
        from_cache=True,
        reason=row.reason,
    )


def _unknown_result(req: TeacherRequest, key: str, row: CachedRow) -> HarvestResult:
    return HarvestResult(
        key,
        req,
        None,
        error=(
            f"outcome_unknown: sent before without an answer; up to ${row.at_risk_usd} may "
            "have been billed. Not re-sent (resend_unknown=False)"
        ),
        from_cache=True,
        reason="outcome_unknown",
    )
