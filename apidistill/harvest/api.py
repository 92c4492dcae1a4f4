"""The public harvest API: ``harvest`` (async, streaming) and ``harvest_sync``.

Feels like the openai SDK for one call and scales to a million::

    async for r in harvest(requests, teacher=t, journal="runs/x/journal.sqlite"):
        ...                                   # results stream as they arrive
    summary = await harvest(requests, ...)    # or just run it and get the summary
    summary = harvest_sync(requests, ...)     # from plain Python

``harvest_sync`` runs the async core on its own thread and loop (never ``nest_asyncio``),
so it works inside notebooks and other event loops too. Ctrl-C / SIGTERM stop gracefully
(no new sends, in-flight answers journaled); a second Ctrl-C stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Generator, Iterable, Sized
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from apidistill.config import HarvestConfig, PolicyConfig, TeacherConfig
from apidistill.costs.budget import Budget
from apidistill.costs.prices import ModelPrice
from apidistill.errors import BudgetExceeded, ConfigError
from apidistill.harvest.engine import HarvestEngine, StopSignal
from apidistill.harvest.limits import RateLimiter
from apidistill.harvest.options import (
    HarvestOptions,
    as_budget,
    build_teacher,
    check_policy,
    check_removed_kwargs,
    teacher_config_of,
)
from apidistill.harvest.progress_view import HarvestProgress
from apidistill.harvest.results import HarvestInterrupted, HarvestResult, HarvestSummary
from apidistill.harvest.retry import RetryPolicy
from apidistill.harvest.retry_failed import RetryFailed
from apidistill.harvest.writer import AsyncJournal
from apidistill.records import TeacherRequest

if TYPE_CHECKING:  # the teacher SDKs load only when a teacher is built
    from apidistill.policy.schema import Decision
    from apidistill.teachers.base import Teacher
    from apidistill.teachers.batch import BatchClient

__all__ = ["HarvestOptions", "HarvestStream", "harvest", "harvest_sync"]

_END = object()


@dataclass(frozen=True)
class _Setup:
    """Everything one run needs, checked once by :func:`harvest`."""

    teacher: Teacher
    owns_teacher: bool  # built here from a config: closed here when the run ends
    journal: str | Path
    config: HarvestConfig
    options: HarvestOptions
    budget: Budget | None
    price: ModelPrice | None
    progress: bool
    policy: RetryPolicy
    batch_client: BatchClient | None
    retry_failed: RetryFailed


class HarvestStream:
    """One harvest run: async-iterate it for results, ``await`` it for the summary.

    ``async for`` raises :class:`BudgetExceeded` after the last result when the budget
    stopped the run (``await`` and :func:`harvest_sync` return the summary with
    ``stopped_by="budget"`` instead); Ctrl-C raises :class:`HarvestInterrupted` (a
    ``KeyboardInterrupt``) after the drain.
    ``summary`` is set once the run is over, however it ended; ``decision`` is the terms
    decision when ``policy=`` was given.
    """

    def __init__(self, requests: Any, setup: _Setup) -> None:
        self._requests = requests
        self._setup = setup
        self.decision: Decision | None = None
        self.stop_signal = StopSignal()
        self.summary: HarvestSummary | None = None
        self._gen: AsyncIterator[HarvestResult] | None = None
        self._task: asyncio.Task[Any] | None = None

    # ------------------------------------------------------------ protocols

    def __aiter__(self) -> AsyncIterator[HarvestResult]:
        if self._gen is None:
            self._gen = self._iterate(raise_on_budget=True)
        return self._gen

    async def __anext__(self) -> HarvestResult:
        return await self.__aiter__().__anext__()

    async def aclose(self) -> None:
        if self._gen is not None:
            await self._gen.aclose()  # type: ignore[attr-defined]

    async def __aenter__(self) -> HarvestStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __await__(self) -> Generator[Any, None, HarvestSummary]:
        return self._collect().__await__()

    def stop(self) -> None:
        """Ask for a graceful stop; safe from any thread or a signal handler."""
        self.stop_signal.request_threadsafe("interrupt", "stop requested")

    # ------------------------------------------------------------------ run

    @property
    def teacher(self) -> Teacher:
        """The client this run sends through."""
        return self._setup.teacher

    def _engine(self, journal: AsyncJournal, stop: StopSignal) -> Any:
        s, cfg, opt = self._setup, self._setup.config, self._setup.options
        if s.batch_client is not None:
            from apidistill.harvest.batch_run import BatchEngine

            return BatchEngine(
                teacher=s.teacher,
                batch_client=s.batch_client,
                journal=journal,
                stop=stop,
                budget=s.budget,
                price=s.price,
                max_requests=cfg.max_requests,
                count_input_tokens=opt.count_input_tokens,
                poll_interval_s=opt.poll_interval_s,
                max_rounds=min(s.policy.max_retries + 1, 5),
                retry_failed=s.retry_failed,
            )
        return HarvestEngine(
            teacher=s.teacher,
            journal=journal,
            limiter=RateLimiter(cfg.rpm, cfg.tpm, window_s=opt.rate_window_s),
            policy=s.policy,
            stop=stop,
            budget=s.budget,
            price=s.price,
            concurrency=cfg.concurrency,
            max_requests=cfg.max_requests,
            count_input_tokens=opt.count_input_tokens,
            resend_unknown=opt.resend_unknown,
            retry_failed=s.retry_failed,
        )

    async def _collect(self) -> HarvestSummary:
        if self._gen is not None:
            raise RuntimeError("this harvest is already being iterated")
        self._gen = self._iterate(raise_on_budget=False)
        async for _ in self._gen:
            pass
        assert self.summary is not None
        return self.summary

    async def _iterate(self, *, raise_on_budget: bool) -> AsyncIterator[HarvestResult]:
        s = self._setup
        loop = asyncio.get_running_loop()
        stop = self.stop_signal
        stop.bind(loop)
        journal = AsyncJournal(s.journal, durable=s.options.durable)
        try:
            await journal.open()
        except BaseException:
            await self._close_owned()
            raise
        out: asyncio.Queue[Any] = asyncio.Queue(maxsize=max(64, s.config.concurrency * 2))
        view = HarvestProgress(
            total=len(self._requests) if isinstance(self._requests, Sized) else None,
            budget=s.budget,
            enabled=s.progress,
        )
        engine = self._engine(journal, stop)
        discard = False

        async def emit(result: HarvestResult) -> None:
            view.advance(result, engine.summary)
            if not discard:
                await out.put(result)

        async def run() -> None:
            try:
                await engine.run(self._requests, emit)
            finally:
                if not discard:
                    await out.put(_END)

        restore_signals = _install_signal_handlers(stop)
        view.start(engine)
        self._task = task = asyncio.create_task(run())
        abandon = False
        try:
            while True:
                item = await out.get()
                if item is _END:
                    break
                yield item
            await task
        except asyncio.CancelledError:
            abandon = True  # cancelled (a second Ctrl-C): in-flight requests are abandoned
            raise
        finally:
            if not task.done():
                discard = True
                if abandon:  # their rows stay 'sent': the next run reports them as unknown
                    task.cancel()
                else:  # the consumer stopped reading: stop gracefully, drain, journal
                    stop.request("closed", "the caller stopped reading results")
                while not out.empty():
                    out.get_nowait()
                await asyncio.gather(task, return_exceptions=True)
            view.stop(engine.summary)
            restore_signals()
            await journal.close()
            await self._close_owned()
            engine.summary.elapsed_s = view.elapsed_s
            self.summary = engine.summary
        if engine.summary.stopped_by == "interrupt":
            raise HarvestInterrupted(engine.summary)
        if engine.summary.stopped_by == "budget" and raise_on_budget:
            raise BudgetExceeded(
                engine.summary.stop_message or "budget reached",
                hint=stop.hint
                or "raise the budget and run again with the same journal: answered "
                "requests are never sent again",
            )

    async def _close_owned(self) -> None:
        """Close the client this run built from a config (a passed-in one is its owner's)."""
        s = self._setup
        if s.owns_teacher:
            await s.teacher.aclose()
            if s.batch_client is not None and s.batch_client is not s.options.batch_client:
                await s.batch_client.aclose()


def _install_signal_handlers(stop: StopSignal) -> Callable[[], None]:
    """SIGINT/SIGTERM → graceful stop (main thread only); a second SIGINT stops at once."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        stop.request_threadsafe(
            "interrupt", f"{signal.Signals(signum).name} received: finishing requests in flight"
        )

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, OSError):  # not allowed (embedded interpreter)
            previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def harvest(
    requests: Iterable[TeacherRequest] | AsyncIterable[TeacherRequest],
    *,
    teacher: Teacher | TeacherConfig | str,
    journal: str | Path,
    config: HarvestConfig | None = None,
    budget: Budget | Decimal | float | str | None = None,
    policy: PolicyConfig | None = None,
    price: ModelPrice | None = None,
    progress: bool = True,
    options: HarvestOptions | None = None,
    **removed: Any,
) -> HarvestStream:
    """Harvest teacher completions for ``requests``, journaled in ``journal`` (SQLite).

    ``teacher``: a :class:`TeacherConfig`, ``"openai:<model>"`` / ``"anthropic:<model>"``
    (the client is built, priced and closed here), or a ready client (closed by its owner).
    ``config``: the run file's ``harvest`` section (concurrency, rpm/tpm, retries, timeout,
    ``use_batch_api``, ``max_requests``, ``retry_failed``); its generation fields belong to
    the requests, not to this call. ``budget``: a hard USD cap for the whole journal (earlier
    runs count), as a :class:`Budget` or an amount. ``policy``: the teacher's terms are
    checked against it before the first request (:class:`PolicyDenied` refuses; the
    decision is on ``stream.decision``). ``price`` prices usage; by default the teacher
    config's price (genai-prices or ``teacher.price``), and ``None`` for a ready client
    (costs stay unknown). ``options``: engine settings no run file carries.

    Re-running with the same journal sends only what has no answer yet; requests whose earlier
    send may have been billed without an answer (a crash) are re-sent once unless
    ``options.resend_unknown`` is False. ``retry_failed`` sends again what an earlier run gave
    up on for the named reasons (:mod:`apidistill.harvest.retry_failed`).
    """
    check_removed_kwargs(removed)
    config = config if config is not None else HarvestConfig()
    if not isinstance(config, HarvestConfig):
        raise ConfigError(
            f"config must be a HarvestConfig, got {type(config).__name__}",
            key="harvest",
            hint="pass config=apidistill.HarvestConfig(concurrency=..., ...)",
        )
    options = options or HarvestOptions()
    retry_failed = RetryFailed.parse(config.retry_failed, key="harvest.retry_failed")
    cap = as_budget(budget)
    tcfg = teacher_config_of(teacher) if isinstance(teacher, TeacherConfig | str) else None
    decision = check_policy(tcfg, policy)  # before any client, price or connection
    if price is None and tcfg is not None:
        from apidistill.costs.prices import price_for_teacher

        price = price_for_teacher(tcfg)
    batch_client = options.batch_client
    if config.use_batch_api and batch_client is None:
        if tcfg is None:
            raise ConfigError(
                "use_batch_api with a ready teacher client needs a batch client",
                key="harvest.use_batch_api",
                hint="pass teacher= as a TeacherConfig, or options=HarvestOptions("
                "batch_client=apidistill.teachers.make_batch_client(teacher_config))",
            )
        from apidistill.teachers import make_batch_client

        batch_client = make_batch_client(tcfg, timeout_s=config.timeout_s)
    if batch_client is not None and not config.use_batch_api:
        raise ConfigError(
            "a batch_client was given but use_batch_api is false", key="harvest.use_batch_api"
        )
    client, _ = build_teacher(tcfg or teacher, timeout_s=config.timeout_s)
    setup = _Setup(
        teacher=client,
        owns_teacher=tcfg is not None,
        journal=journal,
        config=config,
        options=options,
        budget=cap,
        price=price,
        progress=progress,
        policy=options.retry_policy_for(config),
        batch_client=batch_client,
        retry_failed=retry_failed,
    )
    stream = HarvestStream(requests, setup)
    stream.decision = decision
    return stream


def harvest_sync(
    requests: Iterable[TeacherRequest],
    *,
    teacher: Teacher | TeacherConfig | str,
    journal: str | Path,
    config: HarvestConfig | None = None,
    budget: Budget | Decimal | float | str | None = None,
    policy: PolicyConfig | None = None,
    price: ModelPrice | None = None,
    progress: bool = True,
    options: HarvestOptions | None = None,
    close_teacher: bool = True,
    **removed: Any,
) -> HarvestSummary:
    """Run :func:`harvest` (same arguments) to completion from synchronous code; return its
    summary.

    The teacher's connections belong to the run's private loop, so a ready client is closed
    at the end (``close_teacher=False`` leaves that to you; one built from a config is always
    closed by the run). Ctrl-C or SIGTERM: graceful stop,
    then :class:`HarvestInterrupted` (a ``KeyboardInterrupt`` carrying the summary); a
    second Ctrl-C abandons what is in flight (those requests
    are reported as outcome-unknown by the next run).
    """
    if isinstance(requests, AsyncIterable):
        raise ConfigError(
            "harvest_sync takes a plain iterable of requests",
            hint="use `await harvest(...)` for an async iterable",
        )
    stream = harvest(
        requests,
        teacher=teacher,
        journal=journal,
        config=config,
        budget=budget,
        policy=policy,
        price=price,
        progress=progress,
        options=options,
        **removed,
    )
    client = stream.teacher
    close_teacher = close_teacher and not stream._setup.owns_teacher  # else the run closes it
    box: dict[str, Any] = {}
    loop_ready = threading.Event()

    async def main() -> HarvestSummary:
        box["loop"] = asyncio.get_running_loop()
        box["task"] = asyncio.current_task()
        loop_ready.set()
        try:
            if isinstance(stream, HarvestStream):
                stream.stop_signal.bind(asyncio.get_running_loop())
            return await stream
        finally:
            if close_teacher:
                await client.aclose()

    finished = threading.Event()

    def runner() -> None:
        try:
            box["summary"] = asyncio.run(main())
        except BaseException as exc:
            box["error"] = exc
        finally:
            loop_ready.set()
            finished.set()

    # Wait on an Event, not Thread.join: a join interrupted by Ctrl-C can mark a live
    # thread as finished (CPython 3.11), and the run would be abandoned mid-drain.
    thread = threading.Thread(target=runner, name="apidistill-harvest", daemon=True)
    restore = _main_thread_sigterm(stream)
    thread.start()
    interrupted = False
    try:
        try:
            finished.wait()
        except KeyboardInterrupt:
            interrupted = True
            stream.stop()
            try:
                finished.wait()
            except KeyboardInterrupt:  # second Ctrl-C: abandon what is in flight
                loop_ready.wait()
                loop, task = box.get("loop"), box.get("task")
                if loop is not None and task is not None and not loop.is_closed():
                    loop.call_soon_threadsafe(task.cancel)
                finished.wait()
                raise
    finally:
        restore()
    error = box.get("error")
    if isinstance(error, HarvestInterrupted):
        raise HarvestInterrupted(error.summary) from None
    if error is not None:
        raise error
    summary: HarvestSummary = box["summary"]
    if interrupted:  # the run had finished anyway: still honour the user's Ctrl-C
        raise HarvestInterrupted(summary)
    return summary


def _main_thread_sigterm(stream: Any) -> Callable[[], None]:
    """In the main thread, SIGTERM asks the harvest thread for a graceful stop."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    try:
        old = signal.signal(signal.SIGTERM, lambda s, f: stream.stop())
    except (ValueError, OSError):
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, old)
