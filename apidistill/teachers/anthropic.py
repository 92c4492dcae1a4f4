"""Anthropic Messages on the official ``AsyncAnthropic`` client.

Anthropic returns no logprobs on any model, and API version 2026-10-21 (sent by the 2.x
SDK) rejects every sampling parameter; requests needing either are refused here before
anything is sent (:class:`~apidistill.errors.CapabilityError`). Body building and parsing
are plain functions shared with the Message Batches client. Answers are normalized to the
OpenAI vocabulary the later stages filter on: ``finish_reason`` ``stop``/``length``, and
``input_tokens`` = every input token including cache reads and writes (Anthropic reports
those three separately: ``cache_read_input_tokens`` become ``cached_input_tokens``,
``cache_creation_input_tokens`` become ``cache_write_input_tokens``; the cost code prices
each share at its own rate).

Prompt caching: the prefix a request shares with the others (the prototype prompt: the
system turn and the few-shot pairs, everything before the final turn) ends with one
``cache_control: {"type": "ephemeral"}`` breakpoint (5-minute TTL), so every request after
the first reads it at 0.1× the input price instead of paying it in full. A prefix shorter
than the model's minimum (1,024-4,096 tokens) is simply not cached; nothing fails.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

import anthropic
import httpx2

from apidistill.errors import CapabilityError, register_secret
from apidistill.records import Completion, TeacherRequest, Usage
from apidistill.teachers.base import Capabilities, TeacherResponse
from apidistill.teachers.failures import TRANSPORT_ERRORS, malformed_body, map_failure
from apidistill.teachers.profiles import anthropic_capabilities
from apidistill.teachers.ratelimits import anthropic_rate_limits
from apidistill.teachers.transport import resolve_transport, sdk_http_client
from apidistill.teachers.urls import teacher_identity

__all__ = [
    "ANTHROPIC_BASE_URL",
    "CACHE_CONTROL",
    "AnthropicTeacher",
    "build_anthropic_body",
    "check_anthropic_request",
    "parse_anthropic_body",
]

ANTHROPIC_BASE_URL = "https://api.anthropic.com"
_SDK_FAILURES = (anthropic.AnthropicError, *TRANSPORT_ERRORS)
_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
    "tool_use": "tool_calls",
}


def anthropic_api_version() -> str:
    """The ``anthropic-version`` header the installed SDK sends."""
    from anthropic._constants import ANTHROPIC_API_VERSION

    return ANTHROPIC_API_VERSION


def check_anthropic_request(request: TeacherRequest, *, model: str) -> None:
    """Refuse what Anthropic cannot do, before any money is spent."""
    if request.params.logprobs:
        raise CapabilityError(
            f"Anthropic ({model!r}) returns no logprobs on any model",
            hint="use training.method: sequence_kd, or harvest.on_missing_logprobs: sequence_kd",
        )
    if request.prompt is not None:
        raise CapabilityError(
            "Anthropic has no plain-prompt completion endpoint",
            hint="give 'messages' (chat) instead of 'prompt'",
        )
    p = request.params
    if p.top_p is not None or p.temperature not in (0.0, 1.0):
        raise CapabilityError(
            f"Anthropic API {anthropic_api_version()} accepts no sampling parameters "
            f"(got temperature {p.temperature:g}, top_p {p.top_p})",
            hint="leave harvest.temperature at 0 or 1 and top_p unset for Anthropic teachers",
        )


CACHE_CONTROL: dict[str, str] = {"type": "ephemeral"}


def _cached_text(text: str) -> list[dict[str, Any]]:
    """One text block ending a cache breakpoint (the 5-minute TTL is the default)."""
    return [{"type": "text", "text": text, "cache_control": dict(CACHE_CONTROL)}]


def build_anthropic_body(
    request: TeacherRequest, *, model: str, prompt_cache: bool = True
) -> dict[str, Any]:
    """The Messages API body. System turns become ``system``. ``seed``, ``temperature``
    and ``top_p`` are not sent: API version 2026-10-21 answers 400 to any sampling parameter
    (the 2.x SDK dropped them), so :func:`check_anthropic_request` refuses a request that
    needs a specific sampling; they stay in the cache key, so answers stay separated.

    ``prompt_cache``: put the cache breakpoint at the end of the shared prefix (module
    docstring): on the last turn before the final one, else on the system prompt. A request
    with neither (one bare turn) has no prefix to cache and is sent as it is."""
    p = request.params
    system = [m.content for m in request.messages or () if m.role == "system"]
    turns: list[dict[str, Any]] = [
        {"role": m.role, "content": m.content} for m in request.messages or () if m.role != "system"
    ]
    body: dict[str, Any] = {"model": model, "max_tokens": p.max_tokens, "messages": turns}
    if system:
        body["system"] = "\n\n".join(system)
    if prompt_cache:
        # Anthropic refuses cache_control on an empty text block: such a prefix stays unmarked
        if len(turns) >= 2 and turns[-2]["content"]:
            turns[-2]["content"] = _cached_text(turns[-2]["content"])
        elif system and body["system"]:
            body["system"] = _cached_text(body["system"])
    if p.stop:
        body["stop_sequences"] = list(p.stop)
    body.update(p.extra_body)
    return body


def _count(u: Mapping[str, Any], key: str) -> int:
    v = u.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def parse_anthropic_body(
    data: object,
    *,
    model: str,
    request_hash: str = "",
    latency_ms: float = 0.0,
) -> Completion:
    """A decoded ``message`` object → Completion."""
    if not isinstance(data, Mapping) or data.get("type", "message") != "message":
        raise malformed_body("anthropic", "expected a 'message' object")
    blocks = data.get("content")
    if not isinstance(blocks, list):
        raise malformed_body("anthropic", "'content' is not a list of blocks")
    text = "".join(
        b["text"]
        for b in blocks
        if isinstance(b, Mapping) and b.get("type") == "text" and isinstance(b.get("text"), str)
    )
    u = data.get("usage") if isinstance(data.get("usage"), Mapping) else {}
    cached = _count(u, "cache_read_input_tokens")
    written = _count(u, "cache_creation_input_tokens")
    usage = Usage(
        input_tokens=_count(u, "input_tokens") + cached + written,
        output_tokens=_count(u, "output_tokens"),
        cached_input_tokens=cached,
        cache_write_input_tokens=written,
    )
    stop = data.get("stop_reason")
    returned = data.get("model")
    return Completion(
        text=text,
        finish_reason=_STOP_REASONS.get(stop, stop) if isinstance(stop, str) else None,
        logprobs=None,
        usage=usage,
        latency_ms=latency_ms,
        provider="anthropic",
        model=model,
        model_version=returned if isinstance(returned, str) else None,
        request_hash=request_hash,
    )


class AnthropicTeacher:
    """One Claude model. The key goes to the SDK client only; ``repr`` never shows it.

    ``transport``: the SDK's HTTP transport, as for ``OpenAITeacher`` (``auto``: the SDK's
    aiohttp client when installed, else httpx2; :mod:`apidistill.teachers.transport`)."""

    provider = "anthropic"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_connections: int = 1000,
        transport: str = "auto",
        prompt_cache: bool = True,
    ) -> None:
        self.model = model
        self.prompt_cache = prompt_cache
        # like the SDK: an explicit URL, else $ANTHROPIC_BASE_URL, else api.anthropic.com
        base_url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or ANTHROPIC_BASE_URL
        self.base_url = base_url.rstrip("/")
        self._teacher_id = teacher_identity(self.provider, self.base_url)
        self.transport = resolve_transport(transport)
        register_secret(api_key)  # redacted by value in every message
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key or "EMPTY",
            base_url=self.base_url,
            max_retries=0,
            timeout=httpx2.Timeout(timeout_s, connect=min(10.0, timeout_s)),
            http_client=sdk_http_client(anthropic, self.transport, max_connections=max_connections),
        )

    def __repr__(self) -> str:
        return (
            f"AnthropicTeacher(model={self.model!r}, base_url={self.base_url!r}, "
            f"transport={self.transport!r})"
        )

    @property
    def teacher_id(self) -> str:
        return self._teacher_id

    @property
    def capabilities(self) -> Capabilities:
        return anthropic_capabilities(self.model)

    def build(self, request: TeacherRequest) -> dict[str, Any]:
        check_anthropic_request(request, model=self.model)
        return build_anthropic_body(request, model=self.model, prompt_cache=self.prompt_cache)

    async def complete(self, request: TeacherRequest) -> TeacherResponse:
        body = self.build(request)
        known = {k: body.pop(k) for k in ("model", "max_tokens", "messages")}
        for k in ("system", "stop_sequences"):
            if k in body:
                known[k] = body.pop(k)
        started = time.perf_counter()
        try:
            raw = await self._client.messages.with_raw_response.create(**known, extra_body=body)
            content = await raw.read()
        except _SDK_FAILURES as exc:
            raise map_failure(self.provider, exc) from exc
        latency_ms = (time.perf_counter() - started) * 1000.0
        try:
            data = json.loads(content)
        except (ValueError, UnicodeDecodeError) as exc:
            raise malformed_body(self.provider, f"not JSON ({exc})") from exc
        completion = parse_anthropic_body(
            data,
            model=self.model,
            request_hash=request.cache_key(self.teacher_id, self.model),
            latency_ms=latency_ms,
        )
        return TeacherResponse(
            completion=completion,
            rate_limits=anthropic_rate_limits(raw.headers),
            headers=dict(raw.headers.items()),
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> AnthropicTeacher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
