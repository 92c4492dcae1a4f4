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
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from apidistill.costs.budget import Budget
from apidistill.costs.prices import ModelPrice
from apidistill.errors import BudgetExceeded, ConfigError
from apidistill.harvest.engine import HarvestEngine, StopSignal
from apidistill.harvest.limits import RateLimiter
from apidistill.harvest.progress_view import HarvestProgress
from apidistill.harvest.results import HarvestInterrupted, HarvestResult, HarvestSummary
from apidistill.harvest.retry import RetryPolicy
from apidistill.harvest.retry_failed import RetryFailed
from apidistill.harvest.writer import AsyncJournal
from apidistill.records import TeacherRequest

if TYPE_CHECKING:  # the teacher SDKs load only when a teacher is built
    from apidistill.teachers.base import Teacher
    from apidistill.teachers.batch import BatchClient

__all__ = ["HarvestStream", "harvest", "harvest_sync"]

_END = object()


class HarvestStream:
    """One harvest run: async-iterate it for results, ``await`` it for the summary.

    ``async for`` raises :class:`BudgetExceeded` after the last result when the budget
    stopped the run (``await`` and :func:`harvest_sync` return the summary with
    ``stopped_by="budget"`` instead); Ctrl-C raises :class:`HarvestInterrupted` (a
    ``KeyboardInterrupt``) after the drain.
    ``summary`` is set once the run is over, however it ended.
    """

    def __init__(self, requests: Any, options: dict[str, Any]) -> None:
        self._requests = requests
        self._opt = options
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

    def _engine(self, journal: AsyncJournal, stop: StopSignal) -> Any:
        opt = self._opt
        if opt["batch_client"] is not None:
            from apidistill.harvest.batch_run import BatchEngine

            return BatchEngine(
                teacher=opt["teacher"],
                batch_client=opt["batch_client"],
                journal=journal,
                stop=stop,
                budget=opt["budget"],
                price=opt["price"],
                max_requests=opt["max_requests"],
                count_input_tokens=opt["count_input_tokens"],
                poll_interval_s=opt["poll_interval_s"],
                max_rounds=min(opt["policy"].max_retries + 1, 5),
                retry_failed=opt["retry_failed"],
            )
        return HarvestEngine(
            teacher=opt["teacher"],
            journal=journal,
            limiter=RateLimiter(opt["rpm"], opt["tpm"], window_s=opt["rate_window_s"]),
            policy=opt["policy"],
            stop=stop,
            budget=opt["budget"],
            price=opt["price"],
            concurrency=opt["concurrency"],
            max_requests=opt["max_requests"],
            count_input_tokens=opt["count_input_tokens"],
            resend_unknown=opt["resend_unknown"],
            retry_failed=opt["retry_failed"],
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
        opt = self._opt
        loop = asyncio.get_running_loop()
        stop = self.stop_signal
        stop.bind(loop)
        journal = AsyncJournal(opt["journal"], durable=opt["durable"])
        await journal.open()
        out: asyncio.Queue[Any] = asyncio.Queue(maxsize=max(64, opt["concurrency"] * 2))
        view = HarvestProgress(
            total=len(self._requests) if isinstance(self._requests, Sized) else None,
            budget=opt["budget"],
            enabled=opt["progress"],
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
    teacher: Teacher,
    journal: str | Path,
    budget: Budget | None = None,
    price: ModelPrice | None = None,
    batch: bool = False,
    concurrency: int = 16,
    rpm: int | None = None,
    tpm: int | None = None,
    max_retries: int = 6,
    timeout_s: float = 120,
    max_requests: int | None = None,
    count_input_tokens: Callable[[TeacherRequest], int] | None = None,
    progress: bool = True,
    rate_window_s: float = 60.0,
    resend_unknown: bool = True,
    durable: bool = True,
    retry_policy: RetryPolicy | None = None,
    batch_client: BatchClient | None = None,
    poll_interval_s: float = 30.0,
    retry_failed: RetryFailed | str | Iterable[str] | None = None,
) -> HarvestStream:
    """Harvest teacher completions for ``requests``, journaled in ``journal`` (SQLite).

    Re-running with the same journal sends only what has no answer yet. ``budget`` is a hard
    cap for the whole journal (earlier runs count); ``price`` prices usage (``None``: costs
    stay unknown). ``rpm``/``tpm`` hold in every ``rate_window_s`` window. Requests whose
    earlier send may have been billed without an answer (a crash) are re-sent once unless
    ``resend_unknown=False``. ``durable=False`` skips fsync (safe against crashes, not
    against power loss). ``batch=True`` sends everything through ``batch_client`` (a
    provider Batch API at its discount; ``concurrency``/``rpm``/``tpm`` do not apply),
    polling every ``poll_interval_s``. ``retry_failed`` sends again the requests an earlier
    run gave up on for the named reasons (``"rejected"``, ``["rejected", "out_of_credit"]``,
    ``"all"``; add ``"at_risk"`` for those that may already have been billed), see
    :mod:`apidistill.harvest.retry_failed`; answered requests are never sent again.
    """
    _check_positive("concurrency", concurrency)
    for name, value in (("rpm", rpm), ("tpm", tpm)):
        if value is not None:
            _check_positive(name, value)
    if max_requests is not None:  # 0 is a limit too: answer from the journal, send nothing
        _check_positive("max_requests", max_requests, least=0)
    if timeout_s <= 0:
        raise ConfigError(f"must be > 0, got {timeout_s!r}", key="harvest.timeout_s")
    if max_retries < 0:
        raise ConfigError(f"must be >= 0, got {max_retries!r}", key="harvest.max_retries")
    if rate_window_s <= 0:
        raise ConfigError(f"must be > 0, got {rate_window_s!r}", key="rate_window_s")
    if batch and batch_client is None:
        raise ConfigError(
            "batch=True needs a batch_client",
            key="harvest.use_batch_api",
            hint="pass batch_client=apidistill.teachers.batch.make_batch_client(provider, model, "
            "api_key=...)",
        )
    if batch_client is not None and not batch:
        raise ConfigError("a batch_client was given but batch=False", key="harvest.use_batch_api")
    if not isinstance(retry_failed, RetryFailed):
        retry_failed = RetryFailed.parse(retry_failed, key="retry_failed")
    policy = retry_policy or RetryPolicy(max_retries=max_retries, timeout_s=timeout_s)
    return HarvestStream(
        requests,
        {
            "teacher": teacher,
            "journal": journal,
            "budget": budget,
            "price": price,
            "concurrency": concurrency,
            "rpm": rpm,
            "tpm": tpm,
            "max_requests": max_requests,
            "count_input_tokens": count_input_tokens,
            "progress": progress,
            "rate_window_s": rate_window_s,
            "resend_unknown": resend_unknown,
            "durable": durable,
            "policy": policy,
            "batch_client": batch_client,
            "poll_interval_s": poll_interval_s,
            "retry_failed": retry_failed,
        },
    )


def _check_positive(name: str, value: int, *, least: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ConfigError(
            f"must be a whole number >= {least}, got {value!r}", key=f"harvest.{name}"
        )


def harvest_sync(
    requests: Iterable[TeacherRequest], *, close_teacher: bool = True, **kwargs: Any
) -> HarvestSummary:
    """Run :func:`harvest` to completion from synchronous code; return its summary.

    The teacher's connections belong to the run's private loop, so the teacher is closed at
    the end (``close_teacher=False`` leaves that to you). Ctrl-C or SIGTERM: graceful stop,
    then :class:`HarvestInterrupted` (a ``KeyboardInterrupt`` carrying the summary); a
    second Ctrl-C abandons what is in flight (those requests
    are reported as outcome-unknown by the next run).
    """
    if isinstance(requests, AsyncIterable):
        raise ConfigError(
            "harvest_sync takes a plain iterable of requests",
            hint="use `await harvest(...)` for an async iterable",
        )
    stream = harvest(requests, **kwargs)
    teacher = kwargs["teacher"]
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
                await teacher.aclose()

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
