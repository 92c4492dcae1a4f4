"""A lean HTTP/1.1 server for the proxy: ``asyncio.Protocol`` + ``httptools``, no ASGI cycle on
the hot path.

Why: under 256 clients the proxy's own CPU per request decides its overhead (docs/proxy.md),
and uvicorn's per-request ASGI machinery (scope dict, ``receive``/``send`` message dicts, its
flow-control and timeout objects) was a measurable share of it. Here ``POST
/v1/chat/completions`` and ``POST /v1/messages`` go straight from the parser's callbacks to
:meth:`Proxy.forward`, and the answer is written with one ``transport.write``. Everything
else (``/r/<alias>/...``, ``/v1/models``, ``/stats``, ``/metrics``, ``/admin/split``, ``/``,
404s) goes to the Starlette app through a minimal ASGI bridge, so there is one handler per
route whichever server runs (``APIDISTILL_PROXY_SERVER=uvicorn`` picks uvicorn instead).

HTTP/1.1 as clients use it: keep-alive, pipelined requests answered in order, request bodies
by ``Content-Length`` or chunked, ``Expect: 100-continue``, HTTP/1.0 (answered, then closed),
400 for a malformed request, 413 over 64 MiB, 431 for over 64 KiB of head.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import httptools
from starlette.applications import Starlette
from starlette.responses import Response, StreamingResponse

from apidistill.errors import ConfigError
from apidistill.proxy.app import FORWARDED, Incoming, Proxy
from apidistill.proxy.shapes import Api, error_response

__all__ = ["MAX_BODY", "FrontServer", "run_front"]

log = logging.getLogger("apidistill.proxy")
MAX_BODY = 64 * 1024 * 1024  # a request body over this gets a 413
MAX_HEAD = 64 * 1024  # request line + headers over this get a 431
IDLE_S = 30.0  # a keep-alive connection with nothing in flight is closed after this
_FAST: dict[bytes, tuple[Api, str]] = {path.encode(): route for path, route in FORWARDED.items()}
_REASON = {s.value: s.phrase.encode() for s in HTTPStatus}
_PAUSE_AT = 32  # parsed requests waiting in one connection before it stops reading


@dataclass
class _Request:
    """One parsed request, or (``error`` set) the error answer that takes its place."""

    method: bytes
    url: bytes
    version: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    keep_alive: bool
    error: tuple[int, str] | None = None


class _Date:
    """The ``Date`` header, formatted once a second rather than per answer."""

    second, value = -1, b""

    @classmethod
    def header(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            stamp = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))
            cls.second, cls.value = now, b"date: " + stamp.encode() + b"\r\n"
        return cls.value


class _Connection(asyncio.Protocol):
    """One client connection: parses requests as they arrive and answers them in order with
    one task at a time (so pipelined answers cannot interleave)."""

    def __init__(self, server: FrontServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.pending: deque[_Request] = deque()
        self.task: asyncio.Task[None] | None = None
        self.lost: asyncio.Future[None] = server.loop.create_future()
        self.streaming = False  # a stream is being written: a disconnect cancels the task
        self.expect_continue = False
        self.paused = False  # too many requests queued: reading stops until they drain
        self.discard = False  # after a 400/413/431: read and drop the rest, then close
        self.writable: asyncio.Future[None] | None = None
        self.last_active = server.loop.time()
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.head_size = self.body_size = 0

    # ---------------------------------------------------------------- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:  # without it each answer may wait ~40 ms for a delayed ACK
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if not self.lost.done():
            self.lost.set_result(None)
        self.pending.clear()
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        if self.streaming and self.task is not None:
            self.task.cancel()  # the relay's finally records the stream as cut short

    def pause_writing(self) -> None:
        self.writable = self.server.loop.create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None

    def data_received(self, data: bytes) -> None:
        if self.discard:
            return
        self.last_active = self.server.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            if not self.discard:
                self._refuse(400, f"malformed HTTP request ({exc})")

    # ---------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))
        self._count_head(len(name) + len(value))

    def _count_head(self, n: int) -> None:
        self.head_size += n
        if self.head_size > MAX_HEAD and not self.discard:
            self._refuse(431, f"the request's head is over {MAX_HEAD // 1024} KiB")

    def on_headers_complete(self) -> None:
        if self.discard:
            return
        for name, value in self.headers:
            if name == b"content-length" and value.isdigit() and int(value) > MAX_BODY:
                self._refuse(413, f"the request body is over {MAX_BODY // 2**20} MiB")
                return
            if name == b"expect" and value.lower() == b"100-continue":
                self.expect_continue = True
        if self.expect_continue and self.task is None:
            self._send_continue()

    def on_body(self, body: bytes) -> None:
        if self.discard:
            return
        self.body_size += len(body)
        if self.body_size > MAX_BODY:
            self._refuse(413, f"the request body is over {MAX_BODY // 2**20} MiB")
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.discard:
            return
        self.expect_continue = False
        version = self.parser.get_http_version()
        keep = version == "1.1" and self.parser.should_keep_alive()
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        req = _Request(self.parser.get_method(), self.url, version, self.headers, body, keep)
        self._enqueue(req)
        if not keep:
            self.discard = True  # nothing after a closing request is answered

    # ---------------------------------------------------------------- answering in order

    def _refuse(self, status: int, why: str) -> None:
        """Answer ``status`` after the requests already queued, then close."""
        self.discard = True
        assert self.transport is not None
        self.transport.pause_reading()
        # the headers read so far pick the error's envelope (Anthropic's SDK sends its version)
        self._enqueue(_Request(b"", b"", "1.1", self.headers, b"", False, (status, why)))

    def _enqueue(self, req: _Request) -> None:
        self.pending.append(req)
        if self.task is None:
            self.task = self.server.loop.create_task(self._answer_all())
        elif len(self.pending) >= _PAUSE_AT and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def _send_continue(self) -> None:
        self.expect_continue = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def _answer_all(self) -> None:
        transport = self.transport
        assert transport is not None
        try:
            while self.pending and not transport.is_closing():
                req = self.pending.popleft()
                if req.error is not None:
                    status, why = req.error
                    resp = error_response(_api_of(req.headers), status, f"apidistill proxy: {why}")
                    self._write_head(req, resp.status_code, resp.raw_headers, resp.body)
                else:
                    await self._answer(req)
                if not req.keep_alive:
                    transport.close()
                    return
                if self.paused and len(self.pending) < _PAUSE_AT and not self.discard:
                    self.paused = False
                    transport.resume_reading()
        except Exception:  # an answer failed after its head was written: cut it short
            log.exception("the proxy failed while writing an answer")
            transport.close()
        finally:
            self.task = None
            self.last_active = self.server.loop.time()
        if self.expect_continue:  # the next request waited for its turn to get its 100
            self._send_continue()

    async def _answer(self, req: _Request) -> None:
        raw_path, _, query = req.url.partition(b"?")
        if not raw_path.startswith(b"/"):  # absolute form: http://host/path?query
            parsed = httptools.parse_url(req.url)
            raw_path, query = parsed.path or b"/", parsed.query or b""
        route = _FAST.get(raw_path) if req.method == b"POST" else None
        if route is None:
            await self._bridge(req, raw_path, query)
            return
        try:
            scope = {"headers": req.headers, "query_string": query}
            resp = await self.server.proxy.forward(Incoming.from_scope(scope, req.body), *route)
        except Exception:
            log.exception("the proxy's handler failed on %s", route[1])
            resp = error_response(route[0], 500, "apidistill proxy: internal error (logged)")
        await self._write_response(req, resp)

    async def _write_response(self, req: _Request, resp: Response) -> None:
        assert self.transport is not None
        if not isinstance(resp, StreamingResponse):
            if self.transport.is_closing():
                return  # the client left; its exchange was still settled and captured
            self._write_head(req, resp.status_code, resp.raw_headers, resp.body)
            return
        self.streaming = True
        iterator = resp.body_iterator
        try:
            # a client gone before the head: nothing to write, the relay is closed below
            if not self.transport.is_closing():
                chunked = self._write_head(req, resp.status_code, resp.raw_headers, None)
                async for chunk in iterator:
                    data = chunk if isinstance(chunk, bytes) else bytes(chunk, resp.charset)
                    await self._write_chunk(data, chunked)
                if chunked and not self.transport.is_closing():
                    self.transport.write(b"0\r\n\r\n")
        except asyncio.CancelledError:
            if not self.lost.done():
                raise  # a stop from elsewhere (server shutdown): not a client disconnect
        finally:
            self.streaming = False
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _write_chunk(self, data: bytes, chunked: bool) -> None:
        assert self.transport is not None
        if not data or self.transport.is_closing():
            return
        self.transport.write(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)
        if self.writable is not None:
            await self.writable

    def _write_head(
        self, req: _Request, status: int, headers: list[tuple[bytes, bytes]], body: bytes | None
    ) -> bool:
        """Write the status line and headers, and a whole ``body`` with them (one write, one
        system call); ``body=None``: a stream follows, ``True`` when it must go chunked.
        Nothing to a closed connection (uvloop raises on a write to one)."""
        assert self.transport is not None
        if self.transport.is_closing():
            return False
        parts = [b"HTTP/1.1 %d %b\r\n" % (status, _REASON.get(status, b"")), _Date.header()]
        has_length = False
        for name, value in headers:
            if name == b"content-length":
                has_length = True
            parts.append(b"%b: %b\r\n" % (name, value))
        chunked = False
        if body is not None and not has_length:
            parts.append(b"content-length: %d\r\n" % len(body))
        elif body is None and not has_length:
            if req.version == "1.1":
                chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
            else:
                req.keep_alive = False  # HTTP/1.0: the body ends when the connection does
        if not req.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if body:
            parts.append(body)
        self.transport.write(b"".join(parts))
        return chunked

    # ---------------------------------------------------------------- the ASGI bridge

    async def _bridge(self, req: _Request, raw_path: bytes, query: bytes) -> None:
        """Run the Starlette app for one request (the routes off the fast path)."""
        assert self.transport is not None
        transport = self.transport
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": req.version,
            "method": req.method.decode("ascii"),
            "scheme": "http",
            "path": unquote(raw_path.decode("latin-1")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": req.headers,
            "client": _host_port(transport.get_extra_info("peername")),
            "server": _host_port(transport.get_extra_info("sockname")),
            "state": {},
        }
        head_only = req.method == b"HEAD"
        body_sent = head_written = False
        started: dict[str, Any] = {}

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": req.body, "more_body": False}
            await self.lost
            return {"type": "http.disconnect"}

        chunked = False

        async def send(message: dict[str, Any]) -> None:
            nonlocal chunked, head_written
            if transport.is_closing():
                return
            if message["type"] == "http.response.start":
                started.update(message)
                return
            more = message.get("more_body", False)
            if not head_written:  # the head goes with the first body part
                head_written = True
                headers = list(started.get("headers", []))
                whole = None if more else message.get("body", b"")
                # HEAD: the app's headers (its content-length is GET's), no body
                body = b"" if head_only and whole is not None else whole
                chunked = self._write_head(req, started["status"], headers, body)
                chunked = chunked and not head_only
                if whole is not None:
                    return
            if not head_only:
                await self._write_chunk(message.get("body", b""), chunked)
                if chunked and not more and not transport.is_closing():
                    transport.write(b"0\r\n\r\n")

        try:
            await self.server.app(scope, receive, send)
        except Exception:
            log.exception("the proxy's app failed on %s %s", scope["method"], scope["path"])
            if not head_written and not transport.is_closing():
                resp = error_response(_api_of(req.headers), 500, "apidistill proxy: internal error")
                self._write_head(req, 500, resp.raw_headers, resp.body)
            else:
                transport.close()  # the answer had begun: the client sees it cut short


def _host_port(address: Any) -> tuple[str, int] | None:
    """ASGI's ``(host, port)`` from a socket address (an IPv6 one has four parts)."""
    return (str(address[0]), int(address[1])) if isinstance(address, tuple) else None


def _api_of(headers: list[tuple[bytes, bytes]]) -> Api:
    """Which provider's error envelope a request gets (Anthropic's SDK sends its version)."""
    return "anthropic" if any(k == b"anthropic-version" for k, _ in headers) else "openai"


class FrontServer:
    """The listening socket, its connections, and an orderly stop."""

    def __init__(self, app: Starlette, loop: asyncio.AbstractEventLoop) -> None:
        self.app, self.loop = app, loop
        self.proxy: Proxy = app.state.proxy
        self.connections: set[_Connection] = set()
        self.server: asyncio.Server | None = None

    async def listen(self, host: str, port: int) -> int:
        """Bind and accept; the port it got (``port=0`` picks a free one)."""
        try:
            self.server = await self.loop.create_server(
                lambda: _Connection(self), host, port, backlog=2048, reuse_address=True
            )
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} ({exc})", key="port") from exc
        return int(self.server.sockets[0].getsockname()[1])

    def sweep_idle(self) -> None:
        """Close keep-alive connections idle for :data:`IDLE_S` (checked every few seconds,
        not with a timer per request)."""
        cutoff = self.loop.time() - IDLE_S
        for conn in list(self.connections):
            if conn.task is None and conn.last_active < cutoff and conn.transport is not None:
                conn.transport.close()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, close idle connections, let answers in flight finish for up to
        ``grace_s``, then close what is left."""
        if self.server is not None:
            self.server.close()
        deadline = self.loop.time() + grace_s
        while True:
            for conn in list(self.connections):
                if conn.task is None and conn.transport is not None:
                    conn.transport.close()
            busy = [c.task for c in self.connections if c.task is not None]
            if not busy or self.loop.time() >= deadline:
                break
            await asyncio.wait(busy, timeout=min(0.1, deadline - self.loop.time()))
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
            if conn.task is not None:
                conn.task.cancel()


async def run_front(app: Starlette, host: str, port: int, ready: Callable[[int], None]) -> None:
    """Serve ``app`` until SIGINT or SIGTERM: the app's lifespan (upstream pool, group
    commit) runs around the server; ``ready(port)`` is called once it accepts."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    front = FrontServer(app, loop)
    lifespan: Callable[[Starlette], Any] = app.router.lifespan_context
    async with lifespan(app):
        bound = await front.listen(host, port)
        ready(bound)
        await _until(stop.wait(), front.sweep_idle)
        await front.stop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)


async def _until(done: Awaitable[Any], every: Callable[[], None], period_s: float = 5.0) -> None:
    """Await ``done``, calling ``every()`` each ``period_s`` meanwhile."""
    waiter = asyncio.ensure_future(done)
    while not waiter.done():
        await asyncio.wait([waiter], timeout=period_s)
        every()
