"""The proxy's raw HTTP/1.1 upstream pool against servers nobody here wrote (aiohttp.web, uvicorn),
a trustme TLS server, and a raw asyncio socket server that scripts faults byte by byte."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trustme
import uvicorn
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apidistill.proxy.raw_upstream import _HIGH, RawUpstream
from apidistill.proxy.upstream import UpstreamError, open_upstream

GUARD_S = 30  # a hang guard only: every test finishes by events, never by waiting this out


# --------------------------------------------------------------------------- servers


@asynccontextmanager
async def aiohttp_server(
    app: web.Application, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def peers_app(peers: list[str]) -> web.Application:
    """JSON echo of method, path and query; records each request's client socket."""

    async def echo(request: web.Request) -> web.Response:
        peers.append(str(request.transport.get_extra_info("peername")))  # type: ignore[union-attr]
        body = await request.read()
        return web.json_response(
            {"path": request.path, "query": list(request.query.items()), "len": len(body)}
        )

    async def close(request: web.Request) -> web.Response:
        peers.append(str(request.transport.get_extra_info("peername")))  # type: ignore[union-attr]
        return web.Response(text="bye", headers={"Connection": "close"})

    async def empty(request: web.Request) -> web.Response:
        peers.append(str(request.transport.get_extra_info("peername")))  # type: ignore[union-attr]
        return web.Response(status=204)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/v1/echo", echo)
    app.router.add_get("/close", close)
    app.router.add_get("/empty", empty)
    return app


class RawServer:
    """A loopback socket server whose ``script(reader, writer)`` runs per connection."""

    def __init__(self, script: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable]):
        self.script, self.connections = script, 0

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._on, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def _on(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.script(reader, writer)
        finally:
            writer.close()

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request's head and body off the wire, or None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


async def send(pool: RawUpstream, url: str, method: str = "POST", **kw) -> tuple[int, bytes]:
    resp = await pool.send(
        method, url, content=kw.get("content", b"{}"), headers=kw.get("headers", {}), params=None
    )
    try:
        return resp.status, await resp.read()
    finally:
        await resp.close()


# --------------------------------------------------------------------------- aiohttp.web


async def test_json_query_params_and_keep_alive_reuse() -> None:
    peers: list[str] = []
    pool = RawUpstream(8, 30)
    async with aiohttp_server(peers_app(peers)) as url:
        for i in range(5):
            resp = await pool.send(
                "POST",
                url + "/v1/echo?a=1",
                content=b'{"x": 1}',
                headers={"content-type": "application/json"},
                params=[("b", "two words"), ("b", str(i))],
            )
            assert resp.status == 200
            assert ("Content-Type", "application/json; charset=utf-8") in resp.headers
            answer = json.loads(await resp.read())
            await resp.close()
            assert answer == {
                "path": "/v1/echo",
                "query": [["a", "1"], ["b", "two words"], ["b", str(i)]],
                "len": 8,
            }
        assert len(peers) == 5 and len(set(peers)) == 1  # one socket, kept alive
    await pool.close()


async def test_connection_close_answer_is_not_reused_and_204_is() -> None:
    peers: list[str] = []
    pool = RawUpstream(8, 30)
    async with aiohttp_server(peers_app(peers)) as url:
        assert await send(pool, url + "/close", "GET", content=None) == (200, b"bye")
        assert await send(pool, url + "/empty", "GET", content=None) == (204, b"")
        assert await send(pool, url + "/empty", "GET", content=None) == (204, b"")
        assert peers[0] != peers[1] and peers[1] == peers[2]
    await pool.close()


async def test_big_bodies_both_ways_and_flow_control() -> None:
    blob = bytes(range(256)) * (4 * 4096)  # 4 MiB

    async def big(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            return web.Response(body=await request.read())
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(blob)
        await resp.write_eof()
        return resp

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/big", big)
    pool = RawUpstream(4, 30)
    async with aiohttp_server(app) as url:
        assert await send(pool, url + "/big", content=blob) == (200, blob)
        resp = await pool.send("GET", url + "/big", content=None, headers={}, params=None)
        conn = resp._conn
        for _ in range(2000):  # nobody reads: the pool must stop reading the socket
            if conn.paused:
                break
            await asyncio.sleep(0.005)
        assert conn.paused
        assert conn.buffered < _HIGH + 256 * 1024  # bounded: at most one socket read above
        assert await resp.read() == blob
        await resp.close()
    await pool.close()


async def test_sse_chunks_arrive_as_sent_before_the_end() -> None:
    got_first = asyncio.Event()

    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b'data: {"n": 1}\n\n')
        await got_first.wait()  # the second event only after the client holds the first
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/sse", sse)
    pool = RawUpstream(4, 30)
    async with aiohttp_server(app) as url:
        resp = await pool.send("POST", url + "/sse", content=b"{}", headers={}, params=None)
        assert resp.status == 200
        seen = []
        async for chunk in resp.chunks():
            seen.append(chunk)
            got_first.set()
        await resp.close()
        assert b"".join(seen) == b'data: {"n": 1}\n\ndata: [DONE]\n\n'
        assert seen[0] == b'data: {"n": 1}\n\n'
    await pool.close()


async def test_concurrent_sends_never_open_more_than_max_connections() -> None:
    peers: list[str] = []
    in_flight, most = 0, 0
    full = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        nonlocal in_flight, most
        peers.append(str(request.transport.get_extra_info("peername")))  # type: ignore[union-attr]
        in_flight += 1
        most = max(most, in_flight)
        if in_flight == 4:
            full.set()
        await full.wait()  # the first four hold their sockets until all four are busy
        in_flight -= 1
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/slow", slow)
    pool = RawUpstream(4, 30)
    async with aiohttp_server(app) as url:
        results = await asyncio.gather(*(send(pool, url + "/slow") for _ in range(40)))
        assert all(r == (200, b'{"ok": true}') for r in results)
        assert most == 4 and len(set(peers)) == 4
    await pool.close()


async def test_response_closed_before_its_end_is_not_reused() -> None:
    gate = asyncio.Event()
    peers: list[str] = []

    async def part(request: web.Request) -> web.StreamResponse:
        peers.append(str(request.transport.get_extra_info("peername")))  # type: ignore[union-attr]
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"first part")
        if request.path == "/part":
            await gate.wait()
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/part", part)
    app.router.add_post("/whole", part)
    pool = RawUpstream(4, 30)
    async with aiohttp_server(app) as url:
        resp = await pool.send("POST", url + "/part", content=b"x", headers={}, params=None)
        assert await resp.chunks().__anext__() == b"first part"
        await resp.close()  # the rest of the body unread
        gate.set()
        assert await send(pool, url + "/whole") == (200, b"first part")
        assert await send(pool, url + "/whole") == (200, b"first part")
        assert len(set(peers)) == 2 and peers[1] == peers[2]
    await pool.close()


# --------------------------------------------------------------------------- uvicorn (ASGI)


async def asgi_app(scope, receive, send_) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    client = str(scope["client"]).encode()
    if scope["path"] == "/stream":  # no content-length: uvicorn sends it chunked
        await send_({"type": "http.response.start", "status": 200,
                     "headers": [(b"content-type", b"text/event-stream")]})  # fmt: skip
        for i in range(3):
            await send_({"type": "http.response.body", "body": b"data: %d\n\n" % i,
                         "more_body": True})  # fmt: skip
        await send_({"type": "http.response.body", "body": b""})
        return
    out = json.dumps({"len": len(body), "client": client.decode()}).encode()
    await send_({"type": "http.response.start", "status": 200,
                 "headers": [(b"content-type", b"application/json")]})  # fmt: skip
    await send_({"type": "http.response.body", "body": out})


async def test_uvicorn_json_chunked_and_keep_alive() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(asgi_app, log_level="error", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    pool = open_upstream("auto", max_connections=4, timeout_s=30)
    assert isinstance(pool, RawUpstream)
    url = f"http://127.0.0.1:{port}"
    try:
        a = json.loads((await send(pool, url + "/json", content=b"abc"))[1])
        assert await send(pool, url + "/stream") == (200, b"data: 0\n\ndata: 1\n\ndata: 2\n\n")
        b = json.loads((await send(pool, url + "/json", content=b""))[1])
        assert a["len"] == 3 and b["len"] == 0 and a["client"] == b["client"]  # one socket
    finally:
        await pool.close()
        server.should_exit = True
        await task


# --------------------------------------------------------------------------- TLS


async def test_tls_with_trusted_ca_and_wrong_ca_fails_unsent() -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    good = ssl.create_default_context()
    ca.configure_trust(good)
    wrong = ssl.create_default_context()
    trustme.CA().configure_trust(wrong)
    peers: list[str] = []
    async with aiohttp_server(peers_app(peers), server_ctx) as url:
        pool = RawUpstream(4, 30, ssl_context=good)
        status, body = await send(pool, url + "/v1/echo", content=b"hi")
        assert status == 200 and json.loads(body)["len"] == 2
        await pool.close()
        pool = RawUpstream(4, 30, ssl_context=wrong)
        with pytest.raises(UpstreamError) as err:
            await send(pool, url + "/v1/echo")
        assert err.value.sent is False and err.value.timeout is False
        await pool.close()
        assert len(peers) == 1


# --------------------------------------------------------------------------- faults


async def test_refused_port_is_not_sent() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there
    pool = RawUpstream(2, 30)
    with pytest.raises(UpstreamError) as err:
        await send(pool, f"http://127.0.0.1:{port}/x")
    assert err.value.sent is False
    with pytest.raises(UpstreamError):  # the slot came back: the pool still answers
        await send(pool, f"http://127.0.0.1:{port}/x")
    await pool.close()


async def _close_after_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)


async def _close_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
    await writer.drain()


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"HELLO THERE\r\n\r\n")
    await writer.drain()
    await reader.read()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    await reader.read()  # until the client gives up


async def test_close_before_any_answer_byte_is_sent() -> None:
    async with RawServer(_close_after_request) as srv:
        pool = RawUpstream(2, 30)
        with pytest.raises(UpstreamError) as err:
            await send(pool, srv.url + "/x")
        assert err.value.sent is True and err.value.timeout is False
        await pool.close()


async def test_close_mid_body_fails_the_read() -> None:
    async with RawServer(_close_mid_body) as srv:
        pool = RawUpstream(2, 30)
        resp = await pool.send("POST", srv.url + "/x", content=b"{}", headers={}, params=None)
        assert resp.status == 200
        with pytest.raises(UpstreamError) as err:
            await resp.read()
        assert err.value.sent is True
        await resp.close()
        await pool.close()


async def test_garbage_status_line() -> None:
    async with RawServer(_garbage) as srv:
        pool = RawUpstream(2, 30)
        with pytest.raises(UpstreamError, match="bad HTTP") as err:
            await send(pool, srv.url + "/x")
        assert err.value.sent is True
        await pool.close()


async def test_no_bytes_within_timeout() -> None:
    async with RawServer(_silent) as srv:
        pool = RawUpstream(2, 0.3)
        with pytest.raises(UpstreamError) as err:
            await send(pool, srv.url + "/x")
        assert err.value.sent is True and err.value.timeout is True
        await pool.close()


async def test_interim_100_skipped_body_to_eof_and_head() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        req = await read_request(reader)
        assert req is not None
        if req.startswith(b"HEAD"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n")
        else:
            writer.write(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nto the end"
            )
        await writer.drain()
        if req.startswith(b"HEAD"):
            await reader.read()

    async with RawServer(script) as srv:
        pool = RawUpstream(2, 30)
        resp = await pool.send("POST", srv.url + "/x", content=b"{}", headers={}, params=None)
        assert (resp.status, resp.headers) == (200, [("X-A", "1")])
        assert await resp.read() == b"to the end"
        await resp.close()
        assert await send(pool, srv.url + "/x", "HEAD", content=None) == (200, b"")
        assert srv.connections == 2  # an answer read to EOF ends its socket
        await pool.close()


async def test_server_closing_an_idle_socket_and_keep_alive_limits() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (req := await read_request(reader)) is not None:
            short = b"/short" in req
            extra = b"Keep-Alive: timeout=1\r\n" if short else b""
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + extra + b"\r\nok")
            await writer.drain()
            if not short:
                return  # closes while the client holds the socket idle

    async with RawServer(script) as srv:
        key = ("http", "127.0.0.1", srv.server.sockets[0].getsockname()[1])
        pool = RawUpstream(2, 30)
        assert await send(pool, srv.url + "/x") == (200, b"ok")
        for _ in range(500):  # until the pool has seen the EOF (an event, polled)
            if not pool._idle.get(key):
                break
            await asyncio.sleep(0.01)
        assert not pool._idle.get(key)
        assert await send(pool, srv.url + "/short") == (200, b"ok")  # a fresh socket, no error
        assert await send(pool, srv.url + "/short") == (200, b"ok")  # timeout=1: not reused
        assert srv.connections == 3
        await pool.close()
    async with RawServer(_keep_alive_ok) as srv:
        pool = RawUpstream(2, 30, keepalive_s=0)  # idle life 0: never reused
        await send(pool, srv.url + "/x")
        await send(pool, srv.url + "/x")
        assert srv.connections == 2
        await pool.close()
    async with RawServer(_keep_alive_ok) as srv:
        pool = RawUpstream(2, 30)  # the default idle life: reused
        await send(pool, srv.url + "/x")
        await send(pool, srv.url + "/x")
        assert srv.connections == 1
        await pool.close()


async def _keep_alive_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await read_request(reader) is not None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()


# --------------------------------------------------------------------------- property


def _frame(body: bytes, chunked: bool, sizes: list[int], close: bool) -> bytes:
    head = b"HTTP/1.1 200 OK\r\n" + (b"Connection: close\r\n" if close else b"")
    if not chunked:
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    out, i = [head + b"Transfer-Encoding: chunked\r\n\r\n"], 0
    for n in [*sizes, len(body)]:
        piece = body[i : i + max(1, n)]
        if piece:
            out.append(b"%x\r\n%s\r\n" % (len(piece), piece))
        i += len(piece)
    out.append(b"0\r\n\r\n")
    return b"".join(out)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.binary(max_size=3000),
    chunked=st.booleans(),
    sizes=st.lists(st.integers(1, 700), max_size=8),
    close=st.booleans(),
    cuts=st.lists(st.integers(0, 4000), max_size=6),
)
def test_any_split_reads_back_identical_and_reuse_is_exact(
    body: bytes, chunked: bool, sizes: list[int], close: bool, cuts: list[int]
) -> None:
    wire = _frame(body, chunked, sizes, close)
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})

    answered = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        while await read_request(reader) is not None:
            answered += 1
            if answered > 1:  # the second request: a plain answer
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n!")
                await writer.drain()
                continue
            for a, b in itertools.pairwise(points):
                writer.write(wire[a:b])
                await writer.drain()
                await asyncio.sleep(0)
            if close:
                return

    async def main() -> None:
        async with RawServer(script) as srv:
            pool = RawUpstream(2, 30)
            assert await send(pool, srv.url + "/a") == (200, body)
            assert await send(pool, srv.url + "/b") == (200, b"!")
            assert srv.connections == (2 if close else 1)
            await pool.close()

    asyncio.run(asyncio.wait_for(main(), GUARD_S))


# --------------------------------------------------------------------------- wiring, cancel


async def test_open_upstream_auto_is_raw_and_explicit_names_keep_their_meaning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from apidistill.proxy import upstream

    assert isinstance(open_upstream("auto", max_connections=2, timeout_s=5), RawUpstream)
    for name, cls in (("aiohttp", upstream._Aiohttp), ("httpx2", upstream._Httpx2)):
        pool = open_upstream(name, max_connections=2, timeout_s=5)
        assert isinstance(pool, cls)
        await pool.close()
    monkeypatch.setitem(__import__("sys").modules, "httptools", None)  # as if not installed
    monkeypatch.delitem(__import__("sys").modules, "apidistill.proxy.raw_upstream")
    pool = open_upstream("auto", max_connections=2, timeout_s=5)
    assert isinstance(pool, upstream._Aiohttp)
    await pool.close()


async def test_cancelled_sends_give_their_socket_and_slot_back() -> None:
    async with RawServer(_silent) as silent, RawServer(_keep_alive_ok) as ok:
        pool = RawUpstream(1, 300)
        with pytest.raises(TimeoutError):  # cancelled while waiting for the answer's head
            await asyncio.wait_for(send(pool, silent.url + "/x"), 0.2)
        assert pool._open == 0 and not pool._all  # that socket is closed, its slot free
        held = await pool.send("POST", ok.url + "/x", content=b"{}", headers={}, params=None)
        for handed_off in (False, True):
            waiting = asyncio.create_task(send(pool, ok.url + "/x"))
            for _ in range(100):  # until it waits in the queue for the one slot
                if pool._waiters:
                    break
                await asyncio.sleep(0)
            assert len(pool._waiters) == 1  # a cancelled wait leaves the queue
            if handed_off:  # the socket is handed to the queued send, cancelled before it runs
                assert await held.read() == b"ok"
                await held.close()
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        assert await send(pool, ok.url + "/x") == (200, b"ok")
        assert ok.connections == 1 and pool._open == 1  # the handed-off socket came back
        await pool.close()


async def test_a_reused_socket_that_dies_is_sent_and_never_retried() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await read_request(reader)  # the second request on this socket: no answer, FIN

    async with RawServer(script) as srv:
        pool = RawUpstream(2, 30)
        assert await send(pool, srv.url + "/x") == (200, b"ok")
        with pytest.raises(UpstreamError) as err:
            await send(pool, srv.url + "/x")
        assert err.value.sent is True  # the teacher may have billed it
        assert srv.connections == 1  # no silent retry on a fresh socket
        await pool.close()


async def test_a_reset_ends_a_body_without_length_as_broken_not_complete() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\npartial")
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # linger 0: an RST, not a FIN

    async with RawServer(script) as srv:
        pool = RawUpstream(2, 30)
        with pytest.raises(UpstreamError) as err:
            await send(pool, srv.url + "/x")
        assert err.value.sent is True
        await pool.close()


async def test_a_paused_stream_is_not_a_teacher_timeout() -> None:
    """While the pool holds a socket paused (nobody reads), the teacher's silence is ours: a
    read after longer than timeout_s still gets the whole body."""
    blob = b"x" * (2 * 1024 * 1024)

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(blob) + blob)
        await writer.drain()

    async with RawServer(script) as srv:
        pool = RawUpstream(2, 1.0)
        resp = await pool.send("POST", srv.url + "/x", content=b"{}", headers={}, params=None)
        for _ in range(2000):
            if resp._conn.paused:
                break
            await asyncio.sleep(0.005)
        assert resp._conn.paused
        await asyncio.sleep(1.5)  # longer than timeout_s, all of it paused by us
        assert await resp.read() == blob
        await resp.close()
        await pool.close()
