"""``POST /v1/messages`` (Anthropic Messages API) and ``POST /v1/messages/count_tokens``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from apidistill.errors import ApidistillError
from apidistill.records import GenerationParams, Message
from apidistill.serve.anthropic_schema import (
    CountTokensRequest,
    MessagesRequest,
    message_response,
    message_start,
    stop_reason_of,
    tool_use_events,
)
from apidistill.serve.http_common import (
    ServerContext,
    engine_error,
    new_id,
    off_loop,
    parse_body,
    read_json,
    sse,
    unless_disconnected,
)
from apidistill.serve.http_errors import APIError, sse_error
from apidistill.serve.tool_calls import (
    ToolSpec,
    anthropic_tools,
    call_id,
    parse_call,
    tool_schema,
    with_tool_instructions,
)
from apidistill.serve.tool_history import anthropic_messages

__all__ = ["router"]

router = APIRouter()


def _messages(req: MessagesRequest, grammar: bool) -> tuple[list[Message], bool, bool]:
    """Chat messages for the template, whether the last one is a prefill to continue, and
    whether it holds a tool result. Tool blocks need a backend that decodes under a grammar
    (the transformers engine keeps its 400)."""
    if not grammar:
        for i, m in enumerate(req.messages):
            j = m.tool_block()
            if j is not None:
                where = f"messages.{i}.content.{j}"
                raise APIError(
                    400,
                    f"{where}: tool_use and tool_result blocks are not supported by this "
                    "server's backend (serve a GGUF with --backend llamacpp)",
                    param=where,
                )
    out, after_result = anthropic_messages(req)
    prefill = req.messages[-1].role == "assistant"
    if prefill and out[-1].content != out[-1].content.rstrip():
        raise APIError(
            400,
            "messages: final assistant content cannot end with trailing whitespace",
            param="messages",
        )
    return out, prefill, after_result


async def _prompt_ids(
    ctx: ServerContext, messages: list[Message], prefill: bool, tools: list[ToolSpec] | None
) -> list[int]:
    if tools:
        messages = with_tool_instructions(messages, tools)
    try:
        return await off_loop(ctx.engine.encode_messages, messages, continue_final_message=prefill)
    except ApidistillError as exc:
        raise engine_error(exc) from None


def _tool_use(text: str) -> dict[str, Any] | None:
    parsed = parse_call(text)
    if parsed is None:
        return None
    name, args = parsed
    return {"type": "tool_use", "id": call_id("toolu_"), "name": name, "input": args}


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request) -> Response:
    ctx: ServerContext = request.app.state.ctx
    ctx.authorize(request)
    req = parse_body(CountTokensRequest, await read_json(request, ctx.settings.max_body_bytes))
    ctx.check_model(req.model)
    messages, prefill, _ = _messages(req, getattr(ctx.engine, "supports_grammar", False))
    return JSONResponse({"input_tokens": len(await _prompt_ids(ctx, messages, prefill, None))})


@router.post("/v1/messages")
async def messages(request: Request) -> Response:
    ctx: ServerContext = request.app.state.ctx
    ctx.authorize(request)
    req = parse_body(MessagesRequest, await read_json(request, ctx.settings.max_body_bytes))
    ctx.check_model(req.model)
    grammar = getattr(ctx.engine, "supports_grammar", False)
    tools = None
    if req.tools:
        if not grammar:
            raise APIError(
                400,
                "tools: tool use is not supported by this server's backend "
                "(serve a GGUF with --backend llamacpp)",
                param="tools",
            )
        tools = anthropic_tools(req.tools, req.tool_choice)
    messages, prefill, after_result = _messages(req, grammar)
    kind = req.tool_choice.get("type") if req.tool_choice else None
    if tools and after_result and kind in (None, "auto"):
        tools = None  # the model has the result it asked for: it answers in text
    ctx.check_max_tokens(req.max_tokens)
    ids = await _prompt_ids(ctx, messages, prefill, tools)
    extra: dict[str, Any] = {"top_k": req.top_k} if req.top_k else {}
    if tools:
        extra["tool_call_schema"] = tool_schema(tools)
    params = GenerationParams(
        max_tokens=req.max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=req.top_p,
        stop=list(req.stop_sequences) if req.stop_sequences else None,
        extra_body=extra,
    )
    engine = ctx.engine
    try:
        prepared = await off_loop(engine.prepare, None, None, params, prompt_ids=ids)
    except ApidistillError as exc:
        raise engine_error(exc) from None
    slot = ctx.admit("anthropic")
    mid = new_id("msg_")
    model = ctx.settings.served_model_name
    if not req.stream:
        try:
            (out,) = await unless_disconnected(request, engine.run(prepared))
        except ApidistillError as exc:
            raise engine_error(exc) from None
        finally:
            slot.release()
        use = _tool_use(out.text) if tools else None
        return JSONResponse(message_response(mid, model, out, use), headers={"request-id": mid})

    async def events() -> AsyncIterator[str]:
        try:
            yield sse(message_start(mid, model, len(ids)), "message_start")
            if tools:  # decoded whole under the grammar, then sent as tool_use events
                (out,) = await engine.run(prepared)
                for name, event in tool_use_events(out, _tool_use(out.text)):
                    yield sse(event, name)
                return
            block = {"type": "content_block_start", "index": 0}
            yield sse(
                {**block, "content_block": {"type": "text", "text": ""}}, "content_block_start"
            )
            yield sse({"type": "ping"}, "ping")
            async with contextlib.aclosing(engine.run_stream(prepared)) as stream:
                async for d in stream:
                    if d.text:
                        delta = {"type": "text_delta", "text": d.text}
                        yield sse(
                            {"type": "content_block_delta", "index": 0, "delta": delta},
                            "content_block_delta",
                        )
                    if d.output is not None:
                        out = d.output
            yield sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
            yield sse(
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": stop_reason_of(out),
                        "stop_sequence": out.stop_sequence,
                    },
                    "usage": {"output_tokens": out.completion_tokens},
                },
                "message_delta",
            )
            yield sse({"type": "message_stop"}, "message_stop")
        except ApidistillError as exc:
            yield sse_error(engine_error(exc), "anthropic")
        finally:
            slot.release()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "request-id": mid},
    )
