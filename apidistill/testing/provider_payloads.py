"""Deterministic provider answers in the exact documented shapes, for loopback test servers.

Shapes follow the providers' API references: OpenAI ``chat.completion`` and
``text_completion`` objects (with ``logprobs.content[]`` entries of token/logprob/bytes/
top_logprobs, ``usage.prompt_tokens_details.cached_tokens``, ``system_fingerprint``), the
OpenAI error envelope ``{"error": {"message", "type", "param", "code"}}``, Anthropic
``message`` objects (usage with ``cache_creation_input_tokens`` / ``cache_read_input_tokens``:
:class:`AnthropicPromptCache` plays the provider's prompt cache), the ``count_tokens``
answer ``{"input_tokens": n}`` and the Anthropic error envelope
``{"type": "error", "error": {...}}``.
The answer text is a pure function of the request, so a test can predict every byte.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any

__all__ = [
    "FINGERPRINT",
    "AnthropicPromptCache",
    "answer_tokens",
    "anthropic_count_tokens",
    "anthropic_error",
    "anthropic_message",
    "input_text",
    "openai_chat_completion",
    "openai_error",
    "openai_text_completion",
]

FINGERPRINT = "fp_apidistill_test"
_WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]


def _blocks_text(content: object) -> tuple[str, bool]:
    """Text of a string or of Anthropic content blocks, and whether a block carries
    ``cache_control`` (a cache breakpoint)."""
    if isinstance(content, list):
        blocks = [b for b in content if isinstance(b, dict)]
        text = "".join(str(b.get("text", "")) for b in blocks)
        return text, any("cache_control" in b for b in blocks)
    return (content if isinstance(content, str) else ""), False


def _input_parts(body: dict[str, Any]) -> list[tuple[str, bool]]:
    """The request's text parts in order, each with whether it ends a cache breakpoint."""
    if isinstance(body.get("prompt"), str):
        return [(body["prompt"], False)]
    parts: list[tuple[str, bool]] = []
    if body.get("system"):
        parts.append(_blocks_text(body["system"]))
    for m in body.get("messages") or []:
        text, mark = _blocks_text(m.get("content"))
        parts.append((f"{m.get('role')}:{text}", mark))
    return parts


def input_text(body: dict[str, Any]) -> str:
    """The text the answer is derived from: the prompt, or the messages joined (the same
    whether or not the body carries cache breakpoints)."""
    return "\n".join(text for text, _ in _input_parts(body))


class AnthropicPromptCache:
    """Anthropic's prompt cache as its usage reports it: the text up to the last
    ``cache_control`` breakpoint, when at least ``min_tokens`` long, is written on first
    sight (``cache_creation_input_tokens``) and read afterwards (``cache_read_input_tokens``);
    the rest of the input is ``input_tokens``. A shorter prefix is not cached."""

    def __init__(self, min_tokens: int = 1024) -> None:
        self.min_tokens = min_tokens
        self._written: set[str] = set()

    def split(self, body: dict[str, Any]) -> tuple[int, int, int]:
        """``(input_tokens, cache_creation_input_tokens, cache_read_input_tokens)``."""
        parts = _input_parts(body)
        total = _prompt_tokens("\n".join(t for t, _ in parts))
        marks = [i for i, (_, mark) in enumerate(parts) if mark]
        if not marks:
            return total, 0, 0
        head = "\n".join(t for t, _ in parts[: marks[-1] + 1])
        n = len(head.split())
        if n < self.min_tokens:
            return total, 0, 0
        key = f"{body.get('model')}\x00{head}"
        if key in self._written:
            return total - n, 0, n
        self._written.add(key)
        return total - n, n, 0


def anthropic_count_tokens(body: dict[str, Any]) -> dict[str, Any]:
    """The ``POST /v1/messages/count_tokens`` answer: every input token of ``body``, as a
    ``message`` for the same body reports in total (cache breakpoints change nothing)."""
    return {"input_tokens": _prompt_tokens(input_text(body))}


def answer_tokens(text: str, max_tokens: int) -> tuple[list[str], str]:
    """Tokens of the fake answer and its finish reason (``stop`` or ``length``)."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    n = 3 + digest[0] % 4
    words = [(" " if i else "") + _WORDS[digest[i + 1] % len(_WORDS)] for i in range(n)]
    if max_tokens < n:
        return words[:max_tokens], "length"
    return words, "stop"


def _prompt_tokens(text: str) -> int:
    return max(1, len(text.split()))


def _top(token: str, k: int, position: int) -> list[dict[str, Any]]:
    """The sampled token first, then k-1 alternatives with decreasing logprobs."""
    out = [{"token": token, "logprob": -0.05, "bytes": list(token.encode())}]
    for j in range(1, k):
        alt = f" alt{position}_{j}"
        out.append({"token": alt, "logprob": -1.0 - j, "bytes": list(alt.encode())})
    return out


def _usage(prompt: str, completion_tokens: int, cached: int) -> dict[str, Any]:
    p = _prompt_tokens(prompt)
    return {
        "prompt_tokens": p,
        "completion_tokens": completion_tokens,
        "total_tokens": p + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": min(cached, p), "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _max_tokens(body: dict[str, Any]) -> int:
    value = body.get("max_completion_tokens") or body.get("max_tokens") or 16
    return int(value)


def openai_chat_completion(
    body: dict[str, Any], *, cached_tokens: int = 0, created: int | None = None
) -> dict[str, Any]:
    """A ``chat.completion`` object answering ``body``."""
    text = input_text(body)
    tokens, finish = answer_tokens(text, _max_tokens(body))
    logprobs = None
    if body.get("logprobs"):
        k = int(body.get("top_logprobs") or 0)
        logprobs = {
            "content": [
                {
                    "token": t,
                    "logprob": -0.05,
                    "bytes": list(t.encode()),
                    "top_logprobs": _top(t, k, i) if k else [],
                }
                for i, t in enumerate(tokens)
            ],
            "refusal": None,
        }
    digest = hashlib.sha256(text.encode()).hexdigest()[:24]
    return {
        "id": f"chatcmpl-{digest}",
        "object": "chat.completion",
        "created": created if created is not None else int(time.time()),
        "model": body.get("model", "test-model"),
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "".join(tokens),
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": logprobs,
                "finish_reason": finish,
            }
        ],
        "usage": _usage(text, len(tokens), cached_tokens),
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
    }


def openai_text_completion(body: dict[str, Any], *, created: int | None = None) -> dict[str, Any]:
    """A legacy ``text_completion`` object; ``logprobs`` is an int = top-k there."""
    text = input_text(body)
    tokens, finish = answer_tokens(text, _max_tokens(body))
    logprobs = None
    if body.get("logprobs") is not None:
        k = int(body["logprobs"])
        offsets, pos = [], len(text)
        for t in tokens:
            offsets.append(pos)
            pos += len(t)
        logprobs = {
            "tokens": tokens,
            "token_logprobs": [-0.05] * len(tokens),
            "top_logprobs": [
                {e["token"]: e["logprob"] for e in _top(t, k, i)} if k else {}
                for i, t in enumerate(tokens)
            ],
            "text_offset": offsets,
        }
    digest = hashlib.sha256(text.encode()).hexdigest()[:24]
    return {
        "id": f"cmpl-{digest}",
        "object": "text_completion",
        "created": created if created is not None else int(time.time()),
        "model": body.get("model", "test-model"),
        "system_fingerprint": FINGERPRINT,
        "choices": [
            {"text": "".join(tokens), "index": 0, "logprobs": logprobs, "finish_reason": finish}
        ],
        "usage": _usage(text, len(tokens), 0),
    }


def openai_error(
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def anthropic_message(
    body: dict[str, Any], *, cache_read: int = 0, cache: AnthropicPromptCache | None = None
) -> dict[str, Any]:
    """A Messages API ``message`` object answering ``body``; with ``cache``, its usage
    splits the input into plain, cache-written and cache-read tokens as Anthropic does
    (else ``cache_read`` extra tokens are reported read, and none written)."""
    text = input_text(body)
    tokens, finish = answer_tokens(text, int(body.get("max_tokens") or 16))
    plain, written, read = (
        cache.split(body) if cache is not None else (_prompt_tokens(text), 0, cache_read)
    )
    stop = "end_turn" if finish == "stop" else "max_tokens"
    digest = hashlib.sha256(text.encode()).hexdigest()[:24]
    return {
        "id": f"msg_{digest}",
        "type": "message",
        "role": "assistant",
        "model": body.get("model", "claude-test"),
        "content": [{"type": "text", "text": "".join(tokens)}],
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": plain,
            "output_tokens": len(tokens),
            "cache_creation_input_tokens": written,
            "cache_read_input_tokens": read,
        },
    }


def anthropic_error(kind: str, message: str) -> dict[str, Any]:
    """``kind``: invalid_request_error, authentication_error, rate_limit_error, api_error,
    overloaded_error, not_found_error, ..."""
    return {
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": "req_" + hashlib.sha256(message.encode()).hexdigest()[:20],
    }


def logprob_of(p: float) -> float:
    """Helper for tests that build payloads from probabilities."""
    return math.log(p) if p > 0 else -math.inf
