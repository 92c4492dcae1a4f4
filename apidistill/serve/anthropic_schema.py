"""Anthropic Messages request bodies and the response / stream event builders.

Follows the Messages API reference: ``system`` is a string or text blocks, message content is
a string or text blocks, ``max_tokens`` is required, a final assistant message is a prefill
the answer continues from. Other blocks (images, documents) are refused with a 400; ``tools``,
``tool_use`` and ``tool_result`` blocks work on backends that decode under a grammar (see
tool_calls.py and tool_history.py).

Usage: ``input_tokens`` is the whole prompt. The server's automatic prefix cache is not
Anthropic's opt-in prompt caching, so ``cache_read_input_tokens`` stays 0 and clients that
add the cache fields to ``input_tokens`` still get the right total.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from apidistill.serve.engine import EngineOutput

__all__ = [
    "CountTokensRequest",
    "MessagesRequest",
    "message_response",
    "stop_reason_of",
    "tool_use_events",
]

# Characters of a call's input JSON per streamed ``input_json_delta`` (decoded whole first).
INPUT_FRAGMENT = 8


class _Body(BaseModel):
    """Strict types, as the real APIs check them: ``"logprobs": "yes"`` or ``"n": "2"`` is a
    400 naming the field, not silently read as true / 2 (an int is still a valid float)."""

    model_config = ConfigDict(extra="ignore", strict=True)


class TextBlock(_Body):
    type: Literal["text"]
    text: str


class ToolUseBlock(_Body):
    """An earlier call, sent back in an assistant message."""

    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(_Body):
    """The result of the call ``tool_use_id`` names, in a user message."""

    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlock] | None = None
    is_error: bool = False

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(b.text for b in self.content)


Block = Annotated[TextBlock | ToolUseBlock | ToolResultBlock, Field(discriminator="type")]


class MessageIn(_Body):
    role: Literal["user", "assistant"]
    content: str | list[Block]

    def text(self) -> str:
        """The text blocks only (tool blocks are rendered by tool_history)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(b.text for b in self.content if isinstance(b, TextBlock))

    def tool_block(self) -> int | None:
        """Index of the first tool_use / tool_result block, if any."""
        if isinstance(self.content, str):
            return None
        return next((j for j, b in enumerate(self.content) if b.type != "text"), None)


class MessagesRequest(_Body):
    model: str
    max_tokens: int
    messages: list[MessageIn] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    stop_sequences: list[str] | None = None
    stream: bool = False
    metadata: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: dict[str, Any] | None = None

    def system_text(self) -> str | None:
        if self.system is None:
            return None
        if isinstance(self.system, str):
            return self.system
        return "\n".join(b.text for b in self.system)


class CountTokensRequest(MessagesRequest):
    """``/v1/messages/count_tokens``: a Messages body without ``max_tokens``."""

    max_tokens: int = 1


def stop_reason_of(out: EngineOutput) -> str:
    if out.finish_reason == "length":
        return "max_tokens"
    return "stop_sequence" if out.stop_sequence is not None else "end_turn"


def usage_of(out: EngineOutput) -> dict[str, int]:
    return {
        "input_tokens": out.prompt_tokens,
        "output_tokens": out.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def message_response(
    mid: str, model: str, out: EngineOutput, tool_use: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``tool_use``: the answer was a tool call (a ``tool_use`` block, stop reason
    ``tool_use``) instead of text."""
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [tool_use] if tool_use else [{"type": "text", "text": out.text}],
        "stop_reason": "tool_use" if tool_use else stop_reason_of(out),
        "stop_sequence": out.stop_sequence,
        "usage": usage_of(out),
    }


def message_start(mid: str, model: str, prompt_tokens: int) -> dict[str, Any]:
    return {
        "type": "message_start",
        "message": {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": prompt_tokens,
                "output_tokens": 0,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        },
    }


def tool_use_events(
    out: EngineOutput, tool_use: dict[str, Any] | None
) -> list[tuple[str, dict[str, Any]]]:
    """The (event name, data) pairs after ``message_start`` of a stream whose answer was
    decoded whole under the tool grammar: a ``tool_use`` block whose input comes as
    ``input_json_delta`` fragments, stop reason ``tool_use``, as Anthropic streams one. An
    answer cut short before its call closed streams as one text block (``max_tokens``)."""
    start: dict[str, Any] = {"type": "content_block_start", "index": 0}
    deltas: list[dict[str, Any]] = []
    if tool_use is not None:
        start["content_block"] = {**tool_use, "input": {}}
        raw = json.dumps(tool_use["input"], ensure_ascii=False)
        deltas = [
            {"type": "input_json_delta", "partial_json": raw[at : at + INPUT_FRAGMENT]}
            for at in range(0, len(raw), INPUT_FRAGMENT)
        ]
        stop = "tool_use"
    else:
        start["content_block"] = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": out.text}] if out.text else []
        stop = stop_reason_of(out)
    return [
        ("content_block_start", start),
        ("ping", {"type": "ping"}),
        *(
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d})
            for d in deltas
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": stop,
                    "stop_sequence": None if tool_use else out.stop_sequence,
                },
                "usage": {"output_tokens": out.completion_tokens},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
