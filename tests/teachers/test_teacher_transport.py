"""Both SDK transports (``teacher.transport``) against the real fault server process.

Every fault kind of :mod:`apidistill.testing.fault_server` is sent once on httpx2 and once
on aiohttp, and must map exactly as the table in ``apidistill/teachers/failures.py`` says:
the SDKs' vendored aiohttp adapter labels a reset after sending a "connect timeout", and
that must never become ``maybe_billed=False`` (a retry would then not be counted as a
possible second payment).
"""

from __future__ import annotations

import asyncio
import gc
import socket
import warnings
from collections.abc import Iterator

import httpx2
import openai
import pytest

from apidistill.config import TeacherConfig
from apidistill.errors import (
    ConfigError,
    RateLimited,
    TeacherError,
    TeacherTimeout,
    TeacherUnavailable,
)
from apidistill.records import GenerationParams, Message, TeacherRequest
from apidistill.teachers import make_teacher
from apidistill.teachers.anthropic import AnthropicTeacher
from apidistill.teachers.failures import map_failure
from apidistill.teachers.openai import OpenAITeacher
from apidistill.teachers.transport import resolve_transport, sdk_http_client
from apidistill.testing.fault_server import BODY_FAULTS, HTTP_FAULTS, FaultServerProcess

TIMEOUT_S = 1.0

# fault → (error class, maybe_billed), from the table in apidistill/teachers/failures.py
EXPECTED: dict[str, tuple[type[TeacherError], bool]] = {
    "429": (RateLimited, False),
    "529": (RateLimited, False),
    "500": (TeacherUnavailable, False),
    "503": (TeacherUnavailable, False),
    "502": (TeacherUnavailable, True),  # a gateway gave up: the backend may have billed
    "timeout": (TeacherTimeout, True),  # read timeout after sending
    "reset": (TeacherUnavailable, True),  # RST after the server read the request
    "half_body": (TeacherUnavailable, True),
    "invalid_json": (TeacherUnavailable, True),
    "wrong_content_type": (TeacherUnavailable, True),
}


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServerProcess]:
    with FaultServerProcess() as srv:
        yield srv


def chat(text: str) -> TeacherRequest:
    return TeacherRequest(
        messages=[Message(role="user", content=text)], params=GenerationParams(max_tokens=8)
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_fault_kind_has_an_expectation():
    assert set(EXPECTED) == set(HTTP_FAULTS + BODY_FAULTS)


@pytest.mark.parametrize("kind", sorted(EXPECTED))
async def test_fault_maps_per_table(server, transport, kind):
    server.reset()
    server.configure(fault_rate=1.0, faults={kind: 1.0}, latency_ms=0, hang_s=TIMEOUT_S + 2)
    teacher = OpenAITeacher(
        "fault-model", base_url=server.base_url, timeout_s=TIMEOUT_S, transport=transport
    )
    assert teacher.transport == transport
    cls, billed = EXPECTED[kind]
    try:
        with pytest.raises(TeacherError) as info:
            await teacher.complete(chat(f"{kind} on {transport}"))
    finally:
        await teacher.aclose()
    err = info.value
    assert type(err) is cls, (kind, transport, repr(err), repr(err.__cause__))
    assert err.maybe_billed is billed, (kind, transport, str(err))
    assert server.stats()["received"] == 1  # the SDK never retried on either transport


async def test_aiohttp_reset_after_send_is_maybe_billed(server):
    """The case that kept aiohttp from being the default: openai's adapter raises
    ``httpx2.ConnectTimeout`` for it, yet the request was sent (and maybe billed)."""
    server.reset()
    server.configure(fault_rate=1.0, faults={"reset": 1.0}, latency_ms=0)
    teacher = OpenAITeacher("fault-model", base_url=server.base_url, transport="aiohttp")
    try:
        with pytest.raises(TeacherUnavailable) as info:
            await teacher.complete(chat("reset after send"))
    finally:
        await teacher.aclose()
    assert info.value.maybe_billed is True
    assert info.value.status is None
    assert server.stats()["received"] == 1


@pytest.mark.parametrize("make", [OpenAITeacher, AnthropicTeacher])
async def test_aiohttp_connection_refused_is_not_billed(make):
    base = f"http://127.0.0.1:{_free_port()}"
    kwargs = {"base_url": base + "/v1"} if make is OpenAITeacher else {"base_url": base}
    teacher = make("m", transport="aiohttp", **kwargs)
    try:
        with pytest.raises(TeacherUnavailable) as info:
            await teacher.complete(chat("refused"))
    finally:
        await teacher.aclose()
    assert info.value.maybe_billed is False


@pytest.mark.parametrize("read_first", [True, False])
async def test_server_disconnect_is_maybe_billed(transport, read_first):
    """The server closes (FIN) after reading the request head, or before reading anything:
    a client cannot tell whether the request was processed, so both are maybe billed."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if read_first:
            await reader.readuntil(b"\r\n\r\n")
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    teacher = OpenAITeacher(
        "m", base_url=f"http://127.0.0.1:{port}/v1", timeout_s=TIMEOUT_S, transport=transport
    )
    try:
        with pytest.raises(TeacherUnavailable) as info:
            await teacher.complete(chat("disconnect"))
    finally:
        await teacher.aclose()
        srv.close()
        await srv.wait_closed()
    assert info.value.maybe_billed is True


async def test_pool_timeout_is_not_billed(server, transport):
    """A request that waited for a connection slot and gave up was never sent (the SDK
    client as the teachers build it, with a pool limit shorter than the read limit)."""
    server.reset()
    server.configure(fault_rate=0.0, latency_ms=1500)
    client = openai.AsyncOpenAI(
        api_key="k",
        base_url=server.base_url,
        max_retries=0,
        timeout=httpx2.Timeout(5.0, pool=0.3),
        http_client=sdk_http_client(openai, transport, max_connections=1),
    )

    async def send(text: str) -> object:
        return await client.chat.completions.with_raw_response.create(
            model="fault-model", messages=[{"role": "user", "content": text}], max_tokens=8
        )

    try:
        first = asyncio.create_task(send("holds the only connection"))
        await asyncio.sleep(0.1)
        with pytest.raises(openai.APITimeoutError) as info:
            await send("waits for the pool")
        await first
    finally:
        await client.close()
    err = map_failure("openai_compatible", info.value)
    assert type(err) is TeacherTimeout and err.maybe_billed is False, str(err)
    assert server.stats()["received"] == 1


async def test_answers_match_on_both_transports(server):
    server.reset()
    server.configure(fault_rate=0.0, latency_ms=0)
    texts = {}
    for transport in ("httpx2", "aiohttp"):
        async with OpenAITeacher(
            "fault-model", base_url=server.base_url, transport=transport
        ) as teacher:
            resp = await teacher.complete(chat("same answer"))
        texts[transport] = (resp.completion.text, resp.completion.usage)
        assert resp.headers["content-type"].startswith("application/json")
    assert texts["httpx2"] == texts["aiohttp"]


async def test_aclose_leaves_no_unclosed_session(server):
    server.reset()
    server.configure(fault_rate=0.0, latency_ms=0)
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    old = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: reported.append(str(ctx.get("message"))))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            teacher = OpenAITeacher("fault-model", base_url=server.base_url, transport="aiohttp")
            await asyncio.gather(*(teacher.complete(chat(f"close {i}")) for i in range(8)))
            await teacher.aclose()
            del teacher
            gc.collect()
            await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(old)
    assert not [m for m in reported if "nclosed" in m], reported
    assert not [w for w in caught if "nclosed" in str(w.message)], [str(w.message) for w in caught]


def test_transport_resolution_and_config(monkeypatch):
    assert resolve_transport("auto") == "aiohttp"  # aiohttp is a dependency
    assert resolve_transport("httpx2") == "httpx2"
    with pytest.raises(ConfigError):
        resolve_transport("curl")
    monkeypatch.setattr("apidistill.teachers.transport.aiohttp_available", lambda: False)
    assert resolve_transport("auto") == "httpx2"
    with pytest.raises(ConfigError):
        resolve_transport("aiohttp")


def test_make_teacher_passes_the_transport():
    base = {"provider": "openai_compatible", "model": "m", "base_url": "http://127.0.0.1:9/v1"}
    assert TeacherConfig(**base).transport == "auto"
    assert make_teacher(TeacherConfig(**base)).transport == "aiohttp"
    t = make_teacher(TeacherConfig(**base, transport="httpx2"))
    assert t.transport == "httpx2" and "transport='httpx2'" in repr(t)
    a = make_teacher(
        TeacherConfig(provider="anthropic", model="c", transport="httpx2"), api_key="k"
    )
    assert a.transport == "httpx2"
    with pytest.raises(ValueError):
        TeacherConfig(**base, transport="curl")
