"""Speed of a running OpenAI-compatible server, measured through the official openai SDK.

Why one module: the demo's payoff row (:mod:`apidistill.pipeline.payoff`) and the
``serve_backends`` benchmark compare a student with its prompted teacher the same way, so they
share these calls instead of two copies that drift. Greedy, neutral sampling (no repeat
penalty, no top-k/min-p: llama.cpp's defaults would change the answers), the usage block's
``completion_tokens`` for output tokens.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

__all__ = [
    "NEUTRAL",
    "concurrent_rps",
    "greedy_request",
    "latency_summary",
    "sequential",
    "timed_call",
]

# temperature/top_p are SDK parameters; the rest travel in extra_body (llama.cpp's names)
NEUTRAL: dict[str, Any] = {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}

Chat = list[dict[str, str]]


def greedy_request(model: str, messages: Chat, max_tokens: int) -> dict[str, Any]:
    """The SDK arguments of one greedy, neutral chat completion (both clients send these)."""
    return {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "top_p": 1.0,
        "extra_body": NEUTRAL,
    }


def timed_call(client: Any, model: str, messages: Chat, max_tokens: int) -> dict[str, Any]:
    """One greedy chat completion: wall seconds, output tokens and the answer's text."""
    started = time.perf_counter()
    r = client.chat.completions.create(**greedy_request(model, messages, max_tokens))
    wall = time.perf_counter() - started
    return {"s": wall, "tokens": r.usage.completion_tokens, "text": r.choices[0].message.content}


def sequential(
    base_url: str, model: str, chats: Sequence[Chat], max_tokens: int
) -> tuple[list[dict[str, Any]], float]:
    """Every chat one at a time (concurrency 1): the rows and the wall seconds of all."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
    started = time.perf_counter()
    rows = [timed_call(client, model, c, max_tokens) for c in chats]
    wall = time.perf_counter() - started
    client.close()
    return rows, wall


async def _concurrent(
    base_url: str, model: str, chats: Sequence[Chat], max_tokens: int, conc: int
) -> dict[str, Any]:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
    sem = asyncio.Semaphore(conc)

    async def call(msgs: Chat) -> int:
        async with sem:
            r = await client.chat.completions.create(**greedy_request(model, msgs, max_tokens))
            return r.usage.completion_tokens

    started = time.perf_counter()
    toks = await asyncio.gather(*(call(m) for m in chats))
    wall = time.perf_counter() - started
    await client.close()
    return {
        "requests": len(chats),
        "requests_per_s": round(len(chats) / wall, 3),
        "wall_s": round(wall, 2),
        "output_tokens_per_s": round(sum(toks) / wall, 1),
    }


def concurrent_rps(
    base_url: str, model: str, chats: Sequence[Chat], max_tokens: int, conc: int
) -> dict[str, Any]:
    """All ``chats`` with at most ``conc`` in flight: requests/s and output tokens/s."""
    return asyncio.run(_concurrent(base_url, model, chats, max_tokens, conc))


def latency_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Median/min/max latency and median output tokens/s of :func:`timed_call` rows."""
    lat = [r["s"] for r in rows]
    tps = [r["tokens"] / r["s"] for r in rows if r["s"] > 0]
    return {
        "n": len(rows),
        "latency_s_median": round(statistics.median(lat), 3),
        "latency_s_min": round(min(lat), 3),
        "latency_s_max": round(max(lat), 3),
        "output_tokens_median": statistics.median(r["tokens"] for r in rows),
        "output_tokens_per_s_median": round(statistics.median(tps), 1) if tps else None,
    }
