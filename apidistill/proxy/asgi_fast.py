"""The proxy's two forwarded routes under uvicorn, without Starlette's per-request objects.

Used when the proxy runs on uvicorn (``APIDISTILL_PROXY_SERVER=uvicorn``, or httptools not
installed); apidistill's own front (:mod:`apidistill.proxy.http_front`) calls the handler
directly instead.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.applications import Starlette
from starlette.responses import Response, StreamingResponse

from apidistill.proxy.app import FORWARDED, Incoming, Proxy

__all__ = ["FastPath", "send_response"]


class FastPath:
    """The ASGI entry point the server runs: ``POST /v1/chat/completions`` and
    ``POST /v1/messages`` (nearly all of a proxy's traffic) go straight to the handler,
    without Starlette's middleware stack, route matching, ``Request`` object or response
    machinery: the body is read from ``receive`` and the answer written with ``send``
    directly (docs/proxy.md: the proxy's own CPU per request); everything else
    (``/r/<alias>/...``, admin, stats, the lifespan) goes through the Starlette app. Same
    handler, so the same answers."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self._proxy: Proxy = app.state.proxy

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            route = FORWARDED.get(scope["path"])
            if route is not None:
                message = await receive()
                body = message.get("body", b"")
                if message.get("more_body"):
                    parts = [body]
                    while message.get("more_body"):
                        message = await receive()
                        if message["type"] == "http.disconnect":
                            return  # the client left before its request was whole
                        parts.append(message.get("body", b""))
                    body = b"".join(parts)
                response = await self._proxy.forward(Incoming.from_scope(scope, body), *route)
                await send_response(response, receive, send)
                return
        await self.app(scope, receive, send)


async def send_response(response: Response, receive: Any, send: Any) -> None:
    """Write a Starlette response with bare ASGI messages: what ``Response.__call__`` does,
    and for a stream what ``StreamingResponse`` does with an anyio task group (stop the stream
    when the client disconnects) with one plain asyncio task instead. A stream stopped that
    way runs its ``finally`` (the relay closes the exchange as cut short, charged at its worst
    case: tests/proxy/test_proxy_disconnect.py)."""
    start = {"type": "http.response.start", "status": response.status_code,
             "headers": response.raw_headers}  # fmt: skip
    if not isinstance(response, StreamingResponse):
        await send(start)
        await send({"type": "http.response.body", "body": response.body})
        return

    async def pump() -> None:
        await send(start)
        async for chunk in response.body_iterator:
            if not isinstance(chunk, bytes | memoryview):
                chunk = chunk.encode(response.charset)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    loop = asyncio.get_running_loop()
    streaming, watch = loop.create_task(pump()), loop.create_task(gone())
    try:
        await asyncio.wait((streaming, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (streaming, watch):
            if not task.done():
                task.cancel()
        await asyncio.gather(streaming, watch, return_exceptions=True)
    if not streaming.cancelled() and streaming.exception() is not None:
        raise streaming.exception()  # type: ignore[misc]
