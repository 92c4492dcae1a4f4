"""Anthropic Message Batches: create, poll, cancel, list, and the JSONL results.

Anthropic batches carry no metadata, so the chunk key travels in the ``custom_id`` of every
request: ``<tag><sep><id>``, where ``tag`` is 10 hex characters of the chunk key's hash and
``id`` is the caller's id, verbatim (``-``) or, for a long hex id such as a SHA-256 cache
key, as unpadded base64url (``_``), to stay within the documented ``^[a-zA-Z0-9_-]{1,64}$``.

Limitation, stated plainly: the API shows request ids only in the results of an *ended*
batch, so :meth:`AnthropicBatch.find_existing` can recognize ended batches only. A batch
still in progress is found through the id the engine journaled right after ``submit``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

import anthropic
import httpx2

from apidistill.errors import DataError, TeacherError, register_secret
from apidistill.records import Completion, TeacherRequest
from apidistill.teachers.anthropic import (
    ANTHROPIC_BASE_URL,
    build_anthropic_body,
    check_anthropic_request,
    parse_anthropic_body,
)
from apidistill.teachers.batch import (
    BatchCounts,
    BatchLimits,
    BatchStatus,
    canceled_item,
    expired_item,
    jsonl_size,
    plan_chunks,
)
from apidistill.teachers.failures import malformed_body, map_failure, status_error

__all__ = ["AnthropicBatch", "decode_custom_id", "encode_custom_id"]

_SDK_FAILURES = (anthropic.AnthropicError, httpx2.HTTPError, OSError)
_ALLOWED = re.compile(r"[a-zA-Z0-9_-]+")
_HEX = re.compile(r"(?:[0-9a-f]{2})+")
_TAG_LEN = 10
_MAX_ID = 64
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}
T = TypeVar("T")


def chunk_tag(chunk_key: str) -> str:
    return hashlib.sha256(chunk_key.encode("utf-8")).hexdigest()[:_TAG_LEN]


def encode_custom_id(chunk_key: str, item_id: str) -> str:
    """``tag-id`` or ``tag_b64(hex id)``; a DataError when the id cannot fit 64 characters."""
    tag = chunk_tag(chunk_key)
    room = _MAX_ID - _TAG_LEN - 1
    if _ALLOWED.fullmatch(item_id) and len(item_id) <= room:
        return f"{tag}-{item_id}"
    if _HEX.fullmatch(item_id):
        packed = base64.urlsafe_b64encode(bytes.fromhex(item_id)).decode().rstrip("=")
        if len(packed) <= room:
            return f"{tag}_{packed}"
    raise DataError(
        f"item id {item_id[:80]!r} cannot be an Anthropic batch custom_id",
        hint=f"use ids of at most {room} characters from [a-zA-Z0-9_-], or lower-case hex",
    )


def decode_custom_id(custom_id: str) -> tuple[str, str] | None:
    """``(tag, item id)``, or None for a custom_id apidistill did not write."""
    if len(custom_id) <= _TAG_LEN + 1:
        return None
    tag, sep, rest = custom_id[:_TAG_LEN], custom_id[_TAG_LEN], custom_id[_TAG_LEN + 1 :]
    if sep == "-":
        return tag, rest
    if sep == "_":
        try:
            raw = base64.urlsafe_b64decode(rest + "=" * (-len(rest) % 4))
        except (binascii.Error, ValueError):
            return None
        return tag, raw.hex()
    return None


class AnthropicBatch:
    """Message Batches for one Claude model."""

    provider = "anthropic"
    # Documented 100,000 requests / 256 MB; an older reference says 10,000, so chunks
    # default to 10,000 requests.
    limits = BatchLimits(max_requests=10_000, max_bytes=256_000_000)

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None,
        base_url: str | None = None,
        timeout_s: float = 120.0,
        max_list_pages: int = 20,
        list_page_size: int = 100,
        prompt_cache: bool = True,
    ) -> None:
        self.model = model
        self.prompt_cache = prompt_cache
        self.base_url = (base_url or ANTHROPIC_BASE_URL).rstrip("/")
        self._max_list_pages = max_list_pages
        self._page_size = list_page_size
        self.unreadable_lines: dict[str, int] = {}
        register_secret(api_key)  # redacted by value in every message
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key or "EMPTY",
            base_url=self.base_url,
            max_retries=0,
            timeout=httpx2.Timeout(timeout_s, connect=min(10.0, timeout_s)),
        )

    def __repr__(self) -> str:
        return f"AnthropicBatch(model={self.model!r}, base_url={self.base_url!r})"

    def entry(self, chunk_key: str, item_id: str, request: TeacherRequest) -> dict[str, Any]:
        check_anthropic_request(request, model=self.model)
        return {
            "custom_id": encode_custom_id(chunk_key, item_id),
            "params": build_anthropic_body(
                request, model=self.model, prompt_cache=self.prompt_cache
            ),
        }

    def plan_chunks(self, items: Sequence[T]) -> list[list[T]]:
        return plan_chunks(
            items,
            self.limits,
            lambda item: jsonl_size(self.entry("k", *item)),  # type: ignore[misc]
        )

    async def submit(self, items: list[tuple[str, TeacherRequest]], chunk_key: str) -> str:
        if not items:
            raise DataError("a batch needs at least one request")
        if len(items) > self.limits.max_requests:
            raise DataError(
                f"{len(items)} requests exceed the chunk size {self.limits.max_requests}",
                hint="split with plan_chunks() first",
            )
        entries = [self.entry(chunk_key, cid, req) for cid, req in items]
        if len({e["custom_id"] for e in entries}) != len(entries):
            raise DataError("custom ids must be unique within a batch")
        size = sum(jsonl_size(e) for e in entries)
        if size > self.limits.max_bytes:
            raise DataError(f"the batch would be {size} bytes, over {self.limits.max_bytes}")
        try:
            batch = await self._client.messages.batches.create(requests=entries)  # type: ignore[arg-type]
        except _SDK_FAILURES as exc:
            raise map_failure(self.provider, exc) from exc
        return batch.id

    async def find_existing(self, chunk_key: str) -> str | None:
        """The newest *ended* batch whose requests carry ``chunk_key``'s tag."""
        tag = chunk_tag(chunk_key)
        try:
            page = await self._client.messages.batches.list(limit=self._page_size)
            for _ in range(self._max_list_pages):
                for b in page.data:
                    if b.processing_status == "ended" and b.results_url:
                        first = await self._first_custom_id(b.id)
                        decoded = decode_custom_id(first) if first else None
                        if decoded and decoded[0] == tag:
                            return b.id
                if not page.has_next_page():
                    return None
                page = await page.get_next_page()
        except _SDK_FAILURES as exc:
            raise map_failure(self.provider, exc) from exc
        return None

    async def _first_custom_id(self, batch_id: str) -> str | None:
        async for line in self._lines(batch_id):
            try:
                obj = json.loads(line)
            except ValueError:
                return None
            cid = obj.get("custom_id") if isinstance(obj, dict) else None
            return cid if isinstance(cid, str) else None
        return None

    async def poll(self, batch_id: str) -> BatchStatus:
        try:
            b = await self._client.messages.batches.retrieve(batch_id)
        except _SDK_FAILURES as exc:
            raise map_failure(self.provider, exc) from exc
        return _status(b)

    async def cancel(self, batch_id: str) -> BatchStatus:
        try:
            b = await self._client.messages.batches.cancel(batch_id)
        except _SDK_FAILURES as exc:
            raise map_failure(self.provider, exc) from exc
        return _status(b)

    async def results(self, batch_id: str) -> AsyncIterator[tuple[str, Completion | TeacherError]]:
        """Every result line; ids are the caller's (the chunk tag is stripped)."""
        self.unreadable_lines[batch_id] = 0
        async for line in self._lines(batch_id):
            parsed = self._parse_line(line)
            if parsed is None:
                self.unreadable_lines[batch_id] += 1
                continue
            yield parsed

    async def _lines(self, batch_id: str) -> AsyncIterator[str]:
        try:
            async with self._client.messages.batches.with_streaming_response.results(
                batch_id
            ) as resp:
                async for line in resp.iter_lines():
                    if line.strip():
                        yield line
        except _SDK_FAILURES as exc:
            raise map_failure(self.provider, exc) from exc

    def _parse_line(self, text: str) -> tuple[str, Completion | TeacherError] | None:
        try:
            obj = json.loads(text)
        except ValueError:
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
            return None
        decoded = decode_custom_id(obj["custom_id"])
        item_id = decoded[1] if decoded else obj["custom_id"]
        return item_id, self._result(item_id, obj.get("result"))

    def _result(self, item_id: str, result: object) -> Completion | TeacherError:
        kind = result.get("type") if isinstance(result, dict) else None
        if kind == "succeeded":
            try:
                return parse_anthropic_body(
                    result.get("message"),  # type: ignore[union-attr]
                    model=self.model,
                )
            except TeacherError as exc:
                return exc
        if kind == "errored":
            envelope = result.get("error")  # type: ignore[union-attr]
            inner = envelope.get("error") if isinstance(envelope, dict) else None
            err_type = inner.get("type") if isinstance(inner, dict) else None
            status = _ERROR_STATUS.get(err_type, 500) if isinstance(err_type, str) else 500
            return status_error(self.provider, status, {}, envelope)
        if kind == "expired":
            return expired_item(self.provider, item_id)
        if kind == "canceled":
            return canceled_item(self.provider, item_id)
        return malformed_body(self.provider, f"batch result for {item_id!r} has type {kind!r}")

    async def aclose(self) -> None:
        await self._client.close()


def _status(b: Any) -> BatchStatus:
    rc = b.request_counts
    counts = BatchCounts(
        total=rc.processing + rc.succeeded + rc.errored + rc.canceled + rc.expired,
        succeeded=rc.succeeded,
        errored=rc.errored,
        expired=rc.expired,
        canceled=rc.canceled,
        processing=rc.processing,
    )
    if b.processing_status != "ended":
        state = "in_progress"
    elif b.cancel_initiated_at is not None:
        state = "canceled"
    elif rc.expired:
        state = "expired"
    else:
        state = "ended"
    return BatchStatus(
        batch_id=b.id,
        state=state,
        counts=counts,
        provider_status=b.processing_status,
        has_results=b.results_url is not None,
    )
