"""The proxy's own HTTP/1.1 front (apidistill/proxy/http_front.py), over raw sockets: what
clients rely on beyond one request per connection — keep-alive, pipelining, chunked request
bodies, ``Expect: 100-continue``, HTTP/1.0, malformed and oversized requests, a client that
leaves mid-stream, an orderly stop on SIGTERM — and a handler that fails is a 500 in the API's
error envelope. The SDK suites (test_proxy_forward.py and the rest) run on the front too."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sqlite3
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httptools
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from apidistill.proxy.http_front import IDLE_S, MAX_BODY, FrontServer
from apidistill.testing.proxy_process import ProxyProcess
from apidistill.testing.proxy_teacher import ProxyTeacherProcess
from tests.proxy.conftest import CLIENT_KEY, proxy_settings

_CHAT = json.dumps(
    {"model": "gpt-4o-mini", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
).encode()


def _post(body: bytes = _CHAT, path: str = "/v1/chat/completions", extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {CLIENT_KEY}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


class _Answers:
    """Answers read off one socket with httptools' response parser (a real HTTP parser)."""

    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[tuple[int, dict[str, str], bytes]] = []
        self.headers: dict[str, str] = {}
        self.body = b""
        self.eof = False

    def on_message_begin(self) -> None:
        self.headers, self.body = {}, b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done.append((self.parser.get_status_code(), self.headers, self.body))

    def read(self, n: int) -> list[tuple[int, dict[str, str], bytes]]:
        while len(self.done) < n and not self.eof:
            assert self.sock is not None
            data = self.sock.recv(65536)
            if not data:
                self.eof = True
                break
            self.parser.feed_data(data)
        out, self.done = self.done[:n], self.done[n:]
        return out

    def closed(self) -> bool:
        """The server closed the connection (the next read is end-of-file)."""
        return self.eof or (self.sock is not None and self.sock.recv(1) == b"")


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    from apidistill.testing.proxy_process import write_proxy_config

    tmp = tmp_path_factory.mktemp("front")
    with ProxyTeacherProcess() as teacher:
        cfg = write_proxy_config(tmp / "proxy.yaml", proxy_settings(teacher, tmp))
        with ProxyProcess(cfg, tmp / "proxy.log") as proxy:
            yield proxy


def _connect(proxy: ProxyProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=30)


def test_the_front_serves_and_says_so(front: ProxyProcess) -> None:
    assert "server apidistill front" in front.log()


def test_keep_alive_then_connection_close(front: ProxyProcess) -> None:
    with _connect(front) as sock:
        answers = _Answers(sock)
        for _ in range(3):  # one connection, one request after another
            sock.sendall(_post())
            [(status, headers, body)] = answers.read(1)
            assert status == 200 and json.loads(body)["object"] == "chat.completion"
            assert "connection" not in headers
        sock.sendall(_post(extra="connection: close\r\n"))
        [(status, headers, _)] = answers.read(1)
        assert status == 200 and headers["connection"] == "close"
        assert answers.closed()


def test_pipelined_requests_are_answered_in_order(front: ProxyProcess) -> None:
    with _connect(front) as sock:
        sock.sendall(
            _post()
            + b"GET /no-such-page HTTP/1.1\r\nhost: x\r\n\r\n"
            + _post(path="/v1/messages", extra="anthropic-version: 2023-06-01\r\n",
                    body=json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 8,
                                     "messages": [{"role": "user", "content": "hi"}]}).encode())
            + b"GET /stats HTTP/1.1\r\nhost: x\r\n\r\n"
        )  # fmt: skip
        got = _Answers(sock).read(4)
    assert [s for s, _, _ in got] == [200, 404, 200, 200]
    assert json.loads(got[0][2])["object"] == "chat.completion"
    assert "not one of them" in json.loads(got[1][2])["error"]["message"]
    assert json.loads(got[2][2])["type"] == "message"
    assert "routes" in json.loads(got[3][2])


def test_chunked_request_body(front: ProxyProcess) -> None:
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {CLIENT_KEY}\r\n"
        "content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    ).encode()
    parts = [_CHAT[:10], _CHAT[10:25], _CHAT[25:]]
    with _connect(front) as sock:
        sock.sendall(head)
        for part in parts:
            sock.sendall(b"%x\r\n%b\r\n" % (len(part), part))
        sock.sendall(b"0\r\n\r\n")
        [(status, _, body)] = _Answers(sock).read(1)
    assert status == 200 and json.loads(body)["object"] == "chat.completion"


def test_expect_100_continue(front: ProxyProcess) -> None:
    with _connect(front) as sock:
        sock.sendall(_post(extra="expect: 100-continue\r\n")[: -len(_CHAT)])
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            interim += sock.recv(1)  # nothing else may come before the body is sent
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(_CHAT)
        [(status, _, body)] = _Answers(sock).read(1)
    assert status == 200 and json.loads(body)["object"] == "chat.completion"


def test_http_1_0_is_answered_then_closed(front: ProxyProcess) -> None:
    with _connect(front) as sock:
        sock.sendall(_post().replace(b"HTTP/1.1", b"HTTP/1.0", 1))
        answers = _Answers(sock)
        [(status, headers, body)] = answers.read(1)
        assert status == 200 and json.loads(body)["object"] == "chat.completion"
        assert headers["connection"] == "close" and answers.closed()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"THIS IS NOT HTTP\r\n\r\n", 400),
        (b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: abc\r\n\r\n", 400),
        (b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: %d\r\n\r\n" % (MAX_BODY + 1),
         413),
        (b"GET /stats HTTP/1.1\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    ],
    ids=["garbage", "bad-length", "body-over-64MiB", "head-over-64KiB"],
)  # fmt: skip
def test_bad_requests_get_an_answer_and_the_connection_closes(
    front: ProxyProcess, request_bytes: bytes, status: int
) -> None:
    with _connect(front) as sock:
        sock.sendall(_post() + request_bytes)  # after a good one: answered in order
        answers = _Answers(sock)
        got = answers.read(2)
        assert [s for s, _, _ in got] == [200, status]
        assert got[1][1]["connection"] == "close"
        assert json.loads(got[1][2])["error"]["message"].startswith("apidistill proxy: ")
        assert answers.closed()


def test_a_413_comes_before_the_body_is_sent(front: ProxyProcess) -> None:
    with _connect(front) as sock:  # Expect: the client waits; the answer is 413, not 100
        sock.sendall(_post(extra="expect: 100-continue\r\n")[: -len(_CHAT)].replace(
            b"content-length: %d" % len(_CHAT), b"content-length: %d" % (MAX_BODY + 1)))  # fmt: skip
        [(status, _, _)] = _Answers(sock).read(1)
    assert status == 413


def test_an_anthropic_client_gets_its_413_in_anthropic_s_envelope(front: ProxyProcess) -> None:
    with _connect(front) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nanthropic-version: 2023-06-01\r\n"
                     b"content-length: %d\r\n\r\n" % (MAX_BODY + 1))  # fmt: skip
        [(status, _, body)] = _Answers(sock).read(1)
    assert status == 413
    assert json.loads(body)["error"]["type"] == "request_too_large"


def _row_status(path: Path) -> tuple[Any, ...]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT status, cost_usd, reserved_usd FROM exchanges").fetchone()


def test_client_gone_mid_stream_cancels_the_relay(start_proxy, tmp_path: Path) -> None:
    with ProxyTeacherProcess(stream_delay_ms=10_000) as slow:
        proxy = start_proxy(proxy_settings(slow, tmp_path, budget={"usd": "1"}))
        body = json.loads(_CHAT) | {"stream": True}
        with _connect(proxy) as sock:
            sock.sendall(_post(json.dumps(body).encode()))
            first = b""
            while b"data: " not in first:  # the head, then the first event
                first += sock.recv(65536)
            assert first.startswith(b"HTTP/1.1 200")
        # the teacher's next event is 10 s away: a relay that waited for it to notice the
        # disconnect would leave the row 'started' that long; the front cancels it at once
        for _ in range(100):
            status, cost, reserved = _row_status(tmp_path / "captures.sqlite")
            if status != "started":
                break
            time.sleep(0.05)
        assert status == "failed" and Decimal(cost) == Decimal(reserved) > 0


def test_sigterm_lets_an_answer_in_flight_finish(start_proxy, tmp_path: Path) -> None:
    with ProxyTeacherProcess(latency_ms=800) as slow:
        proxy = start_proxy(proxy_settings(slow, tmp_path))
        with _connect(proxy) as sock:
            sock.sendall(_post())
            time.sleep(0.3)  # the request is at the teacher
            assert proxy.proc is not None
            proxy.proc.send_signal(signal.SIGTERM)
            [(status, _, body)] = _Answers(sock).read(1)
        assert status == 200 and json.loads(body)["object"] == "chat.completion"
        assert proxy.proc.wait(timeout=30) == 0
    assert _row_status(tmp_path / "captures.sqlite")[0] == "done"


class _Failing:
    """A proxy whose handler raises (a bug): the client must still get an answer."""

    async def forward(self, *args: object) -> None:
        raise RuntimeError("boom")


def test_a_failing_handler_is_a_500_in_the_api_envelope() -> None:
    app = Starlette(routes=[Route("/ping", lambda r: PlainTextResponse("pong"))])
    app.state.proxy = _Failing()

    async def main() -> list[Any]:
        front = FrontServer(app, asyncio.get_running_loop())
        port = await front.listen("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_post() + _post(path="/v1/messages", extra="anthropic-version: x\r\n")
                     + b"GET /ping HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")  # fmt: skip
        raw = await reader.read()  # to end-of-file: the last request closes
        writer.close()
        await front.stop()
        return raw

    answers = _Answers(None)
    answers.parser.feed_data(asyncio.run(main()))
    (s1, _, b1), (s2, _, b2), (s3, _, b3) = answers.done
    assert (s1, s2, s3) == (500, 500, 200) and b3 == b"pong"
    assert json.loads(b1)["error"]["type"] == "server_error"
    assert json.loads(b2)["type"] == "error" and json.loads(b2)["error"]["type"] == "api_error"


def test_accepted_sockets_have_tcp_nodelay() -> None:
    app = Starlette(routes=[Route("/ping", lambda r: PlainTextResponse("pong"))])
    app.state.proxy = _Failing()

    async def main() -> int:
        front = FrontServer(app, asyncio.get_running_loop())
        port = await front.listen("127.0.0.1", 0)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        while not front.connections:
            await asyncio.sleep(0.01)
        [conn] = front.connections
        assert conn.transport is not None
        flag = conn.transport.get_extra_info("socket").getsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY
        )
        writer.close()
        await front.stop()
        return int(flag)

    assert asyncio.run(main()) != 0


def test_uvicorn_on_request(start_proxy, tmp_path: Path) -> None:
    with ProxyTeacherProcess() as teacher:
        proxy = start_proxy(proxy_settings(teacher, tmp_path),
                            env={"APIDISTILL_PROXY_SERVER": "uvicorn"})  # fmt: skip
        with _connect(proxy) as sock:
            sock.sendall(_post())
            [(status, headers, _)] = _Answers(sock).read(1)
    assert status == 200 and headers["server"] == "uvicorn"
    assert "server uvicorn" in proxy.log()


def test_head_gets_the_headers_without_a_body(front: ProxyProcess) -> None:
    with _connect(front) as sock:
        sock.sendall(b"HEAD / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body == b""
    assert int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]) > 0


def test_idle_keep_alive_connections_are_closed_busy_ones_are_not() -> None:
    app = Starlette(routes=[Route("/ping", lambda r: PlainTextResponse("pong"))])
    app.state.proxy = _Failing()

    async def main() -> tuple[bytes, bool]:
        front = FrontServer(app, asyncio.get_running_loop())
        port = await front.listen("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ping HTTP/1.1\r\nhost: x\r\n\r\n")
        await reader.readuntil(b"pong")
        [conn] = front.connections
        front.sweep_idle()  # just answered: stays open
        still_open = conn in front.connections and not conn.transport.is_closing()
        conn.last_active -= IDLE_S + 1  # as if the client had said nothing for IDLE_S
        front.sweep_idle()
        rest = await asyncio.wait_for(reader.read(), 30)  # end-of-file: the server closed
        writer.close()
        await front.stop()
        return rest, still_open

    rest, still_open = asyncio.run(main())
    assert rest == b"" and still_open
