"""Earlier tool turns of a conversation, rendered for a chat template that has no tool syntax.

The second turn of a tool loop sends back the assistant's call (OpenAI ``assistant`` with
``tool_calls``; Anthropic ``tool_use`` blocks) and its result (OpenAI ``tool`` messages;
Anthropic ``tool_result`` blocks). SmolLM2's template (ChatML) knows only system, user and
assistant turns, and the project's :class:`~apidistill.records.Message` has only those roles,
so both are rendered as plain text, the documented convention:

- a call is the assistant's turn holding the same JSON object the tool grammar makes it write,
  ``{"name": <tool>, "arguments": <object>}`` (one per line; text before it stays first), so
  the model sees its own earlier call as it produced it;
- a result is a user turn ``Tool result (get_weather, call_abc):`` + newline + the content,
  ``Tool error (...)`` when Anthropic's ``is_error`` is true.

Ids round-trip: every result must name a call of an earlier assistant message; one that does
not is a 400 naming the message (``messages[3].tool_call_id`` / ``messages.2.content.0``),
before any decoding. The ids are not shown to the model beyond the result header.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from apidistill.records import Message
from apidistill.serve.anthropic_schema import MessagesRequest, TextBlock, ToolUseBlock
from apidistill.serve.http_errors import APIError
from apidistill.serve.openai_schema import ChatMessageIn

__all__ = [
    "anthropic_messages",
    "openai_messages",
    "parse_arguments",
    "render_call",
    "render_result",
    "unknown_call",
]


def render_call(name: str, arguments: dict[str, Any]) -> str:
    """An earlier call, written as the tool grammar makes the model write one."""
    return json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)


def render_result(name: str, call: str, text: str, *, is_error: bool = False) -> str:
    head = "Tool error" if is_error else "Tool result"
    return f"{head} ({name}, call {call}):\n{text}"


def unknown_call(call: str, param: str, where: str, *, openai: bool) -> APIError:
    """The 400 for a result whose id names no earlier call (``where``: the message, as the
    API writes its index), worded as each API words its validation errors."""
    why = (
        f"{call!r} names no tool call of an assistant message before {where}. Send the "
        "assistant message with that call (its id unchanged) before the result."
    )
    text = f"Invalid '{param}': {why}" if openai else f"{param}: {why}"
    return APIError(400, text, param=param, code="invalid_value")


def parse_arguments(raw: str, param: str) -> dict[str, Any]:
    """OpenAI sends a call's arguments as a JSON string; it must hold a JSON object."""
    try:
        args = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise APIError(
            400,
            f"Invalid '{param}': not valid JSON ({exc.msg} at character {exc.pos}). Send the "
            "arguments string the tool call came back with.",
            param=param,
            code="invalid_value",
        ) from None
    if not isinstance(args, dict):
        raise APIError(
            400, f"Invalid '{param}': must be a JSON object.", param=param, code="invalid_value"
        )
    return args


def openai_messages(msgs: Sequence[ChatMessageIn]) -> tuple[list[Message], bool]:
    """Chat messages for the template, and whether the last one is a tool result (then
    ``tool_choice`` ``auto`` answers in text: the model has what it asked for)."""
    out: list[Message] = []
    calls: dict[str, str] = {}  # call id -> tool name, of the messages so far
    for i, m in enumerate(msgs):
        if m.role == "tool":
            call = m.tool_call_id
            if call is None:
                raise APIError(
                    400,
                    f"Missing required parameter: 'messages[{i}].tool_call_id'.",
                    param=f"messages[{i}].tool_call_id",
                    code="missing_required_parameter",
                )
            if call not in calls:
                raise unknown_call(
                    call, f"messages[{i}].tool_call_id", f"messages[{i}]", openai=True
                )
            out.append(Message(role="user", content=render_result(calls[call], call, m.text())))
            continue
        if m.content is None and not (m.role == "assistant" and m.tool_calls):
            raise APIError(
                400,
                f"Missing required parameter: 'messages[{i}].content' (only an assistant "
                "message with 'tool_calls' may leave it null).",
                param=f"messages[{i}].content",
                code="missing_required_parameter",
            )
        if m.tool_calls and m.role != "assistant":
            raise APIError(
                400,
                f"Invalid 'messages[{i}].tool_calls': only assistant messages make tool calls.",
                param=f"messages[{i}].tool_calls",
                code="invalid_value",
            )
        parts = [m.text()] if m.text() else []
        for j, c in enumerate(m.tool_calls or []):
            args = parse_arguments(
                c.function.arguments, f"messages[{i}].tool_calls[{j}].function.arguments"
            )
            calls[c.id] = c.function.name
            parts.append(render_call(c.function.name, args))
        role = "system" if m.role == "developer" else m.role
        out.append(Message(role=role, content="\n".join(parts)))
    return out, msgs[-1].role == "tool"


def anthropic_messages(req: MessagesRequest) -> tuple[list[Message], bool]:
    """The Messages body's turns for the template (system first), and whether the last one
    holds a tool result. Blocks keep their order inside a turn, joined by blank lines."""
    out: list[Message] = []
    system = req.system_text()
    if system:
        out.append(Message(role="system", content=system))
    calls: dict[str, str] = {}
    ends_with_result = False
    for i, m in enumerate(req.messages):
        ends_with_result = False
        if isinstance(m.content, str):
            out.append(Message(role=m.role, content=m.content))
            continue
        parts: list[str] = []
        for j, b in enumerate(m.content):
            where = f"messages.{i}.content.{j}"
            if isinstance(b, TextBlock):
                parts.append(b.text)
            elif isinstance(b, ToolUseBlock):
                if m.role != "assistant":
                    raise APIError(
                        400, f"{where}: tool_use blocks belong in assistant messages", param=where
                    )
                calls[b.id] = b.name
                parts.append(render_call(b.name, b.input))
            else:
                if m.role != "user":
                    raise APIError(
                        400, f"{where}: tool_result blocks belong in user messages", param=where
                    )
                if b.tool_use_id not in calls:
                    raise unknown_call(
                        b.tool_use_id, f"{where}.tool_use_id", f"messages.{i}", openai=False
                    )
                name = calls[b.tool_use_id]
                parts.append(render_result(name, b.tool_use_id, b.text(), is_error=b.is_error))
                ends_with_result = True
        joiner = "" if all(isinstance(b, TextBlock) for b in m.content) else "\n\n"
        out.append(Message(role=m.role, content=joiner.join(parts)))
    last = req.messages[-1]
    if last.role == "assistant" and last.tool_block() is not None:
        where = f"messages.{len(req.messages) - 1}"
        raise APIError(
            400,
            f"{where}: a final assistant message (a prefill) cannot hold tool_use blocks; "
            "send the tool_result in a user message after it",
            param=where,
        )
    return out, ends_with_result and last.role == "user"
