"""OpenAI request bodies (chat + legacy completions) and the response/chunk builders.

Field names, defaults and ranges follow the OpenAI API reference; vLLM's extra body fields
``top_k``, ``ignore_eos``, ``return_tokens_as_token_ids`` and ``continue_final_message`` are
accepted too, since clients written against vLLM send them. Unknown fields are ignored (as
vLLM does); known fields this server cannot honour (penalties, logit_bias, suffix; tools and
tool messages on a backend without grammars) are refused with a 400 rather than silently changing the answer.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from apidistill.records import TokenLogprob
from apidistill.serve.engine import EngineOutput

__all__ = [
    "ChatRequest",
    "CompletionRequest",
    "SamplingFields",
    "chat_chunk",
    "chat_logprobs",
    "chat_response",
    "completion_chunk",
    "completion_logprobs",
    "completion_response",
    "tool_call_deltas",
    "usage_body",
]

# Characters of a call's arguments per streamed delta (the call is decoded whole first).
ARGUMENT_FRAGMENT = 8


class _Body(BaseModel):
    """Strict types, as the real APIs check them: ``"logprobs": "yes"`` or ``"n": "2"`` is a
    400 naming the field, not silently read as true / 2 (an int is still a valid float)."""

    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(_Body):
    type: Literal["text"]
    text: str


class FunctionCallIn(_Body):
    name: str
    arguments: str


class ToolCallIn(_Body):
    """An earlier call sent back in an assistant message (``arguments`` is a JSON string)."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(_Body):
    """``content`` may be null only on an assistant message with ``tool_calls`` (checked
    in tool_history.openai_messages, which names the message); ``tool`` messages answer
    the call named by ``tool_call_id``."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)

    def has_tool_turn(self) -> bool:
        return self.role == "tool" or bool(self.tool_calls)


class StreamOptions(_Body):
    include_usage: bool = False


class SamplingFields(_Body):
    """Fields chat and legacy completions share."""

    model: str
    n: int = Field(1, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # vLLM extras
    top_k: int | None = None
    ignore_eos: bool = False
    return_tokens_as_token_ids: bool = False

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 16:
            raise ValueError("at most 16 stop sequences")
        return v

    def stop_list(self) -> list[str] | None:
        if self.stop is None:
            return None
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def unsupported(self, *, grammar: bool = False) -> tuple[str, str] | None:
        """(param, why) for a known field this server does not implement."""
        if self.presence_penalty:
            return "presence_penalty", "presence_penalty is not supported; leave it at 0"
        if self.frequency_penalty:
            return "frequency_penalty", "frequency_penalty is not supported; leave it at 0"
        if self.logit_bias:
            return "logit_bias", "logit_bias is not supported"
        return None


class ChatRequest(SamplingFields):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0)
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None
    continue_final_message: bool = False

    def unsupported(self, *, grammar: bool = False) -> tuple[str, str] | None:
        """``grammar``: the backend decodes under a grammar (llama.cpp), so tools and JSON
        response formats are honoured; the transformers engine refuses them."""
        if self.functions:
            return "functions", "the legacy 'functions' field is not supported; send 'tools'"
        if self.tools and not grammar:
            return "tools", (
                "tool calling is not supported by this server's backend "
                "(serve a GGUF with --backend llamacpp)"
            )
        turn = next((i for i, m in enumerate(self.messages) if m.has_tool_turn()), None)
        if turn is not None and not grammar:
            return f"messages[{turn}]", (
                "tool calls and tool messages are not supported by this server's backend "
                "(serve a GGUF with --backend llamacpp)"
            )
        fmt = (self.response_format or {}).get("type", "text")
        if fmt != "text" and not grammar:
            return "response_format", (
                f"response_format {fmt!r} is not supported by this server's backend "
                "(only 'text'; serve a GGUF with --backend llamacpp for JSON)"
            )
        return super().unsupported()


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = Field(None, ge=0)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]

    def unsupported(self, *, grammar: bool = False) -> tuple[str, str] | None:
        if self.suffix:
            return "suffix", "suffix (insertion) is not supported"
        if self.best_of is not None and self.best_of != self.n:
            return "best_of", "best_of other than n is not supported"
        return super().unsupported()


# --------------------------------------------------------------------------- responses


def usage_body(outs: list[EngineOutput], n: int) -> dict[str, Any]:
    """Prompt tokens once per prompt (choice ``index // n``); completion tokens summed."""
    prompts: dict[int, tuple[int, int]] = {}
    for o in outs:
        prompts[o.index // max(1, n)] = (o.prompt_tokens, o.cached_tokens)
    prompt = sum(p for p, _ in prompts.values())
    cached = sum(c for _, c in prompts.values())
    completion = sum(o.completion_tokens for o in outs)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _entry(lp: TokenLogprob) -> dict[str, Any]:
    return {"token": lp.token, "logprob": lp.logprob, "bytes": lp.bytes}


def chat_logprobs(lps: list[TokenLogprob] | None) -> dict[str, Any] | None:
    if lps is None:
        return None
    return {
        "content": [{**_entry(lp), "top_logprobs": [_entry(t) for t in lp.top]} for lp in lps],
        "refusal": None,
    }


def _chat_choice(
    o: EngineOutput, logprobs: bool, calls: list[dict[str, Any]] | None
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": o.text, "refusal": None}
    finish: str = o.finish_reason
    if calls:  # the answer was a tool call: OpenAI puts it here, with no text content
        message = {**message, "content": None, "tool_calls": calls}
        finish = "tool_calls"
    return {
        "index": o.index,
        "message": message,
        "logprobs": chat_logprobs(o.logprobs) if logprobs else None,
        "finish_reason": finish,
    }


def chat_response(
    rid: str,
    model: str,
    fingerprint: str,
    outs: list[EngineOutput],
    *,
    logprobs: bool,
    tool_calls: dict[int, list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """``tool_calls``: per choice index, the calls its answer made (see tool_calls.py)."""
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [
            _chat_choice(o, logprobs, tool_calls[o.index] if tool_calls else None) for o in outs
        ],
        "usage": usage_body(outs, n=len(outs)),  # one prompt, n choices
    }


def _stream_chunk(
    obj: str,
    rid: str,
    model: str,
    fingerprint: str,
    choices: list[dict[str, Any]],
    *,
    created: int,
    usage: dict[str, Any] | None = None,
    with_usage_field: bool = False,
) -> dict[str, Any]:
    """One streamed chunk; chat and legacy completions differ only in ``object``. The
    ``usage`` key is present (null until the last chunk) only when the client asked for it
    with ``stream_options.include_usage``."""
    body: dict[str, Any] = {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": choices,
    }
    if with_usage_field:
        body["usage"] = usage
    return body


#: ``chat_chunk(rid, model, fingerprint, choices, *, created, usage=None, with_usage_field=False)``
chat_chunk = partial(_stream_chunk, "chat.completion.chunk")


def tool_call_deltas(
    out: EngineOutput, calls: list[dict[str, Any]] | None
) -> list[tuple[dict[str, Any], str | None]]:
    """The (delta, finish_reason) pairs of one choice's stream after its role chunk, as
    OpenAI streams a tool call: the call's index, id, type and name with empty arguments,
    then the arguments in fragments, then ``finish_reason "tool_calls"``. An answer cut
    short before its call closed (``max_tokens``) streams as text, as stream=false returns
    it."""
    if not calls:
        text = [({"content": out.text}, None)] if out.text else []
        return [*text, ({}, out.finish_reason)]
    deltas: list[tuple[dict[str, Any], str | None]] = []
    for k, call in enumerate(calls):
        fn = call["function"]
        head = {"name": fn["name"], "arguments": ""}
        deltas.append(
            ({"tool_calls": [{"index": k, "id": call["id"], "type": "function", "function": head}]},
             None)
        )  # fmt: skip
        args = fn["arguments"]
        for at in range(0, len(args), ARGUMENT_FRAGMENT):
            piece = {"arguments": args[at : at + ARGUMENT_FRAGMENT]}
            deltas.append(({"tool_calls": [{"index": k, "function": piece}]}, None))
    deltas.append(({}, "tool_calls"))
    return deltas


def completion_logprobs(
    entries: list[tuple[str, TokenLogprob | None]], *, text_start: int = 0
) -> dict[str, Any]:
    """Legacy completions logprobs: parallel lists over (token text, logprob entry) pairs.
    An entry of ``None`` (the first echoed prompt token, which has no context) reports its
    token with a null logprob. ``text_offset`` counts characters into the returned text."""
    tokens: list[str] = []
    token_lps: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    offsets: list[int] = []
    at = text_start
    for text, lp in entries:
        tokens.append(text)
        token_lps.append(None if lp is None else lp.logprob)
        tops.append(None if lp is None else {t.token: t.logprob for t in lp.top})
        offsets.append(at)
        at += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": token_lps,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def completion_response(
    rid: str,
    model: str,
    fingerprint: str,
    choices: list[dict[str, Any]],
    outs: list[EngineOutput],
    n: int,
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": choices,
        "usage": usage_body(outs, n),
    }


#: The legacy completions chunk; the same arguments as :data:`chat_chunk`.
completion_chunk = partial(_stream_chunk, "text_completion")
