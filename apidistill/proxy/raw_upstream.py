"""The proxy's upstream hop on bare asyncio protocols and httptools: a keep-alive HTTP/1.1 pool.

Why not aiohttp: at 256 clients its client (request objects, multidicts, payload registry,
connector) was ~20% of the proxy's CPU per request (benchmarks/proxy_overhead.py, py-spy); the
proxy only ever needs "write these bytes, hand back status, headers and the body as it comes".

Billing rules (:class:`~apidistill.proxy.upstream.UpstreamError`): ``sent=False`` only when the
request cannot have reached the teacher (DNS, refused, connect timeout, TLS handshake). Anything
after the first request byte is written is ``sent=True``, a reused keep-alive connection found
dead included (a POST is never retried silently), so connections that are closing are never
handed out: they leave the pool on EOF, ``Connection: close``, ``Keep-Alive: timeout=N`` or
after ``keepalive_s`` idle. A connection with unread body bytes is never reused.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from urllib.parse import urlencode, urlsplit

import httptools

from apidistill.proxy.upstream import UpstreamError

__all__ = ["RawUpstream"]

# Pause reading a socket whose body nobody consumes above this; the next read takes all that is
# buffered and resumes it (the low-water mark is 0).
_HIGH = 256 * 1024
_Key = tuple[str, str, int]  # scheme, host, port


class _Conn(asyncio.Protocol):
    """One socket and the response being read from it (no pipelining: one at a time)."""

    def __init__(self, pool: RawUpstream, key: _Key) -> None:
        self.pool, self.key = pool, key
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.counted = True  # holds one of the pool's max_connections slots
        self.closing = False  # EOF, lost, or not to be reused
        self.idle_until = 0.0
        self.ka_s = pool.keepalive_s  # idle life, lowered by the teacher's Keep-Alive: timeout=N
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.head_done = self.complete = self.keep_alive = self.eof_body = False
        self.head_only = self.active = self.paused = False
        self.error: UpstreamError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.last_rx = 0.0

    # ------------------------------------------------------------------ protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.last_rx = self.loop.time()
        if not self.active or self.complete:  # bytes nobody asked for: state unknown
            self.closing = True
            self.transport.close()  # type: ignore[union-attr]
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"bad HTTP from the teacher: {exc}", sent=True, timeout=False))
            self.transport.close()  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self.closing = True
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.active and not self.complete:
            if self.head_done and self.eof_body and exc is None:
                self._finish()  # a body without length ends at a clean EOF (not a reset)
            else:
                why = f": {exc}" if exc else ""
                self._fail(
                    UpstreamError(f"teacher closed the connection{why}", sent=True, timeout=False)
                )
        self.pool._forget(self)

    # ------------------------------------------------------------------ parser callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.complete:  # a second answer to one request: never reuse this socket
            self.closing = True
            return
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self.complete:
            self.closing = True
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # interim: wait for the real answer
            self.headers = []
            return
        self.status, self.head_done = status, True
        self.keep_alive = self.parser.should_keep_alive()
        sized = False
        for k, v in self.headers:
            low = k.lower()
            if low == "content-length" or low == "transfer-encoding":
                sized = True
            elif low == "keep-alive" and "timeout=" in v:
                try:
                    n = float(v.split("timeout=", 1)[1].split(",", 1)[0])
                except ValueError:
                    continue
                self.ka_s = min(self.ka_s, n - 1.0)  # leave a second for the race
        self.eof_body = not sized and status != 204 and status != 304
        if self.head_only:  # HEAD: no body follows, whatever the headers say
            self.keep_alive = False
            self._finish()
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            self.closing = True
            return
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.head_done and not self.complete:
            self._finish()

    # ------------------------------------------------------------------ request / response
    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _finish(self) -> None:
        self.complete = True
        if self.timer is not None:
            self.timer.cancel()
        self._wake()

    def _fail(self, err: UpstreamError) -> None:
        if self.error is None and not self.complete:
            self.error = err
            if self.timer is not None:
                self.timer.cancel()
        self.closing = True
        self._wake()

    def _check_timeout(self) -> None:
        """Fail the answer when no byte came for ``timeout_s`` (one timer per request, moved
        only when it fires: cheaper than re-arming it on every read)."""
        if self.complete:
            return
        now, limit = self.loop.time(), self.pool.timeout_s
        if self.paused or now < self.last_rx + limit:  # paused: the silence is ours
            self.timer = self.loop.call_at(now + limit if self.paused else self.last_rx + limit,
                                           self._check_timeout)  # fmt: skip
            return
        self._fail(
            UpstreamError(f"no bytes from the teacher in {limit:g} s", sent=True, timeout=True)
        )
        if self.transport is not None:
            self.transport.abort()

    def start(self, request: bytes, *, head_only: bool) -> None:
        self._reset()
        self.active, self.head_only = True, head_only
        if self.closing or self.transport is None or self.transport.is_closing():
            self._fail(
                UpstreamError("the kept-alive connection was closed", sent=True, timeout=False)
            )
            return
        self.transport.write(request)
        self.last_rx = self.loop.time()
        self.timer = self.loop.call_at(self.last_rx + self.pool.timeout_s, self._check_timeout)

    async def wait(self) -> None:
        self.waiter = self.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    async def next_body(self) -> bytes | None:
        """Body bytes received so far (de-chunked), waiting for some; ``None`` at the end."""
        while True:
            if self.body:
                data = self.body.popleft() if len(self.body) == 1 else b"".join(self.body)
                self.body.clear()
                self.buffered = 0
                if self.paused and self.transport is not None:
                    self.paused = False
                    self.last_rx = self.loop.time()  # the teacher waited on us, not we on it
                    self.transport.resume_reading()
                return data
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            await self.wait()


class _RawResponse:
    def __init__(self, pool: RawUpstream, conn: _Conn) -> None:
        self._pool, self._conn = pool, conn
        self.status = conn.status
        self.headers = conn.headers

    async def read(self) -> bytes:
        conn, parts = self._conn, []
        while conn is not None and (data := await conn.next_body()) is not None:
            parts.append(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        while (data := await conn.next_body()) is not None:
            yield data

    async def close(self) -> None:
        conn, self._conn = self._conn, None  # type: ignore[assignment]
        if conn is not None:
            self._pool._release(conn)


class RawUpstream:
    """The :class:`~apidistill.proxy.upstream.Upstream` pool: at most ``max_connections``
    sockets over all hosts; more concurrent sends wait their turn (FIFO)."""

    def __init__(
        self,
        max_connections: int,
        timeout_s: float,
        *,
        keepalive_s: float = 15.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.max_connections, self.timeout_s, self.keepalive_s = (
            max_connections,
            timeout_s,
            keepalive_s,
        )
        self._ssl = ssl_context
        self._idle: dict[_Key, list[_Conn]] = {}
        self._all: set[_Conn] = set()
        self._urls: dict[str, tuple[_Key, str, str]] = {}
        self._open = 0
        self._waiters: deque[tuple[_Key, asyncio.Future[_Conn | None]]] = deque()

    async def send(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None,
        headers: Mapping[str, str],
        params: Sequence[tuple[str, str]] | None,
    ) -> _RawResponse:
        key, target, hostline = self._urls.get(url) or self._parse(url)
        if params:
            target += ("&" if "?" in target else "?") + urlencode(params)
        lines = [f"{method} {target} HTTP/1.1\r\n{hostline}"]
        for k, v in headers.items():
            if k.lower() in ("host", "content-length", "transfer-encoding"):
                continue
            if "\r" in v or "\n" in v or "\r" in k or "\n" in k:
                raise UpstreamError(f"header {k!r} holds a line break", sent=False, timeout=False)
            lines.append(f"{k}: {v}")
        if content is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"content-length: {len(content or b'')}")
        try:
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        except UnicodeEncodeError as exc:
            raise UpstreamError(
                f"not sendable as HTTP/1.1: {exc}", sent=False, timeout=False
            ) from exc
        conn = await self._acquire(key)
        request = head + content if content else head
        try:
            conn.start(request, head_only=method == "HEAD")
            while not conn.head_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait()
        except BaseException:
            self._release(conn)
            raise
        return _RawResponse(self, conn)

    def _parse(self, url: str) -> tuple[_Key, str, str]:
        """Pool key, request target and host header of ``url`` (cached: the proxy sends to a
        handful of URLs, and parsing one costs more than the rest of the request head)."""
        u = urlsplit(url)
        scheme, host = u.scheme.lower(), u.hostname or ""
        default = 443 if scheme == "https" else 80
        port = u.port or default
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        hostline = "host: " + (f"[{host}]" if ":" in host else host)
        hostline += f":{port}" if port != default else ""
        if len(self._urls) >= 1024:
            self._urls.clear()
        self._urls[url] = parsed = ((scheme, host, port), target, hostline)
        return parsed

    # ------------------------------------------------------------------ pool
    async def _acquire(self, key: _Key) -> _Conn:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closing and conn.idle_until > now:
                return conn
            self._discard(conn)
        if self._open >= self.max_connections and not self._waiters:
            self._close_idle_other_than(key)
        if self._open < self.max_connections and not self._waiters:
            self._open += 1
            return await self._connect(key)
        fut: asyncio.Future[_Conn | None] = asyncio.get_running_loop().create_future()
        self._waiters.append((key, fut))
        try:
            got = await fut
        except asyncio.CancelledError:
            if not fut.done() or fut.cancelled():
                self._waiters = deque(w for w in self._waiters if w[1] is not fut)
            else:  # handed a socket or a slot just before the cancel: pass it on
                got = fut.result()
                if got is None:
                    self._free_slot()
                else:
                    self._release(got)
            raise
        return got if got is not None else await self._connect(key)

    async def _connect(self, key: _Key) -> _Conn:
        """Open a socket for a slot already counted in ``_open``; gives the slot back on failure."""
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        if scheme == "https" and self._ssl is None:  # one per pool: loading the CAs costs ms
            self._ssl = ssl.create_default_context()
        ctx = self._ssl if scheme == "https" else None
        conn = _Conn(self, key)
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: conn, host, port, ssl=ctx, server_hostname=host if ctx else None
                ),
                min(10.0, self.timeout_s),
            )
        except BaseException as exc:
            conn.counted = False
            self._free_slot()
            if isinstance(exc, TimeoutError):
                raise UpstreamError(
                    f"cannot connect to {host}:{port}: timed out", sent=False, timeout=False
                ) from exc
            if isinstance(exc, OSError):
                raise UpstreamError(
                    f"cannot connect to {host}:{port}: {exc}", sent=False, timeout=False
                ) from exc
            raise
        self._all.add(conn)
        return conn

    def _release(self, conn: _Conn) -> None:
        """Back to the pool when its answer was read whole and the teacher keeps it alive."""
        reusable = conn.complete and conn.keep_alive and not conn.closing and not conn.error
        conn.active = False
        if conn.timer is not None:
            conn.timer.cancel()
        if not reusable or not conn.counted:
            self._discard(conn)
            return
        while self._waiters:
            key, fut = self._waiters.popleft()
            if fut.done():
                continue
            if key == conn.key:
                fut.set_result(conn)
            else:  # its slot goes to a waiter for another host
                conn.counted = False
                self._discard(conn)
                fut.set_result(None)
            return
        conn.idle_until = time.monotonic() + conn.ka_s
        self._idle.setdefault(conn.key, []).append(conn)

    def _discard(self, conn: _Conn) -> None:
        conn.closing = True
        if conn.transport is not None and not conn.transport.is_closing():
            conn.transport.close()
        self._forget(conn)

    def _forget(self, conn: _Conn) -> None:
        """``conn`` is gone: out of the idle list, its slot to the next waiter."""
        self._all.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
        if conn.counted:
            conn.counted = False
            self._free_slot()

    def _free_slot(self) -> None:
        while self._waiters:
            _, fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes on: _open stays
                return
        self._open -= 1

    def _close_idle_other_than(self, key: _Key) -> None:
        for other, conns in self._idle.items():
            if other != key and conns:
                self._discard(conns[0])
                return

    async def close(self) -> None:
        for conn in list(self._all):
            self._discard(conn)
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run connection_lost
