"""The async journal: one writer thread owns the SQLite connection; calls share commits.

Why a thread: a durable commit waits for fsync (milliseconds), which must not stall the
event loop; sqlite3 releases the GIL while it waits. Why group commit: at hundreds of
requests per second, every call queued while a commit is in flight joins the next one, so
the number of fsyncs stays bounded while each caller still gets "committed before I act".
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from apidistill.storage.journal import JournalStore, JournalWriteError, Recovery

__all__ = ["AsyncJournal"]

T = TypeVar("T")
_STOP = object()
_Op = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], "asyncio.Future[Any]"]


class AsyncJournal:
    """Async journal: every call runs in one writer thread; queued calls share a commit.

    A call returns only after its transaction is committed (``durable=True``: fsynced), so
    "journal, then act" holds for every caller. Use ``async with AsyncJournal(path) as j``.
    """

    def __init__(self, path: str | Path, *, durable: bool = True, max_group: int = 256) -> None:
        self.path = Path(path)
        self.durable = durable
        self.max_group = max_group
        self.recovery: Recovery | None = None
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._store: JournalStore | None = None
        self.commits = 0  # group commits made (for benchmarks)

    async def __aenter__(self) -> AsyncJournal:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> Recovery:
        self._loop = asyncio.get_running_loop()
        opened: asyncio.Future[JournalStore] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(opened,), name=f"journal:{self.path.name}", daemon=True
        )
        self._thread.start()
        self._store = await opened
        try:
            self.recovery = await self.call(JournalStore.recover)
        except BaseException:  # e.g. disk full: stop the thread, or its lock outlives us
            await self.close()
            raise
        return self.recovery

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(store, *args, **kwargs)`` in the writer thread; wait for its commit."""
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            raise RuntimeError(f"journal {self.path} is not open")
        fut: asyncio.Future[T] = self._loop.create_future()
        self._q.put((fn, args, kwargs, fut))
        return await fut

    async def close(self) -> None:
        if self._thread is None:
            return
        self._q.put(_STOP)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._thread = None

    # ---------------------------------------------------------------- thread

    def _run(self, opened: asyncio.Future[JournalStore]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            store = JournalStore(self.path, durable=self.durable)
        except BaseException as exc:
            loop.call_soon_threadsafe(_settle_one, opened, None, exc)
            return
        loop.call_soon_threadsafe(_settle_one, opened, store, None)
        try:
            while True:
                first = self._q.get()
                if first is _STOP:
                    break
                batch: list[_Op] = [first]
                stop = False
                while len(batch) < self.max_group:
                    try:
                        item = self._q.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                        break
                    batch.append(item)
                loop.call_soon_threadsafe(_deliver, self._apply(store, batch))
                if stop:
                    break
        finally:
            store.close()

    def _apply(self, store: JournalStore, batch: list[_Op]) -> list[tuple[Any, Any, Any]]:
        results: list[tuple[Any, Any, Any]] = []
        try:
            store.begin()
            for i, (fn, args, kwargs, fut) in enumerate(batch):
                store.conn.execute(f"SAVEPOINT op{i}")
                try:
                    value = fn(store, *args, **kwargs)
                except Exception as exc:  # one bad op must not sink the others
                    store.conn.execute(f"ROLLBACK TO op{i}")
                    results.append((fut, None, _as_journal_error(exc, self.path)))
                else:
                    results.append((fut, value, None))
                store.conn.execute(f"RELEASE op{i}")
            store.commit()
            self.commits += 1
        except sqlite3.Error as exc:
            store.rollback()
            err = _as_journal_error(exc, self.path)
            return [(fut, None, err) for *_, fut in batch]
        return results


def _as_journal_error(exc: Exception, path: Path) -> Exception:
    if isinstance(exc, sqlite3.Error):
        return JournalWriteError(
            f"cannot write the journal: {exc}",
            file=str(path),
            hint="check free disk space and permissions; everything committed so far is safe",
        )
    return exc


def _settle_one(fut: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)


def _deliver(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, value, exc in results:
        _settle_one(fut, value, exc)
