"""OpenAI Batch API: JSONL upload, batch create/poll/cancel, output and error files.

Each batch carries ``metadata = {"apidistill_chunk": <chunk key>}``, which is what
:meth:`OpenAIBatch.find_existing` looks for, so a run that crashed between submitting and
journaling finds its batch again instead of paying for it twice. Request lines use the same
body builder as the online client, so a batch answers exactly what the same request would
have answered online.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

import httpx2
import openai

from apidistill.errors import DataError, TeacherError, TeacherUnavailable, register_secret
from apidistill.records import Completion, TeacherRequest
from apidistill.teachers.batch import (
    BatchCounts,
    BatchLimits,
    BatchState,
    BatchStatus,
    canceled_item,
    expired_item,
    jsonl_size,
    plan_chunks,
)
from apidistill.teachers.failures import malformed_body, map_failure, status_error
from apidistill.teachers.openai import (
    OPENAI_BASE_URL,
    build_openai_body,
    check_openai_request,
    parse_openai_body,
)
from apidistill.teachers.profiles import openai_model_defaults, openai_profile

__all__ = ["CHUNK_METADATA_KEY", "OpenAIBatch"]

CHUNK_METADATA_KEY = "apidistill_chunk"
_SDK_FAILURES = (openai.OpenAIError, httpx2.HTTPError, OSError)
_STATES: dict[str, BatchState] = {
    "validating": "in_progress",
    "in_progress": "in_progress",
    "finalizing": "in_progress",
    "cancelling": "in_progress",
    "completed": "ended",
    "failed": "failed",
    "expired": "expired",
    "cancelled": "canceled",
}
T = TypeVar("T")


class OpenAIBatch:
    """Batch API for one OpenAI model (one model per input file, as the API requires)."""

    provider = "openai"
    # Documented: ≤ 50,000 requests and ≤ 200 MB per input file.
    limits = BatchLimits(max_requests=50_000, max_bytes=200_000_000)

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None,
        base_url: str | None = None,
        timeout_s: float = 120.0,
        max_list_pages: int = 20,
        list_page_size: int = 100,
    ) -> None:
        self.model = model
        self.base_url = (base_url or OPENAI_BASE_URL).rstrip("/")
        self._profile = openai_profile(model)
        self._defaults = openai_model_defaults(model)
        self._max_list_pages = max_list_pages
        self._page_size = list_page_size
        self.unreadable_lines: dict[str, int] = {}
        register_secret(api_key)  # redacted by value in every message
        self._client = openai.AsyncOpenAI(
            api_key=api_key or "EMPTY",
            base_url=self.base_url,
            max_retries=0,
            timeout=httpx2.Timeout(timeout_s, connect=min(10.0, timeout_s)),
        )

    def __repr__(self) -> str:
        return f"OpenAIBatch(model={self.model!r}, base_url={self.base_url!r})"

    # ------------------------------------------------------------------ requests → JSONL

    def line(self, custom_id: str, request: TeacherRequest) -> dict[str, Any]:
        """One input line; refuses (CapabilityError) what the model cannot do."""
        check_openai_request(
            request,
            model=self.model,
            capabilities=self._profile.capabilities,
            model_defaults=self._defaults,
        )
        path, body = build_openai_body(request, model=self.model, profile=self._profile)
        return {"custom_id": custom_id, "method": "POST", "url": "/v1" + path, "body": body}

    def plan_chunks(self, items: Sequence[T]) -> list[list[T]]:
        """Chunks of ``(custom_id, TeacherRequest)`` within the file limits."""
        return plan_chunks(items, self.limits, lambda item: jsonl_size(self.line(*item)))

    async def submit(self, items: list[tuple[str, TeacherRequest]], chunk_key: str) -> str:
        lines = [self.line(cid, req) for cid, req in items]
        _check_batch(lines, self.limits)
        data = "".join(
            json.dumps(ln, separators=(",", ":"), ensure_ascii=False) + "\n" for ln in lines
        ).encode("utf-8")
        try:
            uploaded = await self._client.files.create(
                file=(f"{chunk_key}.jsonl", data, "application/jsonl"), purpose="batch"
            )
            batch = await self._client.batches.create(
                input_file_id=uploaded.id,
                endpoint=lines[0]["url"],
                completion_window="24h",
                metadata={CHUNK_METADATA_KEY: chunk_key},
            )
        except _SDK_FAILURES as exc:
            raise map_failure(self.provider, exc) from exc
        return batch.id

    # ------------------------------------------------------------------ lifecycle

    async def find_existing(self, chunk_key: str) -> str | None:
        """The newest batch tagged with ``chunk_key`` that did not fail validation."""
        try:
            page = await self._client.batches.list(limit=self._page_size)
            for _ in range(self._max_list_pages):
                for b in page.data:
                    meta = b.metadata or {}
                    if meta.get(CHUNK_METADATA_KEY) == chunk_key and b.status != "failed":
                        return b.id
                if not page.has_next_page():
                    return None
                page = await page.get_next_page()
        except _SDK_FAILURES as exc:
            raise map_failure(self.provider, exc) from exc
        return None

    async def poll(self, batch_id: str) -> BatchStatus:
        try:
            b = await self._client.batches.retrieve(batch_id)
        except _SDK_FAILURES as exc:
            raise map_failure(self.provider, exc) from exc
        return _status(b)

    async def cancel(self, batch_id: str) -> BatchStatus:
        try:
            b = await self._client.batches.cancel(batch_id)
        except _SDK_FAILURES as exc:
            raise map_failure(self.provider, exc) from exc
        return _status(b)

    async def results(self, batch_id: str) -> AsyncIterator[tuple[str, Completion | TeacherError]]:
        """Every line of the output and error files, streamed (files can be 200 MB+)."""
        try:
            b = await self._client.batches.retrieve(batch_id)
        except _SDK_FAILURES as exc:
            raise map_failure(self.provider, exc) from exc
        self.unreadable_lines[batch_id] = 0
        for file_id in (b.output_file_id, b.error_file_id):
            if not file_id:
                continue
            async for line in self._lines(file_id):
                parsed = self._parse_line(line)
                if parsed is None:
                    self.unreadable_lines[batch_id] += 1
                    continue
                yield parsed

    async def _lines(self, file_id: str) -> AsyncIterator[str]:
        try:
            async with self._client.files.with_streaming_response.content(file_id) as resp:
                async for line in resp.iter_lines():
                    if line.strip():
                        yield line
        except _SDK_FAILURES as exc:
            raise map_failure(self.provider, exc) from exc

    def _parse_line(self, text: str) -> tuple[str, Completion | TeacherError] | None:
        """One output/error line → (custom_id, result); None when it names no custom_id."""
        try:
            obj = json.loads(text)
        except ValueError:
            return None
        cid = obj.get("custom_id") if isinstance(obj, dict) else None
        if not isinstance(cid, str):
            return None
        return cid, self._line_result(cid, obj)

    def _line_result(self, cid: str, obj: dict[str, Any]) -> Completion | TeacherError:
        error, response = obj.get("error"), obj.get("response")
        if isinstance(error, dict):
            code = error.get("code")
            if code == "batch_expired":
                return expired_item(self.provider, cid)
            if code == "batch_cancelled":
                return canceled_item(self.provider, cid)
            return TeacherUnavailable(
                f"openai batch item {cid!r} failed: {code}: {error.get('message')}",
                maybe_billed=False,
            )
        if not isinstance(response, dict):
            return malformed_body(self.provider, f"batch line {cid!r} has no response")
        status, body = response.get("status_code"), response.get("body")
        if status != 200:
            code = status if isinstance(status, int) else 500
            return status_error(self.provider, code, {}, body)
        try:
            completion, _ = parse_openai_body(
                body,
                chat=not (isinstance(body, dict) and body.get("object") == "text_completion"),
                logprobs_requested=_has_logprobs(body),
                top_k=20,
                provider=self.provider,
                model=self.model,
                quirks=self._profile.capabilities.quirks,
            )
        except TeacherError as exc:
            return exc
        return completion

    async def aclose(self) -> None:
        await self._client.close()


def _has_logprobs(body: object) -> bool:
    if not isinstance(body, dict):
        return False
    choices = body.get("choices")
    return bool(
        isinstance(choices, list)
        and choices
        and isinstance(choices[0], dict)
        and choices[0].get("logprobs") is not None
    )


def _check_batch(lines: list[dict[str, Any]], limits: BatchLimits) -> None:
    if not lines:
        raise DataError("a batch needs at least one request")
    if len(lines) > limits.max_requests:
        raise DataError(
            f"{len(lines)} requests exceed the batch limit of {limits.max_requests}",
            hint="split with plan_chunks() first",
        )
    ids = [ln["custom_id"] for ln in lines]
    if len(set(ids)) != len(ids):
        raise DataError("custom ids must be unique within a batch")
    if len({ln["url"] for ln in lines}) != 1:
        raise DataError(
            "one batch holds one endpoint: do not mix chat 'messages' and plain 'prompt' items"
        )
    size = sum(jsonl_size(ln) for ln in lines)
    if size > limits.max_bytes:
        raise DataError(
            f"the batch file would be {size} bytes, over {limits.max_bytes}",
            hint="split with plan_chunks() first",
        )


def _status(b: Any) -> BatchStatus:
    rc = b.request_counts
    total = rc.total if rc else 0
    done = rc.completed if rc else 0
    failed = rc.failed if rc else 0
    state = _STATES.get(b.status, "in_progress")
    errors = tuple(
        f"{e.code}: {e.message}" + (f" (line {e.line})" if e.line else "")
        for e in ((b.errors.data or []) if b.errors else [])
    )
    return BatchStatus(
        batch_id=b.id,
        state=state,
        counts=BatchCounts(
            total=total,
            succeeded=done,
            errored=failed,
            processing=max(0, total - done - failed) if state == "in_progress" else 0,
        ),
        provider_status=b.status,
        has_results=bool(b.output_file_id or b.error_file_id),
        errors=errors,
    )
