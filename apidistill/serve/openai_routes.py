"""``POST /v1/chat/completions`` and ``POST /v1/completions``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from apidistill.errors import ApidistillError
from apidistill.records import GenerationParams, TokenLogprob
from apidistill.serve.engine import EngineOutput, StreamDelta, _Prepared
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
from apidistill.serve.openai_schema import (
    ChatRequest,
    CompletionRequest,
    SamplingFields,
    chat_chunk,
    chat_logprobs,
    chat_response,
    completion_chunk,
    completion_logprobs,
    completion_response,
    tool_call_deltas,
    usage_body,
)
from apidistill.serve.tool_calls import (
    call_id,
    openai_tools,
    parse_call,
    tool_schema,
    with_tool_instructions,
)
from apidistill.serve.tool_history import openai_messages

__all__ = ["router"]

router = APIRouter()

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def _ctx(request: Request) -> ServerContext:
    return request.app.state.ctx


def _check_common(ctx: ServerContext, req: SamplingFields) -> None:
    ctx.check_model(req.model)
    bad = req.unsupported(grammar=getattr(ctx.engine, "supports_grammar", False))
    if bad is not None:
        raise APIError(400, bad[1], param=bad[0], code="unsupported_parameter")
    if req.n > ctx.settings.max_n:
        raise APIError(
            400,
            f"Invalid 'n': {req.n} is above this server's cap of {ctx.settings.max_n}.",
            param="n",
            code="integer_above_max_value",
        )


def _params(
    req: SamplingFields,
    max_tokens: int,
    *,
    logprobs: bool,
    top: int,
    grammar: dict[str, Any] | None = None,
) -> GenerationParams:
    """``grammar``: ``response_format`` / ``tool_call_schema`` for a backend that decodes
    under a grammar (already checked to be one)."""
    extra: dict[str, Any] = dict(grammar or {})
    if req.top_k is not None:
        extra["top_k"] = req.top_k
    if req.ignore_eos:
        extra["ignore_eos"] = True
    if req.return_tokens_as_token_ids:
        extra["return_tokens_as_token_ids"] = True
    return GenerationParams(
        max_tokens=max(1, max_tokens),
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=req.top_p,
        stop=req.stop_list(),
        seed=req.seed,
        logprobs=logprobs,
        top_logprobs=top,
        extra_body=extra,
    )


def _top_logprobs(value: int | None, param: str) -> int:
    top = value or 0
    if top > 20:
        raise APIError(
            400,
            f"Invalid '{param}': integer above maximum value. Expected a value <= 20, "
            f"but got {top} instead.",
            param=param,
            code="integer_above_max_value",
        )
    return top


# --------------------------------------------------------------------------- chat


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    ctx = _ctx(request)
    ctx.authorize(request)
    req = parse_body(ChatRequest, await read_json(request, ctx.settings.max_body_bytes))
    _check_common(ctx, req)
    top = _top_logprobs(req.top_logprobs, "top_logprobs")
    if top and not req.logprobs:
        raise APIError(
            400,
            "Invalid 'top_logprobs': 'logprobs' must be set to true if 'top_logprobs' is used.",
            param="top_logprobs",
            code="invalid_value",
        )
    limit_param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    limit = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    ctx.check_max_tokens(limit, limit_param)
    messages, after_result = openai_messages(req.messages)
    engine = ctx.engine
    grammar: dict[str, Any] = {}
    tools = openai_tools(req.tools, req.tool_choice) if req.tools else None
    if tools and after_result and req.tool_choice in (None, "auto"):
        tools = None  # the model has the result it asked for: it answers in text
    if tools:
        messages = with_tool_instructions(messages, tools)
        grammar["tool_call_schema"] = tool_schema(tools)
    elif (req.response_format or {}).get("type", "text") != "text":
        grammar["response_format"] = req.response_format

    def tokenize() -> _Prepared:
        ids = engine.encode_messages(messages, continue_final_message=req.continue_final_message)
        budget = limit if limit is not None else ctx.default_max_tokens(len(ids))
        params = _params(req, budget, logprobs=bool(req.logprobs), top=top, grammar=grammar)
        return engine.prepare(None, None, params, n=req.n, prompt_ids=ids)

    try:
        prepared = await off_loop(tokenize)
    except ApidistillError as exc:
        raise engine_error(exc) from None
    slot = ctx.admit("openai")
    rid = new_id("chatcmpl-")
    model = ctx.settings.served_model_name
    fp = engine.fingerprint
    if not req.stream:
        try:
            outs = await unless_disconnected(request, engine.run(prepared))
        except ApidistillError as exc:
            raise engine_error(exc) from None
        finally:
            slot.release()
        calls = _tool_calls(outs) if tools else None
        body = chat_response(rid, model, fp, outs, logprobs=bool(req.logprobs), tool_calls=calls)
        return JSONResponse(body, headers={"x-request-id": rid})
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    async def events() -> AsyncIterator[str]:
        created = int(time.time())

        def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> str:
            return sse(
                chat_chunk(
                    rid,
                    model,
                    fp,
                    choices,
                    created=created,
                    usage=usage,
                    with_usage_field=include_usage,
                )
            )

        outs: list[EngineOutput] = []
        try:
            for i in range(req.n):
                yield chunk([_chat_choice(i, {"role": "assistant", "content": ""}, None, None)])
            if tools:  # decoded whole under the grammar, then sent as tool_calls deltas
                outs = await engine.run(prepared)
                calls = _tool_calls(outs)
                for o in outs:
                    for delta, finish in tool_call_deltas(o, calls.get(o.index)):
                        yield chunk([_chat_choice(o.index, delta, None, finish)])
                if include_usage:
                    yield chunk([], usage_body(outs, req.n))
                yield "data: [DONE]\n\n"
                return
            async with contextlib.aclosing(engine.run_stream(prepared)) as stream:
                async for d in stream:
                    lps = chat_logprobs(d.logprobs) if req.logprobs and d.logprobs else None
                    if d.text or lps:
                        yield chunk([_chat_choice(d.index, {"content": d.text}, lps, None)])
                    if d.output is not None:
                        outs.append(d.output)
                        yield chunk([_chat_choice(d.index, {}, None, d.finish_reason)])
            if include_usage:
                yield chunk([], usage_body(outs, req.n))
            yield "data: [DONE]\n\n"
        except ApidistillError as exc:
            yield sse_error(engine_error(exc), "openai")
        finally:
            slot.release()

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={**SSE_HEADERS, "x-request-id": rid}
    )


def _tool_calls(outs: list[EngineOutput]) -> dict[int, list[dict[str, Any]]]:
    """OpenAI ``tool_calls`` of each choice whose grammar-decoded answer is a whole call."""
    calls: dict[int, list[dict[str, Any]]] = {}
    for o in outs:
        parsed = parse_call(o.text)
        if parsed is not None:
            name, args = parsed
            fn = {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}
            calls[o.index] = [{"id": call_id("call_"), "type": "function", "function": fn}]
    return calls


def _chat_choice(
    index: int, delta: dict[str, Any], logprobs: dict[str, Any] | None, finish: str | None
) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}


# --------------------------------------------------------------------------- completions


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    ctx = _ctx(request)
    ctx.authorize(request)
    req = parse_body(CompletionRequest, await read_json(request, ctx.settings.max_body_bytes))
    _check_common(ctx, req)
    top = _top_logprobs(req.logprobs, "logprobs")
    want_lp = req.logprobs is not None
    if req.max_tokens is not None and not (req.max_tokens == 0 and req.echo):
        ctx.check_max_tokens(req.max_tokens)
    prompts = req.prompts()
    if not prompts:
        raise APIError(400, "Invalid 'prompt': must not be empty.", param="prompt")
    engine = ctx.engine
    prepared: list[_Prepared] = []
    prompt_texts: list[str] = []

    def tokenize() -> None:
        for p in prompts:
            ids = engine.encode_prompt(p) if isinstance(p, str) else [int(t) for t in p]
            budget = (
                req.max_tokens if req.max_tokens is not None else ctx.default_max_tokens(len(ids))
            )
            params = _params(req, budget, logprobs=want_lp, top=top)
            prepared.append(
                engine.prepare(
                    None, None, params, n=req.n, echo=req.echo, prompt_ids=ids, max_tokens=budget
                )
            )
            prompt_texts.append(p if isinstance(p, str) else engine.tokenizer.decode(ids))

    try:
        await off_loop(tokenize)
    except ApidistillError as exc:
        raise engine_error(exc) from None
    slot = ctx.admit("openai")
    rid = new_id("cmpl-")
    model = ctx.settings.served_model_name
    fp = engine.fingerprint
    n = req.n

    def choice_of(k: int, out: EngineOutput) -> dict[str, Any]:
        text, lps = out.text, None
        if req.echo:
            text = prompt_texts[k] + out.text
        if want_lp:
            entries: list[tuple[str, TokenLogprob | None]] = []
            if req.echo and out.prompt_logprobs is not None and out.prompt_token_ids:
                first = engine.token_text(out.prompt_token_ids[0], req.return_tokens_as_token_ids)
                entries.append((first, None))
                entries.extend((lp.token, lp) for lp in out.prompt_logprobs[1:] if lp is not None)
            entries.extend((lp.token, lp) for lp in out.logprobs or [])
            lps = completion_logprobs(entries)
        return {
            "index": k * n + out.index,
            "text": text,
            "logprobs": lps,
            "finish_reason": out.finish_reason,
        }

    if not req.stream:
        try:
            work = asyncio.gather(*(engine.run(p) for p in prepared))
            results = await unless_disconnected(request, work)
        except ApidistillError as exc:
            raise engine_error(exc) from None
        finally:
            slot.release()
        choices, outs = [], []
        for k, group in enumerate(results):
            for out in group:
                choices.append(choice_of(k, out))
                out.index = k * n + out.index
                outs.append(out)
        body = completion_response(rid, model, fp, choices, outs, n)
        return JSONResponse(body, headers={"x-request-id": rid})
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    async def events() -> AsyncIterator[str]:
        created = int(time.time())

        def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> str:
            return sse(
                completion_chunk(
                    rid,
                    model,
                    fp,
                    choices,
                    created=created,
                    usage=usage,
                    with_usage_field=include_usage,
                )
            )

        outs: list[EngineOutput] = []
        offsets: dict[int, int] = {}
        try:
            if req.echo:
                for k in range(len(prepared)):
                    for j in range(n):
                        yield chunk([_text_choice(k * n + j, prompt_texts[k], None, None)])
            async for k, d in _merged([engine.run_stream(p) for p in prepared]):
                index = k * n + d.index
                lps = None
                if want_lp and d.logprobs:
                    pairs = [(lp.token, lp) for lp in d.logprobs]
                    lps = completion_logprobs(pairs, text_start=offsets.get(index, 0))
                    offsets[index] = offsets.get(index, 0) + sum(len(x.token) for x in d.logprobs)
                if d.text or lps:
                    yield chunk([_text_choice(index, d.text, lps, None)])
                if d.output is not None:
                    d.output.index = index
                    outs.append(d.output)
                    yield chunk([_text_choice(index, "", None, d.finish_reason)])
            if include_usage:
                yield chunk([], usage_body(outs, n))
            yield "data: [DONE]\n\n"
        except ApidistillError as exc:
            yield sse_error(engine_error(exc), "openai")
        finally:
            slot.release()

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={**SSE_HEADERS, "x-request-id": rid}
    )


def _text_choice(
    index: int, text: str, logprobs: dict[str, Any] | None, finish: str | None
) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


async def _merged(
    streams: list[AsyncIterator[StreamDelta]],
) -> AsyncIterator[tuple[int, StreamDelta]]:
    """Deltas of several streams as they come, tagged with the stream's position; closing
    this iterator closes (and so cancels) every stream."""
    if len(streams) == 1:
        async with contextlib.aclosing(streams[0]) as only:
            async for d in only:
                yield 0, d
        return
    queue: asyncio.Queue[tuple[int, StreamDelta | BaseException | None]] = asyncio.Queue()

    async def pump(k: int, stream: AsyncIterator[StreamDelta]) -> None:
        try:
            async with contextlib.aclosing(stream) as s:
                async for d in s:
                    await queue.put((k, d))
            await queue.put((k, None))
        except Exception as exc:
            await queue.put((k, exc))

    tasks = [asyncio.create_task(pump(k, s)) for k, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            k, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield k, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
