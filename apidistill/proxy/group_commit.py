"""Group commit of the proxy's journal rows: one SQLite transaction for every row queued in
one turn of the event loop, instead of one commit per row.

Each handler queues its row (:meth:`GroupCommit.submit`) and awaits the returned future
before it does what the row must precede (sending the request upstream, letting the answer's
final bytes go to the client), so the guarantees of :mod:`apidistill.proxy.capture_store` hold
unchanged: a row a client's answer depends on is committed before that answer ends. Under
load many requests finish in the same loop turn, and they share one commit (the per-commit
cost, WAL frame writes and locking, was the largest single cost of capturing:
benchmarks/proxy_overhead.py, docs/proxy.md). The flush runs on the loop thread: the rows are
small, and a writer thread would only add hand-offs on a two-core machine.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from apidistill.proxy.capture_store import CaptureStore, CaptureStoreError

__all__ = ["GroupCommit"]

log = logging.getLogger("apidistill.proxy")


class GroupCommit:
    """Batches rows for one :class:`CaptureStore`; lives in the server's event loop."""

    def __init__(self, store: CaptureStore) -> None:
        self.store = store
        self._rows: list[tuple[str, tuple[Any, ...]]] = []
        self._futures: list[asyncio.Future[None]] = []
        self._scheduled = False
        self.batches = 0  # commits made (rows / batches = the grouping achieved)
        self.rows = 0

    def submit(self, row: tuple[str, tuple[Any, ...]]) -> asyncio.Future[None]:
        """Queue ``row``; the future is done once it is committed (or holds the
        :class:`CaptureStoreError` that kept it out)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._rows.append(row)
        self._futures.append(fut)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self.flush)
        return fut

    def flush(self) -> None:
        """Commit everything queued (the loop calls it once per turn that queued rows)."""
        rows, futures = self._rows, self._futures
        self._rows, self._futures, self._scheduled = [], [], False
        if not rows:
            return
        results = self.store.write_batch(rows)
        self.batches += 1
        self.rows += len(rows)
        for fut, err in zip(futures, results, strict=True):
            if fut.done():  # its request was cancelled (client gone): nothing waits
                continue
            if err is None:
                fut.set_result(None)
            else:
                fut.set_exception(err)


def forget(fut: asyncio.Future[None], on_error: Any) -> None:
    """Let ``fut`` commit with nobody awaiting it (an exchange the client left); a write
    error still reaches ``on_error`` instead of being dropped unseen."""

    def done(f: asyncio.Future[None]) -> None:
        if f.cancelled():
            return
        exc = f.exception()
        if isinstance(exc, CaptureStoreError):
            on_error(exc)

    fut.add_done_callback(done)
