"""A loopback "OpenAI" teacher whose answers are real ``o200k_base`` tokens with top-20 logprobs.

The fault server (:mod:`apidistill.testing.fault_server`) answers with made-up word tokens;
a cross-tokenizer test needs what gpt-4o / gpt-4.1 / gpt-5 really send: the answer cut by
the ``o200k_base`` BPE (``bpe_openai``), every position with ``token``, ``logprob``,
``bytes`` (a list of ints) and ``top_logprobs`` of k ``{token, logprob, bytes}`` entries,
the sampled token first (temperature 0), alternatives that are real o200k tokens too, and
``usage.prompt_tokens`` counted the way OpenAI counts chat prompts (:func:`prompt_tokens`).
The envelope (``id``, ``object``, ``created``, ``system_fingerprint``, message fields,
``usage`` details) is :func:`apidistill.testing.provider_payloads.openai_chat_completion`'s,
so there is one definition of the documented shape.

What the teacher answers is a pure function of the request: the text given for the last
user turn in ``answers`` (e.g. a ticket's gold ``order_id: …\\nproduct: …``), else a few
deterministic words. ``max_completion_tokens`` cuts the token list (``finish_reason:
"length"``). Tokens that end inside a multi-byte character carry their exact ``bytes`` and a
``token`` text with U+FFFD, as OpenAI's do.

``usage.prompt_tokens`` is counted here, from the request body as it arrived, with
``bpe_openai`` directly and OpenAI's documented rule (the cookbook's "How to count tokens with
tiktoken", ``num_tokens_from_messages``), deliberately not with apidistill's own counter
(:mod:`apidistill.costs.tokens`): tests compare ``apidistill estimate`` with what this
teacher bills, and a shared counter would make that comparison circular.

Reasoning models (``o1``, ``o3``, ``o4-mini``, ``gpt-5`` and their variants) refuse what OpenAI's
reasoning models refuse, with the documented 400 bodies: ``logprobs`` / ``top_logprobs``
(``unsupported_parameter``) and a ``temperature`` other than 1 (``unsupported_value``); their
``usage.completion_tokens_details.reasoning_tokens`` is non-zero where ``max_completion_tokens``
leaves room (it bounds visible and reasoning tokens together, as OpenAI documents), as billed.

The same answers are served in Anthropic's Messages API shape at ``POST /v1/messages``
(an ``x-api-key`` or ``Authorization: Bearer`` key and ``anthropic-version`` required, ``max_tokens`` required, a
``message`` object with ``content`` text blocks, ``stop_reason`` and ``usage`` with
``input_tokens``, ``output_tokens`` and the cache counters). Anthropic returns no logprobs and
its tokenizer is not public: token counts there use ``o200k_base`` as a stand-in.

Run: ``python -m apidistill.testing.o200k_teacher --port 0 --answers answers.json`` (a JSON
object: user text → answer). Tests use :class:`O200kTeacherProcess`. ``GET /__stats``
returns how many chat requests arrived, the bodies' generation settings and the
``usage.prompt_tokens`` of each answer (``prompt_tokens``, in arrival order).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from aiohttp import web

from apidistill.testing import provider_payloads as pp
from apidistill.testing.loopback import LoopbackServerProcess

__all__ = [
    "ENCODING",
    "O200kTeacherProcess",
    "answer_text",
    "anthropic_message",
    "build_app",
    "chat_completion",
    "is_reasoning_model",
    "o200k_tokens",
    "prompt_tokens",
]

ENCODING = "o200k_base"
MAX_TOP_LOGPROBS = 20  # OpenAI's documented limit for chat models
# Alternatives are drawn from the o200k tokens of this text: words, digit groups (o200k keeps
# up to three digits in one token, which no single-digit student vocabulary has) and a few
# non-ASCII characters (multi-byte tokens).
_ALTERNATIVES_TEXT = (
    "order_id: order ID number Order product: Product item name the a of for and to is "
    "0 1 2 3 4 5 6 7 8 9 10 12 42 100 250 365 512 777 908 2024 - # / Kettle Lamp Bottle "
    "Cover Chair Mug Jacket Speaker Board café naïve – — € ü"
)


@lru_cache(maxsize=1)
def _encoding() -> Any:
    import bpe_openai

    return bpe_openai.get_encoding(ENCODING)


@lru_cache(maxsize=1)
def _alternative_pool() -> tuple[bytes, ...]:
    enc = _encoding()
    seen: dict[bytes, None] = {}
    for tid in enc.encode_ordinary(_ALTERNATIVES_TEXT):
        seen.setdefault(enc.decode_single_token_bytes(tid), None)
    return tuple(seen)


def o200k_tokens(text: str) -> list[bytes]:
    """``text`` as ``o200k_base`` token bytes (ordinary text: no special tokens)."""
    enc = _encoding()
    return [enc.decode_single_token_bytes(t) for t in enc.encode_ordinary(text)]


# OpenAI's chat prompt overhead, from the cookbook's ``num_tokens_from_messages`` (gpt-4o,
# gpt-4o-mini, gpt-4, gpt-3.5-turbo-0613 and later): every message is framed by 3 tokens
# (``<|start|>{role}<|message|>…<|end|>``), a ``name`` costs 1 more, and every reply is primed
# with 3 (``<|start|>assistant<|message|>``).
_PER_MESSAGE = 3
_PER_NAME = 1
_REPLY_PRIMING = 3


def _text_of(content: Any) -> str:
    """A message's text: a string, or the ``text`` of each part of a content array."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text") or "")
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """``usage.prompt_tokens`` of a chat request as OpenAI documents it: per message 3 tokens
    plus the tokens of its role, content (and name, plus 1), then 3 for the reply's priming;
    every text encoded with ``o200k_base`` as ordinary text (no special tokens)."""
    enc = _encoding()
    n = _REPLY_PRIMING
    for m in messages:
        n += _PER_MESSAGE
        n += len(enc.encode_ordinary(str(m.get("role") or "")))
        n += len(enc.encode_ordinary(_text_of(m.get("content"))))
        if isinstance(m.get("name"), str):
            n += len(enc.encode_ordinary(m["name"])) + _PER_NAME
    return n


def _last_user(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages") or []):
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            return m["content"]
    return ""


def answer_text(body: dict[str, Any], answers: dict[str, str] | None = None) -> str:
    """The full (uncut) answer: ``answers[last user text]``, else deterministic words."""
    user = _last_user(body)
    if answers and user in answers:
        return answers[user]
    words, _ = pp.answer_tokens(pp.input_text(body), 1 << 20)
    return "".join(words)


def _entry(tok: bytes, logprob: float) -> dict[str, Any]:
    return {
        "token": tok.decode("utf-8", errors="replace"),
        "logprob": logprob,
        "bytes": list(tok),
    }


def _position(tok: bytes, k: int, seed: str) -> dict[str, Any]:
    """One ``logprobs.content`` entry: the sampled token (the most likely one: temperature
    0) and ``k`` top entries, it first, then distinct o200k alternatives with decreasing
    logprobs that leave some probability to the tail."""
    rng = random.Random(seed)
    p0 = 0.55 + 0.44 * rng.random()
    lp0 = round(math.log(p0), 6)
    entry = {**_entry(tok, lp0), "top_logprobs": []}
    if k:
        pool = [b for b in _alternative_pool() if b != tok]
        alts = rng.sample(pool, k - 1)
        top = [_entry(tok, lp0)]
        for j, alt in enumerate(alts):  # p_j = (1 - p0) · 0.4 · 0.5^j: Σ < 0.8 (1 - p0)
            top.append(_entry(alt, round(math.log((1 - p0) * 0.4 * 0.5**j), 6)))
        entry["top_logprobs"] = top
    return entry


def chat_completion(body: dict[str, Any], answers: dict[str, str] | None = None) -> dict[str, Any]:
    """A ``chat.completion`` object answering ``body`` with o200k tokens (see the module
    docstring); the envelope is :func:`provider_payloads.openai_chat_completion`'s."""
    out = pp.openai_chat_completion({**body, "logprobs": False})
    text = answer_text(body, answers)
    tokens = o200k_tokens(text)
    limit = pp._max_tokens(body)
    finish = "stop"
    if len(tokens) > limit:
        tokens, finish = tokens[:limit], "length"
    content = b"".join(tokens).decode("utf-8", errors="replace")
    logprobs = None
    if body.get("logprobs"):
        k = int(body.get("top_logprobs") or 0)
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
        logprobs = {
            "content": [_position(t, k, f"{digest}:{i}") for i, t in enumerate(tokens)],
            "refusal": None,
        }
    n = max(1, int(body.get("n") or 1))
    template = out["choices"][0]
    out["choices"] = [
        {
            **template,
            "index": i,
            "message": {**template["message"], "content": content},
            "logprobs": logprobs,
            "finish_reason": finish,
        }
        for i in range(n)
    ]
    usage = out["usage"]
    usage["prompt_tokens"] = prompt_tokens(
        [m for m in body.get("messages") or [] if isinstance(m, dict)]
    )
    usage["completion_tokens"] = len(tokens) * n
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return out


# --------------------------------------------------------------------------- server


_REASONING = re.compile(r"^(o1|o3|o4-mini|gpt-5)(-[a-z0-9-]+)?$")
_REASONING_TOKENS = 64  # hidden reasoning per answer, within max_completion_tokens


def is_reasoning_model(model: Any) -> bool:
    """OpenAI's reasoning models: no logprobs, fixed sampling (``gpt-5-chat`` is not one)."""
    return isinstance(model, str) and bool(_REASONING.match(model)) and "chat" not in model


def _reasoning_refusal(body: dict[str, Any]) -> dict[str, Any] | None:
    """OpenAI's 400 body for what a reasoning model does not accept, else None."""
    for param in ("logprobs", "top_logprobs"):
        if body.get(param) is not None:
            return pp.openai_error(
                f"Unsupported parameter: '{param}' is not supported with this model.",
                code="unsupported_parameter",
                param=param,
            )
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        return pp.openai_error(
            f"Unsupported value: 'temperature' does not support {temperature} with this model. "
            "Only the default (1) value is supported.",
            code="unsupported_value",
            param="temperature",
        )
    return None


def _check(body: Any) -> str | None:
    """What OpenAI would refuse with a 400, for the fields this teacher reads."""
    if not isinstance(body, dict):
        return "the request body must be a JSON object"
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        return "'messages' must be a non-empty array"
    if body.get("stream"):
        return "this test teacher does not stream; send stream: false"
    k = body.get("top_logprobs")
    if k is not None:
        if not body.get("logprobs"):
            return "top_logprobs requires logprobs to be true"
        if not isinstance(k, int) or not 0 <= k <= MAX_TOP_LOGPROBS:
            return f"top_logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}"
    return None


async def _chat(request: web.Request) -> web.Response:
    state = request.app["state"]
    if not request.headers.get("Authorization", "").startswith("Bearer "):
        err = pp.openai_error("You didn't provide an API key.", code="invalid_api_key")
        return web.json_response(err, status=401)
    try:
        body = json.loads(await request.read())
    except ValueError as exc:
        return web.json_response(pp.openai_error(f"invalid JSON body: {exc}"), status=400)
    problem = _check(body)
    if problem is not None:
        return web.json_response(pp.openai_error(problem), status=400)
    if is_reasoning_model(body.get("model")):
        refusal = _reasoning_refusal(body)
        if refusal is not None:
            state["refused"].append(refusal["error"]["param"])
            return web.json_response(refusal, status=400)
    state["requests"].append(
        {k: body.get(k) for k in ("model", "logprobs", "top_logprobs", "max_completion_tokens")}
    )
    answer = chat_completion(body, state["answers"])
    if is_reasoning_model(body.get("model")):
        # OpenAI: max_completion_tokens bounds "visible output tokens and reasoning tokens"
        # together, so hidden reasoning only fills what the visible answer left of it
        usage, n = answer["usage"], len(answer["choices"])
        room = pp._max_tokens(body) * n - usage["completion_tokens"]
        reasoning = max(0, min(_REASONING_TOKENS * n, room))
        usage["completion_tokens_details"]["reasoning_tokens"] = reasoning
        usage["completion_tokens"] += reasoning
        usage["total_tokens"] += reasoning
    state["prompt_tokens"].append(answer["usage"]["prompt_tokens"])
    return web.json_response(answer)


def anthropic_message(body: dict[str, Any], answers: dict[str, str] | None = None) -> dict:
    """A Messages API ``message`` answering ``body`` with the same text as the chat route;
    the envelope is :func:`provider_payloads.anthropic_message`'s."""
    out = pp.anthropic_message(body)
    text = answer_text(body, answers)
    tokens = o200k_tokens(text)
    limit = int(body["max_tokens"])
    stop = "end_turn"
    if len(tokens) > limit:
        tokens, stop = tokens[:limit], "max_tokens"
    out["content"] = [{"type": "text", "text": b"".join(tokens).decode("utf-8", errors="replace")}]
    out["stop_reason"] = stop
    system = body.get("system")
    turns = [{"role": "system", "content": system}] if isinstance(system, str) else []
    turns += [m for m in body.get("messages") or [] if isinstance(m, dict)]
    out["usage"]["input_tokens"] = prompt_tokens(turns)
    out["usage"]["output_tokens"] = len(tokens)
    out["usage"]["service_tier"] = "standard"
    return out


def _anthropic_check(request: web.Request, body: Any) -> tuple[int, str, str] | None:
    """(status, error type, message) for what the Messages API refuses, else None."""
    bearer = request.headers.get("Authorization", "").startswith("Bearer ")
    if not (request.headers.get("x-api-key") or bearer):  # the 2.x SDK sends a Bearer key
        return 401, "authentication_error", "x-api-key header is required"
    if not request.headers.get("anthropic-version"):
        return 400, "invalid_request_error", "anthropic-version: header is required"
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return 400, "invalid_request_error", "messages: Field required"
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        return 400, "invalid_request_error", "max_tokens: Field required"
    for key in ("logprobs", "top_logprobs"):
        if key in body:
            return 400, "invalid_request_error", f"{key}: Extra inputs are not permitted"
    return None


async def _messages(request: web.Request) -> web.Response:
    state = request.app["state"]
    try:
        body = json.loads(await request.read())
    except ValueError as exc:
        body = exc
    problem = _anthropic_check(request, body)
    if problem is not None:
        status, kind, message = problem
        return web.json_response(pp.anthropic_error(kind, message), status=status)
    state["requests"].append(
        {"model": body.get("model"), "max_tokens": body.get("max_tokens"), "api": "messages"}
    )
    answer = anthropic_message(body, state["answers"])
    state["prompt_tokens"].append(answer["usage"]["input_tokens"])
    return web.json_response(answer)


async def _stats(request: web.Request) -> web.Response:
    state = request.app["state"]
    reqs = state["requests"]
    return web.json_response(
        {
            "received": len(reqs),
            "requests": reqs,
            "prompt_tokens": state["prompt_tokens"],
            "refused": state["refused"],
        }
    )


def build_app(answers: dict[str, str] | None = None) -> web.Application:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app["state"] = {
        "answers": dict(answers or {}),
        "requests": [],
        "prompt_tokens": [],
        "refused": [],
    }
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/v1/messages", _messages)
    app.router.add_get("/__stats", _stats)
    return app


async def _serve(app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app, access_log=None, handle_signals=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    print(f"o200k teacher listening on http://{host}:{runner.addresses[0][1]}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8091, help="0 picks a free port")
    ap.add_argument("--answers", type=Path, help="JSON object: last user text → answer text")
    args = ap.parse_args(argv)
    answers = json.loads(args.answers.read_text(encoding="utf-8")) if args.answers else None
    _encoding()  # load the BPE before saying we listen
    asyncio.run(_serve(build_app(answers), args.host, args.port))


class O200kTeacherProcess(LoopbackServerProcess):
    """The teacher in its own process, like a real provider:
    ``with O200kTeacherProcess(answers_file) as t: t.base_url``."""

    module = "apidistill.testing.o200k_teacher"
    label = "o200k teacher"

    def __init__(self, answers: str | Path | None = None) -> None:
        super().__init__()
        self.answers = answers

    def args(self) -> list[str]:
        return [] if self.answers is None else ["--answers", str(self.answers)]

    def start(self, timeout_s: float = 60.0) -> O200kTeacherProcess:
        return super().start(timeout_s)


if __name__ == "__main__":
    main()
