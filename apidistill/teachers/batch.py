"""Provider Batch APIs: the contract the harvest engine drives, and chunk planning.

A large harvest goes to a provider's Batch API at half price. The engine splits the work into
chunks (:func:`plan_chunks`, within each provider's documented limits), gives each chunk a
stable key, and journals the batch id it gets back. Resuming never pays twice: before
submitting a chunk the engine asks :meth:`BatchClient.find_existing` for a batch that already
carries that key, and polls it instead.

Expired and cancelled batches still return, and bill, the work they finished, so
:meth:`BatchClient.results` is read for every batch that ended, whatever its state: finished
items come back as :class:`~apidistill.records.Completion`, the rest as the
:class:`~apidistill.errors.TeacherError` saying why (``TeacherTimeout`` for expired items,
``TeacherUnavailable`` for cancelled ones, the mapped HTTP error for per-line failures), so
the engine can resubmit exactly those.

Implementations: :class:`~apidistill.teachers.openai_batch.OpenAIBatch` and
:class:`~apidistill.teachers.anthropic_batch.AnthropicBatch`, built from a teacher config by
:func:`apidistill.teachers.make_batch_client` (the one provider registry,
:mod:`apidistill.teachers.registry`); this module imports neither.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar, runtime_checkable

from apidistill.errors import DataError, TeacherError, TeacherTimeout, TeacherUnavailable
from apidistill.records import Completion, TeacherRequest

__all__ = [
    "BatchClient",
    "BatchCounts",
    "BatchLimits",
    "BatchState",
    "BatchStatus",
    "canceled_item",
    "chunk_key_for",
    "expired_item",
    "plan_chunks",
]

BatchState = Literal["in_progress", "ended", "failed", "expired", "canceled"]
T = TypeVar("T")


@dataclass(frozen=True)
class BatchLimits:
    """What one batch may hold. ``max_requests`` is the chunk size actually used."""

    max_requests: int
    max_bytes: int


@dataclass(frozen=True)
class BatchCounts:
    total: int = 0
    succeeded: int = 0
    errored: int = 0
    expired: int = 0
    canceled: int = 0
    processing: int = 0


@dataclass(frozen=True)
class BatchStatus:
    """Where a batch stands. ``state`` other than ``in_progress`` is final; ``has_results``
    says whether :meth:`BatchClient.results` has anything to read (even when expired)."""

    batch_id: str
    state: BatchState
    counts: BatchCounts = field(default_factory=BatchCounts)
    provider_status: str = ""
    has_results: bool = False
    errors: tuple[str, ...] = ()


@runtime_checkable
class BatchClient(Protocol):
    """One provider's Batch API for one model."""

    provider: str
    model: str
    limits: BatchLimits

    async def submit(self, items: list[tuple[str, TeacherRequest]], chunk_key: str) -> str:
        """Create one batch of ``(custom id, request)`` items tagged with ``chunk_key``."""
        ...

    async def find_existing(self, chunk_key: str) -> str | None:
        """The id of a batch already submitted for ``chunk_key``, if the provider shows one."""
        ...

    async def poll(self, batch_id: str) -> BatchStatus: ...

    def results(self, batch_id: str) -> AsyncIterator[tuple[str, Completion | TeacherError]]:
        """Every item of an ended batch: its custom id and its answer or error."""
        ...

    async def cancel(self, batch_id: str) -> BatchStatus: ...

    def plan_chunks(self, items: Sequence[T]) -> list[list[T]]: ...

    async def aclose(self) -> None: ...


def plan_chunks(
    items: Sequence[T], limits: BatchLimits, size_of: Callable[[T], int]
) -> list[list[T]]:
    """Split ``items`` in order into chunks of at most ``limits.max_requests`` items and
    ``limits.max_bytes`` bytes (``size_of`` = the item's line in the upload, newline
    included). One item larger than a whole batch is a DataError, not a silent skip."""
    chunks: list[list[T]] = []
    current: list[T] = []
    current_bytes = 0
    for index, item in enumerate(items):
        size = size_of(item)
        if size > limits.max_bytes:
            raise DataError(
                f"request #{index} needs {size} bytes, more than a whole batch "
                f"({limits.max_bytes} bytes)",
                hint="shorten the prompt or send this request without the Batch API",
            )
        if current and (
            len(current) >= limits.max_requests or current_bytes + size > limits.max_bytes
        ):
            chunks.append(current)
            current, current_bytes = [], 0
        current.append(item)
        current_bytes += size
    if current:
        chunks.append(current)
    return chunks


def chunk_key_for(teacher_id: str, model: str, custom_ids: Sequence[str]) -> str:
    """A stable key for one chunk: same teacher, model and items → same key, so a resumed
    run finds the batch its crashed predecessor submitted."""
    blob = json.dumps([teacher_id, model, list(custom_ids)], separators=(",", ":"))
    return "chunk-" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def jsonl_size(line: dict[str, object]) -> int:
    return len(json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode("utf-8")) + 1


def expired_item(provider: str, custom_id: str) -> TeacherTimeout:
    return TeacherTimeout(
        f"{provider} batch item {custom_id!r} expired before it ran (not billed)",
        maybe_billed=False,
        hint="resubmit the expired items in a new batch or send them directly",
    )


def canceled_item(provider: str, custom_id: str) -> TeacherUnavailable:
    return TeacherUnavailable(
        f"{provider} batch item {custom_id!r} was cancelled before it ran (not billed)",
        maybe_billed=False,
        hint="resubmit the cancelled items if you still need them",
    )
