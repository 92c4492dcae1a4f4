"""Exact input counts for a Claude teacher from Anthropic's ``count_tokens`` endpoint.

Claude's tokenizer is not published, so without this the estimate counts characters / 4.
``POST /v1/messages/count_tokens`` (the official SDK's ``client.messages.count_tokens``)
returns the ``input_tokens`` a Messages request would use. It is free but rate-limited and
sends the prompts to Anthropic, so it runs only when the user allows it
(``teacher.count_tokens: true`` or ``apidistill estimate --count-tokens``).

What is counted: **every distinct request**, once. Requests with the same system prompt and
messages share one call (memoized by their body), but a long shared prefix is not counted
once and then added to each remainder: Anthropic renders the turns into one prompt, so a sum
of parts is not what the endpoint (or the bill) says for the whole. The shared prefix's own
size, which the cache estimate needs, is measured as ``count(first request) - count(its final
turn alone)``: two more calls.

Only the estimate uses these counts. The budget keeps reserving the byte bound
(:func:`apidistill.costs.tokens.byte_bound_tokens`), raised to the count should a count ever
exceed it: Anthropic documents the count as an estimate that may differ slightly from the
billed usage, so it is no upper bound to reserve against.

The call lives with the Anthropic client (it sends the prompts over the network); the counts
it returns are :class:`apidistill.costs.estimate.AnthropicCounts`, plain data the pure cost
estimate takes (docs/architecture.md: costs import no teacher and no network library).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from typing import Any

from apidistill.config import TeacherConfig
from apidistill.costs.estimate import AnthropicCounts
from apidistill.errors import CapabilityError, ConfigError, TeacherError
from apidistill.records import Message, TeacherRequest

__all__ = ["AnthropicCounts", "count_with_anthropic"]


def _count_body(request: TeacherRequest, model: str) -> dict[str, Any]:
    """What ``count_tokens`` takes from a Messages body: model, system and messages (the
    cache breakpoints change no count, so they are left out). Sampling and logprob settings
    change no count either; the harvest refuses or falls back on those itself."""
    from apidistill.teachers.anthropic import build_anthropic_body

    if request.prompt is not None:
        raise CapabilityError(
            "Anthropic has no plain-prompt completion endpoint, so nothing to count",
            hint="give 'messages' (chat) instead of 'prompt'",
        )
    body = build_anthropic_body(request, model=model, prompt_cache=False)
    return {k: body[k] for k in ("model", "system", "messages") if k in body}


def _key(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


async def count_with_anthropic(
    teacher: TeacherConfig,
    requests: Sequence[TeacherRequest],
    *,
    prefix: Sequence[Message] = (),
    api_key: str | None,
    base_url: str | None = None,
    concurrency: int = 4,
    max_retries: int = 4,
    timeout_s: float = 60.0,
) -> AnthropicCounts:
    """Count ``requests`` (module docstring). ``prefix``: the leading messages every request
    shares; its tokens are measured on the first request. The SDK retries rate limits
    (429, honoring ``retry-after``) ``max_retries`` times; any other failure is raised as
    the project's teacher error, naming the endpoint."""
    import anthropic
    import httpx2

    from apidistill.teachers.anthropic import ANTHROPIC_BASE_URL
    from apidistill.teachers.failures import TRANSPORT_ERRORS, map_failure

    if teacher.provider != "anthropic":
        raise ConfigError(
            "count_tokens is Anthropic's endpoint", key="teacher.count_tokens",
            hint="remove it: other teachers are counted locally",
        )  # fmt: skip
    bodies = [_count_body(r, teacher.model) for r in requests]
    if prefix and requests and requests[0].messages:
        tail = requests[0].model_copy(update={"messages": requests[0].messages[len(prefix) :]})
        extra = [bodies[0], _count_body(tail, teacher.model)] if tail.messages else []
    else:
        extra = []
    distinct = {_key(b): b for b in [*bodies, *extra]}
    client = anthropic.AsyncAnthropic(
        api_key=api_key or "EMPTY",
        base_url=(base_url or ANTHROPIC_BASE_URL).rstrip("/"),
        max_retries=max_retries,
        timeout=httpx2.Timeout(timeout_s, connect=min(10.0, timeout_s)),
    )
    gate = asyncio.Semaphore(concurrency)
    counts: dict[str, int] = {}

    async def one(key: str, body: dict[str, Any]) -> None:
        async with gate:
            try:
                res = await client.messages.count_tokens(**body)
            except (anthropic.AnthropicError, *TRANSPORT_ERRORS) as exc:
                err = map_failure("anthropic", exc)
                raise TeacherError(
                    f"Anthropic count_tokens failed: {err.message}",
                    status=err.status,
                    hint="check the API key (teacher.api_key_env) and teacher.base_url, or "
                    "estimate without --count-tokens (input counted as characters / 4)",
                ) from exc
            counts[key] = int(res.input_tokens)

    try:
        await asyncio.gather(*(one(k, b) for k, b in distinct.items()))
    finally:
        await client.close()
    prefix_tokens = 0
    if extra:
        prefix_tokens = max(0, counts[_key(extra[0])] - counts[_key(extra[1])])
    return AnthropicCounts([counts[_key(b)] for b in bodies], prefix_tokens, len(distinct))
