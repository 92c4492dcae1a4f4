"""Gather requests that arrive together into batches and hand each batch to the model thread.

Concurrent clients (a harvest run with concurrency 16) send their requests within a few
milliseconds of each other; waiting until arrivals pause for ``gather_window_s`` lets them
share one batch and one prefix pass. While a batch runs, new requests queue and form the next batch,
so under load batches fill up without any waiting at all.

The scheduler is an asyncio task on one event loop; model work runs on the engine's single
worker thread so the loop keeps serving HTTP (health checks, streaming, 429s) meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor

from apidistill.serve.decoding import SeqRequest
from apidistill.serve.prefix_cache import common_prefix_len

__all__ = ["Scheduler"]


class Scheduler:
    """FIFO of request groups (the n samples of one request travel together)."""

    def __init__(
        self,
        run_batch: Callable[[list[SeqRequest]], None],
        executor: Executor,
        *,
        max_batch_size: int,
        max_batch_tokens: int,
        gather_window_s: float,
    ) -> None:
        self._run_batch = run_batch
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.gather_window_s = gather_window_s
        self._queue: deque[list[SeqRequest]] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.running: list[SeqRequest] = []
        self.last_batch_s = 0.0  # duration of the last batch, for Retry-After estimates

    @property
    def queued(self) -> int:
        """Sequences waiting for a batch."""
        return sum(len(g) for g in self._queue)

    def submit(self, group: list[SeqRequest]) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name="apidistill-scheduler"
            )
        self._queue.append(group)
        self._wakeup.set()

    async def aclose(self) -> None:
        """Stop taking batches; the running batch is told to stop at its next step."""
        for group in self._queue:
            for r in group:
                r.cancelled = True
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                await self._gather()
                batch = self._take()
                if not batch:
                    continue
                self.running = batch
                started = time.perf_counter()
                try:
                    await loop.run_in_executor(self._executor, self._run_batch, batch)
                except asyncio.CancelledError:
                    for r in batch:
                        r.cancelled = True
                    raise
                finally:
                    self.running = []
                    self.last_batch_s = time.perf_counter() - started

    async def _gather(self) -> None:
        """Wait while requests keep arriving: until ``gather_window_s`` passes with no new
        arrival, the batch is full, or ``8 * gather_window_s`` has passed in all.

        Clients that start together do not arrive together: each request is parsed and its
        chat template rendered (a few ms for a 1,500-token prompt) before it is queued, so a
        burst of 16 trickles in over tens of milliseconds. A fixed window would split it.
        """
        if self.gather_window_s <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 8 * self.gather_window_s
        while self.queued < self.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), min(self.gather_window_s, remaining))
            except TimeoutError:
                return  # a quiet gap: everyone who came together is here

    def _take(self) -> list[SeqRequest]:
        """The oldest live group plus as many following groups as fit.

        Echo (prompt-scoring) groups run alone: they need logits at every prompt position.
        The token budget counts what the batch's per-row caches will hold: each row's
        prompt beyond the common prefix plus its max_tokens, padded to the longest row.
        """
        batch: list[SeqRequest] = []
        common: list[int] | None = None
        longest_new = 0
        while self._queue:
            group = [r for r in self._queue[0] if not r.cancelled]
            if not group:
                self._queue.popleft()
                continue
            echo = any(r.prompt_logprobs for r in group)
            if batch and (echo or any(r.prompt_logprobs for r in batch)):
                break
            if batch and len(batch) + len(group) > self.max_batch_size:
                break
            ids = group[0].prompt_ids
            new_common = ids if common is None else ids[: common_prefix_len(common, ids)]
            rows = [*batch, *group]
            suffix = max(len(r.prompt_ids) - len(new_common) for r in rows)
            new = max(longest_new, *(r.params.max_tokens for r in group))
            if batch and len(rows) * (suffix + new) > self.max_batch_tokens:
                break
            self._queue.popleft()
            batch.extend(group)
            common, longest_new = new_common, new
        return batch
