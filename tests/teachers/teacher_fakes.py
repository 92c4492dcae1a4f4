"""A fault-injecting loopback provider (aiohttp, in the test's own event loop).

It answers OpenAI ``/v1/chat/completions`` + ``/v1/completions`` and Anthropic
``/v1/messages`` with the documented payloads of :mod:`apidistill.testing.provider_payloads`,
unless the test queued a fault: a status with headers, a connection reset after the request
was read, a truncated body, a malformed 200, a delay or a verbatim payload.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from apidistill.testing import provider_payloads as pp

OPENAI_LIMIT_HEADERS = {
    "x-ratelimit-limit-requests": "500",
    "x-ratelimit-remaining-requests": "499",
    "x-ratelimit-reset-requests": "120ms",
    "x-ratelimit-limit-tokens": "30000",
    "x-ratelimit-remaining-tokens": "29000",
    "x-ratelimit-reset-tokens": "1m2.5s",
}


ANTHROPIC_LIMIT_HEADERS = {
    "anthropic-ratelimit-requests-limit": "50",
    "anthropic-ratelimit-requests-remaining": "49",
    "anthropic-ratelimit-requests-reset": "2999-01-01T00:00:00Z",
    "anthropic-ratelimit-tokens-limit": "90000",
    "anthropic-ratelimit-tokens-remaining": "80000",
    "anthropic-ratelimit-tokens-reset": "2999-01-01T00:00:00Z",
    "anthropic-ratelimit-input-tokens-limit": "80000",
    "anthropic-ratelimit-input-tokens-remaining": "70000",
    "anthropic-ratelimit-input-tokens-reset": "2999-01-01T00:00:00Z",
    "anthropic-ratelimit-output-tokens-limit": "10000",
    "anthropic-ratelimit-output-tokens-remaining": "9000",
    "anthropic-ratelimit-output-tokens-reset": "2999-01-01T00:00:00Z",
}


@dataclass
class Fault:
    kind: str  # status | reset | truncate | malformed | delay | payload
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    delay_s: float = 0.0


@dataclass
class Seen:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]


class FakeProvider:
    def __init__(self) -> None:
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        self.extra_headers: dict[str, str] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/v1/completions", self._handle)
        app.router.add_post("/v1/messages", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _answer(self, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        if path.endswith("/chat/completions"):
            return pp.openai_chat_completion(body, cached_tokens=2), dict(OPENAI_LIMIT_HEADERS)
        if path.endswith("/completions"):
            return pp.openai_text_completion(body), dict(OPENAI_LIMIT_HEADERS)
        return pp.anthropic_message(body, cache_read=3), dict(ANTHROPIC_LIMIT_HEADERS)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append(Seen(request.path, body, dict(request.headers)))
        fault = self.faults.pop(0) if self.faults else Fault("ok")
        payload, headers = self._answer(request.path, body)
        headers.update(self.extra_headers)
        headers.update(fault.headers)
        if fault.kind == "delay":
            await asyncio.sleep(fault.delay_s)
        if fault.kind == "status":
            return web.json_response(fault.body, status=fault.status, headers=fault.headers)
        if fault.kind == "reset":
            assert request.transport is not None
            request.transport.abort()
            await asyncio.sleep(0.05)
            return web.Response(status=200)
        if fault.kind == "truncate":
            data = json.dumps(payload).encode()
            resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            resp.content_length = len(data)
            await resp.prepare(request)
            await resp.write(data[: len(data) // 2])
            assert request.transport is not None
            request.transport.close()
            return resp
        if fault.kind == "malformed":
            return web.Response(
                status=200,
                text=fault.body or '{"choices": [',
                content_type="application/json",
                headers=headers,
            )
        if fault.kind == "payload":
            return web.json_response(fault.body, headers=headers)
        return web.json_response(payload, headers=headers)
