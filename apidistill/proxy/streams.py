"""Server-sent event streams: split into events, and assembled into the non-stream answer.

The proxy passes each upstream event to the client as soon as it is complete, byte for byte,
and keeps the events to assemble the answer it captures: an OpenAI ``chat.completion.chunk``
stream becomes the ``chat.completion`` object the same request without ``stream`` returns,
an Anthropic event stream (``message_start`` … ``message_stop``) becomes the ``message``.
The terminal event (``data: [DONE]`` / ``message_stop``) is held back until the capture is
committed, so a client that has the whole answer has it in the store too.
"""

from __future__ import annotations

import contextlib
import copy
import json
from typing import Any

__all__ = [
    "BrokenStream",
    "EventSplitter",
    "assemble_anthropic",
    "assemble_openai",
    "event_data",
    "is_terminal",
]


class EventSplitter:
    """Cuts a byte stream into complete SSE events (each ending with a blank line)."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buf += chunk.replace(b"\r\n", b"\n")
        events = []
        while True:
            cut = self._buf.find(b"\n\n")
            if cut < 0:
                return events
            events.append(self._buf[: cut + 2])
            self._buf = self._buf[cut + 2 :]

    def rest(self) -> bytes:
        """Bytes after the last complete event (a stream cut short)."""
        out, self._buf = self._buf, b""
        return out


def event_data(event: bytes) -> tuple[str | None, str]:
    """(event name, data) of one SSE event; multi-line data joined with newlines."""
    name, data = None, []
    for line in event.decode("utf-8", "replace").split("\n"):
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    return name, "\n".join(data)


def is_terminal(event: bytes) -> bool:
    """``data: [DONE]`` (OpenAI) or ``message_stop`` (Anthropic)."""
    name, data = event_data(event)
    return data.strip() == "[DONE]" or name == "message_stop"


class BrokenStream(ValueError):
    """An event whose data is not JSON: the stream is not a whole answer."""


def _parsed(events: list[bytes]) -> list[tuple[str | None, Any]]:
    out = []
    for ev in events:
        name, data = event_data(ev)
        if not data or data.strip() == "[DONE]":
            continue
        try:
            out.append((name, json.loads(data)))
        except ValueError:
            # passed to the client as is; but an answer with a hole is not kept
            raise BrokenStream(f"event data is not JSON: {data[:80]!r}") from None
    return out


def assemble_openai(events: list[bytes]) -> dict[str, Any] | None:
    """The ``chat.completion`` object of a chunk stream (``None`` when it had no chunk)."""
    chunks = [d for _, d in _parsed(events) if isinstance(d, dict)]
    if not chunks:
        return None
    first = chunks[0]
    out: dict[str, Any] = {
        k: first[k] for k in ("id", "created", "model", "system_fingerprint", "service_tier")
        if k in first
    }  # fmt: skip
    out["object"] = "chat.completion"
    choices: dict[int, dict[str, Any]] = {}
    for c in chunks:
        if c.get("usage"):
            out["usage"] = c["usage"]
        for ch in c.get("choices") or []:
            i = ch.get("index", 0)
            slot = choices.setdefault(
                i,
                {"index": i, "message": {"role": "assistant", "content": None, "refusal": None},
                 "logprobs": None, "finish_reason": None},
            )  # fmt: skip
            msg = slot["message"]
            delta = ch.get("delta") or {}
            for key in ("role", "refusal"):
                if delta.get(key) is not None:
                    msg[key] = delta[key] if key == "role" else (msg.get(key) or "") + delta[key]
            if delta.get("content") is not None:
                msg["content"] = (msg.get("content") or "") + delta["content"]
            for tc in delta.get("tool_calls") or []:
                calls = msg.setdefault("tool_calls", [])
                j = tc.get("index", 0)
                while len(calls) <= j:
                    calls.append({"id": None, "type": "function",
                                  "function": {"name": "", "arguments": ""}})  # fmt: skip
                call = calls[j]
                if tc.get("id"):
                    call["id"] = tc["id"]
                if tc.get("type"):
                    call["type"] = tc["type"]
                fn = tc.get("function") or {}
                call["function"]["name"] += fn.get("name") or ""
                call["function"]["arguments"] += fn.get("arguments") or ""
            lp = ch.get("logprobs")
            if lp:
                have = slot["logprobs"] or {"content": [], "refusal": None}
                have["content"] = (have.get("content") or []) + (lp.get("content") or [])
                slot["logprobs"] = have
            if ch.get("finish_reason"):
                slot["finish_reason"] = ch["finish_reason"]
    out["choices"] = [choices[i] for i in sorted(choices)]
    return out


def assemble_anthropic(events: list[bytes]) -> dict[str, Any] | None:
    """The ``message`` object of a Messages event stream (``None`` without message_start)."""
    msg: dict[str, Any] | None = None
    partial: dict[int, str] = {}
    for name, data in _parsed(events):
        kind = data.get("type", name) if isinstance(data, dict) else name
        if kind == "message_start":
            msg = copy.deepcopy(data.get("message") or {})
            msg.setdefault("content", [])
        elif msg is None:
            continue
        elif kind == "content_block_start":
            i = data.get("index", len(msg["content"]))
            while len(msg["content"]) <= i:
                msg["content"].append({})
            msg["content"][i] = copy.deepcopy(data.get("content_block") or {})
        elif kind == "content_block_delta":
            i = data.get("index", 0)
            if i >= len(msg["content"]):
                continue
            block, delta = msg["content"][i], data.get("delta") or {}
            dt = delta.get("type")
            if dt == "text_delta":
                block["text"] = block.get("text", "") + delta.get("text", "")
            elif dt == "input_json_delta":
                partial[i] = partial.get(i, "") + delta.get("partial_json", "")
            elif dt == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
            elif dt == "signature_delta":
                block["signature"] = delta.get("signature", "")
            elif dt == "citations_delta":
                block.setdefault("citations", []).append(delta.get("citation"))
        elif kind == "content_block_stop":
            i = data.get("index", 0)
            if i in partial and i < len(msg["content"]):
                with contextlib.suppress(ValueError):
                    msg["content"][i]["input"] = json.loads(partial.pop(i) or "{}")
        elif kind == "message_delta":
            for k, v in (data.get("delta") or {}).items():
                msg[k] = v
            usage = msg.setdefault("usage", {})
            for k, v in (data.get("usage") or {}).items():
                if v is not None:
                    usage[k] = v
    return msg
