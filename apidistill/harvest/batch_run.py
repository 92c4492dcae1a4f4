"""Harvest through a provider Batch API (half price), resumable without paying twice.

For each chunk of requests the journal records, in order: the items as ``reserved`` with
the chunk key (budget reserved at the batch price) *before* the upload; the batch id right
after ``submit`` and *before* any poll. A resumed run therefore finds every chunk it may have
paid for: by its journaled id, or — if the process died between the upload and journaling
the id — with ``find_existing(chunk_key)`` (OpenAI metadata / Anthropic custom ids). It
polls those batches instead of submitting again: 0 re-sent.

Expired and cancelled batches still return the work they finished (billed); the items they
did not run come back as retryable failures and are resubmitted in a new chunk, up to
``max_rounds`` times. A budget stop submits nothing more but still collects what was
submitted (it is paid for); Ctrl-C also stops polling: the batches keep running at the
provider and the next run collects them.

Results of batches submitted by an earlier run are returned too (they are paid for), with
the request as it was journaled.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from decimal import Decimal
from typing import Any

from apidistill.costs.budget import Budget
from apidistill.costs.prices import ModelPrice, worst_case_cost
from apidistill.costs.usage_check import USAGE_STOP_HINT, judge_usage, usage_flag_message
from apidistill.errors import BudgetExceeded, TeacherError, redact
from apidistill.harvest.engine import StopSignal, _check_item, _meta_str, upper_bound_input_tokens
from apidistill.harvest.results import HarvestResult, HarvestSummary
from apidistill.harvest.retry import classify
from apidistill.harvest.retry_failed import RetryFailed
from apidistill.harvest.writer import AsyncJournal
from apidistill.records import Completion, TeacherRequest
from apidistill.storage.journal import JournalStore
from apidistill.teachers.base import Teacher
from apidistill.teachers.batch import BatchClient, chunk_key_for

__all__ = ["BatchEngine"]


# --------------------------------------------------------------- journal ops (one txn each)


def _plan_chunk(store: JournalStore, chunk_key: str, items: list[dict[str, Any]]) -> None:
    for item in items:
        store.claim(state="reserved", batch=True, **item)
    store.set_batch_chunk(chunk_key, batch_id=None, state="planned", keys=[i["key"] for i in items])


def _submitted(store: JournalStore, chunk_key: str, batch_id: str) -> None:
    store.set_batch_chunk(chunk_key, batch_id=batch_id, state="submitted")
    store.mark_batch_sent(chunk_key)


def _open_chunks(store: JournalStore) -> list[tuple[str, str | None, list[tuple[str, str, str]]]]:
    """Chunks planned or submitted but not collected: (key, batch id, [(key, request, usd)])."""
    out = []
    for chunk_key, batch_id in list(
        store.conn.execute(
            "SELECT chunk_key, batch_id FROM batches WHERE state IN ('planned', 'submitted')"
        )
    ):
        items = list(
            store.conn.execute(
                "SELECT key, request_json, COALESCE(reserved_usd, '0') FROM requests "
                "WHERE chunk_key=? AND state IN ('reserved', 'sent')",
                (chunk_key,),
            )
        )
        out.append((chunk_key, batch_id, items))
    return out


def _requests_of(store: JournalStore, keys: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for i in range(0, len(keys), 500):
        part = keys[i : i + 500]
        marks = ",".join("?" * len(part))
        out.update(
            store.conn.execute(
                f"SELECT key, request_json FROM requests WHERE key IN ({marks})", part
            ).fetchall()
        )
    return out


def _chunk_keys(store: JournalStore, chunk_key: str) -> list[str]:
    return [k for (k,) in store.conn.execute(
        "SELECT key FROM requests WHERE chunk_key=? AND state IN ('reserved', 'sent')", (chunk_key,)
    )]  # fmt: skip


class BatchEngine:
    """One Batch-API harvest over an open journal (same surface as :class:`HarvestEngine`)."""

    def __init__(
        self,
        *,
        teacher: Teacher,
        batch_client: BatchClient,
        journal: AsyncJournal,
        stop: StopSignal,
        budget: Budget | None = None,
        price: ModelPrice | None = None,
        max_requests: int | None = None,
        count_input_tokens: Callable[[TeacherRequest], int] | None = None,
        poll_interval_s: float = 30.0,
        max_rounds: int = 3,
        retry_failed: RetryFailed | None = None,
    ) -> None:
        self.teacher = teacher
        self.client = batch_client
        self.journal = journal
        self.stop = stop
        self.budget = budget
        self.price = price
        self.max_requests = max_requests
        self.count_input_tokens = count_input_tokens or upper_bound_input_tokens
        self.poll_interval_s = poll_interval_s
        self.max_rounds = max_rounds
        self.retry_failed = retry_failed or RetryFailed()
        self.summary = HarvestSummary()
        self._tid, self._model = teacher.teacher_id, batch_client.model
        self._polls: dict[str, str] = {}  # chunk key -> batch id
        self._retry: list[str] = []  # keys to resubmit
        self._started = 0
        self._emit: Callable[[HarvestResult], Awaitable[None]] | None = None

    async def run(
        self,
        requests: Iterable[TeacherRequest] | AsyncIterable[TeacherRequest],
        emit: Callable[[HarvestResult], Awaitable[None]],
    ) -> HarvestSummary:
        self._emit = emit
        await self._restore()
        await self._resume_open_chunks()
        await self._submit_input(requests)
        for round_no in range(1, self.max_rounds + 1):
            await self._collect_all()
            if not self._retry or self.stop.is_set() or round_no == self.max_rounds:
                break
            keys, self._retry = self._retry, []
            texts = await self.journal.call(_requests_of, keys)
            pending = [(k, TeacherRequest.model_validate_json(texts[k])) for k in keys]
            await self._submit_pending(pending, salt=f"round-{round_no + 1}")
        self.summary.unpriced = self.price is None
        totals = await self.journal.call(JournalStore.totals, None)
        self.summary.total_spent_usd = totals.spent_usd
        self.summary.total_at_risk_usd = totals.at_risk_usd
        if self.stop.reason is not None and self.summary.stopped_by is None:
            self.summary.stopped_by, self.summary.stop_message = self.stop.reason, self.stop.message
        await self.journal.call(JournalStore.note, "run_end", self.summary.as_dict())
        return self.summary

    # ---------------------------------------------------------------- setup

    async def _restore(self) -> None:
        rec = self.journal.recovery
        if rec is not None:
            self.summary.count_recovery(rec)
        if self.budget is not None:
            totals = await self.journal.call(JournalStore.totals, None)
            self.budget.restore(spent=totals.spent_usd, at_risk=totals.at_risk_usd)

    async def _resume_open_chunks(self) -> None:
        """Chunks an earlier run planned or submitted: find their batch, never resubmit it."""
        for chunk_key, batch_id, items in await self.journal.call(_open_chunks):
            if self.budget is not None:
                for key, _, usd in items:
                    self.budget.adopt(key, Decimal(usd) if self.price is not None else None)
            found = batch_id or await self.client.find_existing(chunk_key)
            if found is None:  # planned, never uploaded: upload it now, same chunk key
                reqs = [(k, TeacherRequest.model_validate_json(rj)) for k, rj, _ in items]
                found = await self._upload(chunk_key, reqs)
                if found is None:
                    continue
            else:
                await self.journal.call(_submitted, chunk_key, found)
            self._polls[chunk_key] = found

    # ---------------------------------------------------------------- submitting

    async def _submit_input(self, requests: Any) -> None:
        window: list[TeacherRequest] = []
        size = max(1, self.client.limits.max_requests)
        async for i, req in _enumerate(requests):
            if self.stop.is_set():
                return
            window.append(_check_item(req, i))
            if len(window) >= size:
                if not await self._submit_window(window):
                    return
                window = []
        if window and not self.stop.is_set():
            await self._submit_window(window)

    async def _submit_window(self, window: list[TeacherRequest]) -> bool:
        """Answer cache hits, submit the rest; False once ``max_requests`` is reached."""
        keys = [r.cache_key(self._tid, self._model) for r in window]
        rows = await self.journal.call(JournalStore.lookup, list(set(keys)))
        pending: dict[str, TeacherRequest] = {}
        for req, key in zip(window, keys, strict=True):
            row = rows.get(key)
            if row is not None and self.retry_failed.reuses(row):
                await self._out(_from_row(req, key, row.completion_json, row.reason, row.error))
            elif (row is not None and row.batch and row.state in ("reserved", "sent")) or (
                key in pending
            ):
                continue  # in an open chunk: its results come from that batch
            else:
                if self.max_requests is not None and self._started >= self.max_requests:
                    self.summary.stopped_by = "max_requests"
                    break
                self._started += 1
                if row is not None and self.retry_failed.resends(row):
                    self.summary.retried_failed += 1
                pending[key] = req
        await self._submit_pending(list(pending.items()), salt="")
        return self.summary.stopped_by != "max_requests"

    async def _submit_pending(self, pending: list[tuple[str, TeacherRequest]], salt: str) -> None:
        for chunk in self.client.plan_chunks(pending):
            if self.stop.is_set():
                return
            fitted = self._reserve(chunk)
            if fitted:
                # A fresh nonce per planned chunk: the key is journaled before the upload, so
                # it need not be reproducible, and find_existing can never mistake an older
                # batch of the same items (an expired one) for this one.
                ids = [k for k, _ in fitted] + [salt, secrets.token_hex(8)]
                chunk_key = chunk_key_for(self._tid, self._model, ids)
                await self.journal.call(
                    _plan_chunk, chunk_key, [self._claim_args(k, r) for k, r in fitted]
                )
                batch_id = await self._upload(chunk_key, fitted)
                if batch_id is not None:
                    self._polls[chunk_key] = batch_id
            if len(fitted) < len(chunk):
                return

    def _worst(self, req: TeacherRequest) -> Decimal | None:
        if self.price is None:
            return None
        return worst_case_cost(
            self.price, self.count_input_tokens(req), req.params.max_tokens, batch=True
        )

    def _reserve(self, chunk: list[tuple[str, TeacherRequest]]) -> list[tuple[str, TeacherRequest]]:
        if self.budget is None:
            return chunk
        fitted = []
        for key, req in chunk:
            try:
                self.budget.reserve(key, self._worst(req))
            except BudgetExceeded as exc:
                self.stop.request("budget", exc.message, exc.hint)
                break
            fitted.append((key, req))
        return fitted

    def _claim_args(self, key: str, req: TeacherRequest) -> dict[str, Any]:
        return {
            "key": key, "teacher_id": self._tid, "model": self._model,
            "request_json": req.model_dump_json(), "prompt_id": req.prompt_id,
            "label": _meta_str(req, "label"), "split": _meta_str(req, "split"),
            "reserved_usd": self._worst(req),
        }  # fmt: skip

    async def _upload(self, chunk_key: str, items: list[tuple[str, TeacherRequest]]) -> str | None:
        try:
            batch_id = await self.client.submit(items, chunk_key)
        except TeacherError as exc:  # nothing was created: the items fail, nothing is billed
            info = classify(exc)
            for key, req in items:
                await self.journal.call(JournalStore.attempt_failed, key, reason=info.reason,
                                        error=redact(str(exc))[:2000], maybe_billed=False,
                                        final=True)  # fmt: skip
                self._release(key)
                await self._out(HarvestResult(key, req, None, error=f"{info.reason}: {exc.message}",
                                              reason=info.reason))  # fmt: skip
            await self.journal.call(JournalStore.set_batch_chunk, chunk_key, batch_id=None,
                                    state="failed")  # fmt: skip
            return None
        await self.journal.call(_submitted, chunk_key, batch_id)  # before any poll
        self.summary.sends += len(items)
        return batch_id

    # ---------------------------------------------------------------- collecting

    def _abandoned(self) -> bool:
        """Ctrl-C / closing stop the polling too; a budget stop only stops submitting
        (what was submitted is paid for and is collected)."""
        return self.stop.reason in ("interrupt", "closed")

    async def _collect_all(self) -> None:
        while self._polls and not self._abandoned():
            for chunk_key, batch_id in list(self._polls.items()):
                try:
                    status = await self.client.poll(batch_id)
                    if status.state == "in_progress":
                        continue
                    await self._collect(chunk_key, batch_id)
                except TeacherError as exc:
                    if not classify(exc).retryable:
                        raise
                    continue  # a passing provider failure: try this batch next sweep
                del self._polls[chunk_key]
            if self._polls:
                if self.stop.is_set():
                    await asyncio.sleep(self.poll_interval_s)  # stopping only for budget
                else:
                    await self.stop.sleep(self.poll_interval_s)

    async def _collect(self, chunk_key: str, batch_id: str) -> None:
        expected = set(await self.journal.call(_chunk_keys, chunk_key))
        texts = await self.journal.call(_requests_of, sorted(expected))
        async for key, result in self.client.results(batch_id):
            if key not in expected:
                continue  # not ours, or already collected
            expected.discard(key)
            req = TeacherRequest.model_validate_json(texts[key])
            await self._record(key, req, result)
        for key in sorted(expected):  # the batch ended without a line for these
            missing = TeacherError(f"batch {batch_id} ended without a result for this request")
            missing.maybe_billed = True
            await self._record(key, TeacherRequest.model_validate_json(texts[key]), missing)
        await self.journal.call(JournalStore.set_batch_chunk, chunk_key, batch_id=batch_id,
                                state="collected")  # fmt: skip

    async def _record(
        self, key: str, req: TeacherRequest, result: Completion | TeacherError
    ) -> None:
        if isinstance(result, Completion):
            verdict = judge_usage(
                result.usage, price=self.price, input_bound=self.count_input_tokens(req),
                max_tokens=req.params.max_tokens, reserved=self._worst(req), batch=True,
                reported_cost=result.cost_usd,
            )  # fmt: skip
            cost = verdict.cost
            completion = result.model_copy(update={"cost_usd": cost, "request_hash": key})
            u = completion.usage
            await self.journal.call(JournalStore.done, key, completion_json=completion.model_dump_json(),
                                    cost_usd=cost, input_tokens=u.input_tokens,
                                    output_tokens=u.output_tokens,
                                    cached_input_tokens=u.cached_input_tokens,
                                    usage_flag=verdict.flag, usage_detail=verdict.detail)  # fmt: skip
            if verdict.flag is not None:
                self.summary.usage_flags[verdict.flag] += 1
            if verdict.stop:  # submit nothing more; what is submitted is collected
                self.stop.request("budget", usage_flag_message(verdict), USAGE_STOP_HINT)
            if self.budget is not None and self.budget.holds(key):
                self.budget.settle(key, cost)
            self.summary.done += 1
            if cost is not None:
                self.summary.spent_usd += cost
            await self._out(HarvestResult(key, req, completion, attempts=1))
            return
        info = classify(result)
        retry = info.retryable and not info.maybe_billed
        # Final either way: a retry is a new claim in a new chunk, and a failed row with a
        # retryable reason is picked up by the next run if this one stops first.
        await self.journal.call(JournalStore.attempt_failed, key, reason=info.reason,
                                error=redact(str(result))[:2000], maybe_billed=info.maybe_billed,
                                final=True)  # fmt: skip
        if info.maybe_billed:
            self.summary.unknown_this_run += 1
            if self.budget is not None and self.budget.holds(key):
                self.summary.at_risk_usd += self.budget.mark_at_risk(key) or Decimal(0)
        else:
            self._release(key)
        if retry:
            self._retry.append(key)
            return
        await self._out(HarvestResult(key, req, None, error=f"{info.reason}: {result.message}",
                                      reason=info.reason, attempts=1))  # fmt: skip

    def _release(self, key: str) -> None:
        if self.budget is not None and self.budget.holds(key):
            self.budget.release(key)

    async def _out(self, result: HarvestResult) -> None:
        self.summary.count_answer(result)
        if not result.ok:
            self.summary.note_failure(result.reason or "error", result.error)
        elif result.from_cache:
            self.summary.cached += 1
        assert self._emit is not None
        await self._emit(result)


def _from_row(
    req: TeacherRequest,
    key: str,
    completion_json: str | None,
    reason: str | None,
    error: str | None,
) -> HarvestResult:
    if completion_json is not None:
        return HarvestResult(
            key, req, Completion.model_validate_json(completion_json), from_cache=True
        )
    return HarvestResult(key, req, None, error=f"{reason}: {error or ''}", from_cache=True,
                         reason=reason)  # fmt: skip


async def _enumerate(requests: Any) -> Any:
    i = 0
    if isinstance(requests, AsyncIterable):
        async for r in requests:
            yield i, r
            i += 1
    else:
        for r in requests:
            yield i, r
            i += 1
            if i % 1024 == 0:
                await asyncio.sleep(0)
