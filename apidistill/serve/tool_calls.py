"""Tool calls on backends that decode under a grammar (llama.cpp).

A small model has no trained tool-call syntax of its own, so a call is asked for plainly and
forced by the grammar: the tools are listed in the system prompt, and the answer must be the
JSON object ``{"name": <tool>, "arguments": <that tool's parameters>}`` (the JSON schema of
every allowed tool, joined with ``anyOf``, becomes the decoding grammar). The routes turn the
object back into each API's shape: OpenAI ``message.tool_calls`` with ``finish_reason
"tool_calls"``, Anthropic ``tool_use`` blocks with ``stop_reason "tool_use"``.

Choices where the APIs leave room: ``tool_choice`` ``auto`` is decoded like ``required`` (the
grammar cannot leave the model free to answer in text instead) except right after a tool
result, where the routes answer in text; ``none`` answers in text, and a named tool forces
that tool. A streamed call is decoded whole, then sent as each API's event sequence
(``tool_call_deltas`` / ``tool_use_events``). Earlier calls and results in the conversation:
tool_history.py.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from apidistill.records import Message
from apidistill.serve.http_errors import APIError

__all__ = [
    "ToolSpec",
    "anthropic_tools",
    "call_id",
    "openai_tools",
    "parse_call",
    "tool_schema",
    "tool_system_text",
    "with_tool_instructions",
]


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]


def _params_schema(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {"type": "object"}
    if not isinstance(value, dict):
        raise APIError(400, f"Invalid '{where}': must be a JSON schema object.", param=where)
    return value


def openai_tools(tools: list[Any], tool_choice: Any) -> list[ToolSpec] | None:
    """The tools the answer may call (None: ``tool_choice`` ``none``, answer in text)."""
    specs: list[ToolSpec] = []
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict):
            raise APIError(
                400,
                f'Invalid \'tools[{i}]\': expected {{"type": "function", "function": {{...}}}}.',
                param=f"tools[{i}]",
                code="invalid_value",
            )
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise APIError(
                400, f"Missing required parameter: 'tools[{i}].function.name'.",
                param=f"tools[{i}].function.name", code="missing_required_parameter",
            )  # fmt: skip
        specs.append(
            ToolSpec(
                name,
                str(fn.get("description") or ""),
                _params_schema(fn.get("parameters"), f"tools[{i}].function.parameters"),
            )
        )
    if tool_choice in (None, "auto", "required"):
        return specs
    if tool_choice == "none":
        return None
    if isinstance(tool_choice, dict) and isinstance(tool_choice.get("function"), dict):
        return _only(specs, tool_choice["function"].get("name"), "tool_choice")
    raise APIError(
        400,
        "Invalid 'tool_choice': expected 'none', 'auto', 'required' or "
        '{"type": "function", "function": {"name": ...}}.',
        param="tool_choice",
        code="invalid_value",
    )


def anthropic_tools(tools: list[Any], tool_choice: Any) -> list[ToolSpec] | None:
    """Anthropic's ``tools`` (``name``, ``description``, ``input_schema``) and ``tool_choice``
    (``auto`` / ``any`` / ``tool`` + ``name`` / ``none``)."""
    specs: list[ToolSpec] = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not t["name"]:
            raise APIError(400, f"tools.{i}.name: Field required", param=f"tools.{i}.name")
        schema = t.get("input_schema")
        if not isinstance(schema, dict):
            raise APIError(
                400, f"tools.{i}.input_schema: Field required", param=f"tools.{i}.input_schema"
            )
        specs.append(ToolSpec(t["name"], str(t.get("description") or ""), schema))
    kind = tool_choice.get("type") if isinstance(tool_choice, dict) else tool_choice
    if kind in (None, "auto", "any"):
        return specs
    if kind == "none":
        return None
    if kind == "tool" and isinstance(tool_choice, dict):
        return _only(specs, tool_choice.get("name"), "tool_choice.name")
    raise APIError(400, "tool_choice: expected type auto, any, tool or none", param="tool_choice")


def _only(specs: list[ToolSpec], name: Any, param: str) -> list[ToolSpec]:
    chosen = [s for s in specs if s.name == name]
    if not chosen:
        raise APIError(
            400,
            f"Invalid '{param}': no tool named {name!r} among the request's tools.",
            param=param,
            code="invalid_value",
        )
    return chosen


def tool_schema(specs: list[ToolSpec]) -> dict[str, Any]:
    """JSON schema of one call to any of ``specs`` (the decoding grammar's source)."""
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": s.name}, "arguments": s.parameters},
            "required": ["name", "arguments"],
        }
        for s in specs
    ]
    return calls[0] if len(calls) == 1 else {"anyOf": calls}


def tool_system_text(specs: list[ToolSpec]) -> str:
    """Instructions appended to the system prompt: which tools exist and the call format."""
    lines = [
        "You can call these tools. Answer with one JSON object "
        '{"name": <tool name>, "arguments": <arguments object>} and nothing else.'
    ]
    for s in specs:
        lines.append(
            f"- {s.name}: {s.description} Arguments schema: {json.dumps(s.parameters)}".replace(
                ":  ", ": "
            )
        )
    return "\n".join(lines)


def with_tool_instructions(messages: list[Message], specs: list[ToolSpec]) -> list[Message]:
    """``messages`` with the tool instructions added to the system prompt (a new system
    message first when there is none)."""
    text = tool_system_text(specs)
    if messages and messages[0].role == "system":
        first = Message(role="system", content=f"{messages[0].content}\n\n{text}")
        return [first, *messages[1:]]
    return [Message(role="system", content=text), *messages]


def parse_call(text: str) -> tuple[str, dict[str, Any]] | None:
    """(tool name, arguments) from a grammar-decoded answer; None when it was cut short
    (``max_tokens``) before the object closed."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments")
    return obj["name"], args if isinstance(args, dict) else {}


def call_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"
