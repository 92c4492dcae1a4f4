"""Provider message lists → the dataset's text-only :class:`Message` turns.

The dataset (and the student) see chats as ``system``/``user``/``assistant`` text. Provider
chats carry more: OpenAI ``developer`` turns, content parts, ``tool_calls`` on assistant
turns, ``tool`` results; Anthropic content blocks (``text``, ``tool_use``, ``tool_result``).
They are rendered to text by one documented rule (docs/import.md) so a student learns the
same calls the teacher made:

- ``developer`` → ``system``; text parts are joined with a blank line;
- an assistant tool call → a JSON line ``{"tool_call": {"name": …, "arguments": …}}`` after
  the assistant's text (arguments parsed when they are JSON);
- a tool result (OpenAI ``tool``/``function`` turn, Anthropic ``tool_result`` block) → a
  ``user`` turn ``{"tool_result": {"id"|"name": …, "content": …}}``.

Images, audio and files are refused (the student is a text model): the error names the part.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from apidistill.importers.base import LineProblem
from apidistill.records import Message

__all__ = ["anthropic_messages", "anthropic_text", "openai_assistant_text", "openai_messages"]


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _maybe_json(text: Any) -> Any:
    if isinstance(text, str):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def _parts_text(content: Any, where: str) -> str:
    """OpenAI content: a string, null, or a list of ``{"type": "text", "text": …}`` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise LineProblem(f"{where}: content must be text or a list of parts")
    out = []
    for i, part in enumerate(content):
        if not isinstance(part, Mapping):
            raise LineProblem(f"{where}: content part {i} is not an object")
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text") and isinstance(part.get("text"), str):
            out.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            out.append(part["refusal"])
        else:
            raise LineProblem(
                f"{where}: content part {i} of type {kind!r} is not text; the student is a "
                "text model (drop the line or remove the part)"
            )
    return "\n\n".join(out)


def _tool_call_lines(msg: Mapping[str, Any], where: str) -> list[str]:
    calls = msg.get("tool_calls") or []
    if not isinstance(calls, list):
        raise LineProblem(f"{where}: tool_calls must be a list")
    lines = []
    for i, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise LineProblem(f"{where}: tool_calls[{i}] has no function name")
        lines.append(
            _dumps(
                {"tool_call": {"name": fn["name"], "arguments": _maybe_json(fn.get("arguments"))}}
            )
        )
    legacy = msg.get("function_call")
    if isinstance(legacy, Mapping) and isinstance(legacy.get("name"), str):
        args = _maybe_json(legacy.get("arguments"))
        lines.append(_dumps({"tool_call": {"name": legacy["name"], "arguments": args}}))
    return lines


def openai_assistant_text(msg: Mapping[str, Any], where: str) -> str:
    """An OpenAI assistant message (request turn or response) as the text a student says."""
    text = _parts_text(msg.get("content"), where)
    if not text and isinstance(msg.get("refusal"), str):
        text = msg["refusal"]
    lines = _tool_call_lines(msg, where)
    return "\n".join([t for t in (text, *lines) if t])


def openai_messages(raw: Any, where: str = "messages") -> list[Message]:
    """An OpenAI chat ``messages`` list as dataset messages (the rules in the module doc)."""
    if not isinstance(raw, list) or not raw:
        raise LineProblem(f"{where} must be a non-empty list of messages")
    out: list[Message] = []
    for i, msg in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(msg, Mapping):
            raise LineProblem(f"{at} is not an object")
        role = msg.get("role")
        if role in ("system", "developer", "user"):
            out.append(
                Message(
                    role="user" if role == "user" else "system",
                    content=_parts_text(msg.get("content"), at),
                )
            )
        elif role == "assistant":
            out.append(Message(role="assistant", content=openai_assistant_text(msg, at)))
        elif role in ("tool", "function"):
            ref = (
                {"id": msg["tool_call_id"]}
                if msg.get("tool_call_id")
                else {"name": msg.get("name")}
            )
            body = {**ref, "content": _maybe_json(_parts_text(msg.get("content"), at))}
            out.append(Message(role="user", content=_dumps({"tool_result": body})))
        else:
            raise LineProblem(
                f"{at}.role is {role!r}; expected system, developer, user, assistant or tool"
            )
    return out


# --------------------------------------------------------------------------- Anthropic


def anthropic_text(content: Any, where: str) -> str:
    """Anthropic content (a string or blocks) as text: text blocks, then tool calls/results."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise LineProblem(f"{where}: content must be text or a list of blocks")
    out = []
    for i, block in enumerate(content):
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text" and isinstance(block.get("text"), str):
            out.append(block["text"])
        elif kind == "tool_use":
            out.append(
                _dumps({"tool_call": {"name": block.get("name"), "arguments": block.get("input")}})
            )
        elif kind == "tool_result":
            inner = block.get("content")
            text = inner if isinstance(inner, str) else anthropic_text(inner or [], where)
            body = {"id": block.get("tool_use_id"), "content": _maybe_json(text)}
            out.append(_dumps({"tool_result": body}))
        elif kind in ("thinking", "redacted_thinking"):
            continue  # reasoning is not part of the answer a student gives
        else:
            raise LineProblem(
                f"{where}: content block {i} of type {kind!r} is not text; the student is a "
                "text model"
            )
    return "\n".join(t for t in out if t)


def anthropic_messages(params: Mapping[str, Any], where: str = "params") -> list[Message]:
    """An Anthropic Messages request (``system`` + ``messages``) as dataset messages."""
    out: list[Message] = []
    system = params.get("system")
    if system:
        out.append(Message(role="system", content=anthropic_text(system, f"{where}.system")))
    msgs = params.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise LineProblem(f"{where}.messages must be a non-empty list")
    for i, msg in enumerate(msgs):
        at = f"{where}.messages[{i}]"
        role = msg.get("role") if isinstance(msg, Mapping) else None
        if role not in ("user", "assistant"):
            raise LineProblem(f"{at}.role is {role!r}; expected user or assistant")
        out.append(Message(role=role, content=anthropic_text(msg.get("content"), at)))
    return out
