"""A loopback teacher speaking both OpenAI chat and Anthropic Messages, for the proxy tests.

``POST /v1/chat/completions`` and ``POST /v1/messages`` answer deterministically
(:mod:`apidistill.testing.provider_payloads`) in the documented shapes, as JSON or as an SSE
stream: OpenAI ``chat.completion.chunk`` objects ending with ``data: [DONE]`` (a usage-only
chunk when ``stream_options.include_usage``), Anthropic ``message_start``,
``content_block_start``, ``ping``, ``content_block_delta`` (``text_delta`` /
``input_json_delta``), ``content_block_stop``, ``message_delta``, ``message_stop``. With
``tools`` (and no ``tool_choice`` of ``none``) the answer is a call of the first tool.
A model named ``missing-model`` gets the provider's 404 error envelope.

``GET /__last`` returns the last request's body and auth headers (what the proxy sent
upstream); ``GET /__stats`` counts answers. ``--latency-ms`` delays each answer,
``--stream-delay-ms`` each SSE event after the first.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
from typing import Any

from aiohttp import web

from apidistill.testing import provider_payloads as pp
from apidistill.testing.loopback import LoopbackServerProcess

__all__ = ["ProxyTeacherProcess", "build_app", "tool_arguments"]


def tool_arguments(body: dict[str, Any]) -> dict[str, Any]:
    """The arguments of the tool call answering ``body`` (a pure function of its input)."""
    digest = hashlib.sha256(pp.input_text(body).encode()).hexdigest()
    return {"city": f"city-{digest[:6]}", "days": int(digest[6:8], 16) % 7 + 1}


def _wants_tool(body: dict[str, Any]) -> bool:
    choice = body.get("tool_choice")
    none = choice == "none" or (isinstance(choice, dict) and choice.get("type") == "none")
    return bool(body.get("tools")) and not none


def _tool_name(body: dict[str, Any]) -> str:
    tool = body["tools"][0]
    return tool.get("name") or (tool.get("function") or {}).get("name") or "tool"


def _sse(obj: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return (head + "data: " + json.dumps(obj) + "\n\n").encode()


def openai_answer(body: dict[str, Any]) -> dict[str, Any]:
    answer = pp.openai_chat_completion(body)
    if _wants_tool(body):
        digest = answer["id"].removeprefix("chatcmpl-")
        msg = answer["choices"][0]["message"]
        msg["content"] = None
        msg["tool_calls"] = [{
            "id": f"call_{digest[:16]}", "type": "function",
            "function": {"name": _tool_name(body), "arguments": json.dumps(tool_arguments(body))},
        }]  # fmt: skip
        answer["choices"][0]["finish_reason"] = "tool_calls"
        answer["choices"][0]["logprobs"] = None
    return answer


def openai_chunks(body: dict[str, Any], answer: dict[str, Any]) -> list[bytes]:
    base = {k: answer[k] for k in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"
    choice = answer["choices"][0]

    def chunk(delta: dict[str, Any], lp: Any = None, finish: str | None = None) -> bytes:
        return _sse({**base, "choices": [
            {"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}
        ]})  # fmt: skip

    out = []
    calls = choice["message"].get("tool_calls")
    if calls:
        call = calls[0]
        args = call["function"]["arguments"]
        out.append(chunk({"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": call["id"], "type": "function",
             "function": {"name": call["function"]["name"], "arguments": ""}}]}))  # fmt: skip
        for i in range(0, len(args), 7):
            out.append(
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[i : i + 7]}}]})
            )
    else:
        out.append(chunk({"role": "assistant", "content": "", "refusal": None}))
        entries = (choice.get("logprobs") or {}).get("content")
        tokens = pp.answer_tokens(pp.input_text(body), pp._max_tokens(body))[0]
        for i, tok in enumerate(tokens):
            lp = {"content": [entries[i]], "refusal": None} if entries else None
            out.append(chunk({"content": tok}, lp))
    out.append(chunk({}, None, choice["finish_reason"]))
    if (body.get("stream_options") or {}).get("include_usage"):
        out.append(_sse({**base, "choices": [], "usage": answer["usage"]}))
    out.append(b"data: [DONE]\n\n")
    return out


def anthropic_answer(body: dict[str, Any]) -> dict[str, Any]:
    answer = pp.anthropic_message(body)
    if _wants_tool(body):
        answer["content"] = [{
            "type": "tool_use", "id": "toolu_" + answer["id"][4:28], "name": _tool_name(body),
            "input": tool_arguments(body),
        }]  # fmt: skip
        answer["stop_reason"] = "tool_use"
    return answer


def anthropic_events(answer: dict[str, Any]) -> list[bytes]:
    usage = answer["usage"]
    start = {**answer, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**usage, "output_tokens": 1}}  # fmt: skip
    out = [_sse({"type": "message_start", "message": start}, "message_start")]
    for i, block in enumerate(answer["content"]):
        if block["type"] == "text":
            first, deltas = (
                {"type": "text", "text": ""},
                [{"type": "text_delta", "text": w} for w in block["text"].split(" ") if w],
            )
            deltas = [{**d, "text": (" " if j else "") + d["text"]} for j, d in enumerate(deltas)]
        else:
            first = {**block, "input": {}}
            args = json.dumps(block["input"])
            deltas = [{"type": "input_json_delta", "partial_json": ""}] + [
                {"type": "input_json_delta", "partial_json": args[j : j + 5]}
                for j in range(0, len(args), 5)
            ]
        out.append(_sse({"type": "content_block_start", "index": i, "content_block": first},
                        "content_block_start"))  # fmt: skip
        if i == 0:
            out.append(_sse({"type": "ping"}, "ping"))
        for d in deltas:
            out.append(_sse({"type": "content_block_delta", "index": i, "delta": d},
                            "content_block_delta"))  # fmt: skip
        out.append(_sse({"type": "content_block_stop", "index": i}, "content_block_stop"))
    out.append(_sse({
        "type": "message_delta",
        "delta": {"stop_reason": answer["stop_reason"], "stop_sequence": None},
        "usage": {"output_tokens": usage["output_tokens"]},
    }, "message_delta"))  # fmt: skip
    out.append(_sse({"type": "message_stop"}, "message_stop"))
    return out


async def _handle(request: web.Request, api: str) -> web.StreamResponse:
    state = request.app["state"]
    raw = await request.read()
    try:
        body = json.loads(raw)
    except ValueError:
        err = pp.anthropic_error("invalid_request_error", "body is not JSON")
        return web.json_response(
            err if api == "anthropic" else pp.openai_error("bad json"), status=400
        )
    state["last"] = {
        "body": body,
        "authorization": request.headers.get("authorization"),
        "x-api-key": request.headers.get("x-api-key"),
        "query": dict(request.query),
    }
    state["received"] += 1
    if body.get("model") == "missing-model":
        msg = f"The model `{body['model']}` does not exist"
        if api == "anthropic":
            return web.json_response(pp.anthropic_error("not_found_error", msg), status=404)
        return web.json_response(pp.openai_error(msg, code="model_not_found"), status=404)
    if state["latency_ms"]:
        # a real API's latency varies; jitter keeps closed-loop clients from moving in lockstep
        seq = request.headers.get(SEQ_HEADER)
        draw = _seq_draw(seq) if seq else state["rng"].random()
        spread = state["jitter"] * (2 * draw - 1)
        await asyncio.sleep(state["latency_ms"] * (1 + spread) / 1000)
    answer = anthropic_answer(body) if api == "anthropic" else openai_answer(body)
    headers = {"x-request-id": "req_" + answer["id"][-12:]}
    if not body.get("stream"):
        state["answered"] += 1
        return web.json_response(answer, headers=headers)
    resp = web.StreamResponse(status=200, headers=headers)
    resp.content_type = "text/event-stream"
    parts = anthropic_events(answer) if api == "anthropic" else openai_chunks(body, answer)
    try:
        await resp.prepare(request)
        for i, part in enumerate(parts):
            if i and state["stream_delay_ms"]:
                await asyncio.sleep(state["stream_delay_ms"] / 1000)
            await resp.write(part)
        await resp.write_eof()
    except ConnectionResetError:  # the client left mid-stream (aiohttp's is a subclass)
        return resp
    state["answered"] += 1
    return resp


SEQ_HEADER = "x-bench-seq"


def _seq_draw(seq: str) -> float:
    """A uniform draw in [0, 1) fixed by the request's sequence number: the benchmark's arms
    send the same numbers, so each arm's requests wait the same delays and the difference of
    their latency percentiles is the proxy's, not the luck of the draw (at 256 clients a
    free draw moves the median of a ±50% spread by ~2 ms, the size of the goal)."""
    digest = hashlib.sha256(seq.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def build_app(
    latency_ms: float = 0.0, stream_delay_ms: float = 0.0, jitter: float = 0.0
) -> web.Application:
    """``latency_ms`` delays each answer by ``latency_ms × (1 ± jitter)``, drawn uniformly from
    a seeded generator (the same sequence every run), or from the request's ``x-bench-seq``
    header when it has one (:func:`_seq_draw`)."""
    import random

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app["state"] = {"last": None, "received": 0, "answered": 0, "latency_ms": latency_ms,
                    "stream_delay_ms": stream_delay_ms, "jitter": jitter,
                    "rng": random.Random(0)}  # fmt: skip

    async def chat(request: web.Request) -> web.StreamResponse:
        return await _handle(request, "openai")

    async def messages(request: web.Request) -> web.StreamResponse:
        return await _handle(request, "anthropic")

    async def last(request: web.Request) -> web.Response:
        return web.json_response(request.app["state"]["last"])

    async def stats(request: web.Request) -> web.Response:
        st = request.app["state"]
        return web.json_response({"received": st["received"], "answered": st["answered"]})

    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/messages", messages)
    app.router.add_get("/__last", last)
    app.router.add_get("/__stats", stats)
    return app


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--stream-delay-ms", type=float, default=0.0)
    ap.add_argument("--jitter", type=float, default=0.0, help="latency spread, 0-1 (uniform ±)")
    args = ap.parse_args(argv)

    async def run() -> None:
        runner = web.AppRunner(
            build_app(args.latency_ms, args.stream_delay_ms, args.jitter),
            access_log=None,
            handle_signals=True,
        )
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", args.port, backlog=1024)
        await site.start()
        port = runner.addresses[0][1]
        print(f"proxy teacher listening on http://127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


class ProxyTeacherProcess(LoopbackServerProcess):
    module = "apidistill.testing.proxy_teacher"
    label = "proxy teacher"

    def __init__(
        self, latency_ms: float = 0.0, stream_delay_ms: float = 0.0, jitter: float = 0.0
    ) -> None:
        super().__init__()
        self.latency_ms, self.stream_delay_ms, self.jitter = latency_ms, stream_delay_ms, jitter

    def args(self) -> list[str]:
        return [
            "--latency-ms",
            str(self.latency_ms),
            "--stream-delay-ms",
            str(self.stream_delay_ms),
            "--jitter",
            str(self.jitter),
        ]

    def last(self) -> dict[str, Any]:
        with self._client() as c:
            return c.get("/__last").raise_for_status().json()


if __name__ == "__main__":
    main()
