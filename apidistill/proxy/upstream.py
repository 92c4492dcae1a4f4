"""The proxy's one shared upstream connection pool, on the teacher's transport.

``teacher.transport: auto`` picks the bare keep-alive HTTP/1.1 pool of
:mod:`apidistill.proxy.raw_upstream` (asyncio protocols + httptools) when ``httptools`` imports:
the upstream hop is the largest part of the proxy's own CPU per request that a general client
spends on things the proxy never uses (benchmarks/proxy_overhead.py, docs/proxy.md). Without
httptools ``auto`` falls back as for the harvest (:mod:`apidistill.teachers.transport`): aiohttp
when installed, else ``httpx2``; ``aiohttp`` and ``httpx2`` named explicitly keep their meaning.
All are wrapped in the same small interface, and their failures in one :class:`UpstreamError`
that says whether the request may have reached the teacher (so the budget knows whether it may
have been billed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol

from apidistill.teachers.transport import resolve_transport

__all__ = ["Upstream", "UpstreamError", "UpstreamResponse", "open_upstream"]


class UpstreamError(Exception):
    """The teacher did not answer; ``sent`` = the request may have reached it."""

    def __init__(self, message: str, *, sent: bool, timeout: bool) -> None:
        super().__init__(message)
        self.sent, self.timeout = sent, timeout


class UpstreamResponse(Protocol):
    status: int
    headers: list[tuple[str, str]]

    async def read(self) -> bytes: ...
    def chunks(self) -> AsyncIterator[bytes]: ...
    async def close(self) -> None: ...


class Upstream(Protocol):
    async def send(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None,
        headers: Mapping[str, str],
        params: Sequence[tuple[str, str]] | None,
    ) -> UpstreamResponse: ...
    async def close(self) -> None: ...


# --------------------------------------------------------------------------- aiohttp


class _AioResponse:
    def __init__(self, resp: Any) -> None:
        self._r = resp
        self.status = resp.status
        self.headers = list(resp.headers.items())

    async def read(self) -> bytes:
        import aiohttp

        try:
            return await self._r.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamError(f"{type(exc).__name__}: {exc}", sent=True, timeout=False) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        import aiohttp

        try:
            async for chunk in self._r.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamError(f"{type(exc).__name__}: {exc}", sent=True, timeout=False) from exc

    async def close(self) -> None:
        self._r.release()


class _Aiohttp:
    def __init__(self, max_connections: int, timeout_s: float) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(
                total=None, connect=min(10.0, timeout_s), sock_read=timeout_s
            ),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )

    async def send(self, method, url, *, content, headers, params):  # type: ignore[no-untyped-def]
        import aiohttp

        try:
            resp = await self._session.request(
                method, url, data=content, headers=dict(headers), params=params
            )
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError(f"cannot connect: {exc}", sent=False, timeout=False) from exc
        except TimeoutError as exc:
            raise UpstreamError("timed out", sent=True, timeout=True) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"{type(exc).__name__}: {exc}", sent=True, timeout=False) from exc
        return _AioResponse(resp)

    async def close(self) -> None:
        await self._session.close()


# --------------------------------------------------------------------------- httpx2


class _HttpxResponse:
    def __init__(self, resp: Any) -> None:
        self._r = resp
        self.status = resp.status_code
        self.headers = list(resp.headers.items())

    async def read(self) -> bytes:
        import httpx2

        try:
            return await self._r.aread()
        except httpx2.HTTPError as exc:
            raise UpstreamError(f"{type(exc).__name__}: {exc}", sent=True, timeout=False) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        import httpx2

        try:
            async for chunk in self._r.aiter_raw():
                yield chunk
        except httpx2.HTTPError as exc:
            raise UpstreamError(f"{type(exc).__name__}: {exc}", sent=True, timeout=False) from exc

    async def close(self) -> None:
        await self._r.aclose()


class _Httpx2:
    def __init__(self, max_connections: int, timeout_s: float) -> None:
        import httpx2

        self._client = httpx2.AsyncClient(
            limits=httpx2.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=30.0,
            ),
            timeout=httpx2.Timeout(timeout_s, connect=min(10.0, timeout_s)),
            trust_env=False,
        )

    async def send(self, method, url, *, content, headers, params):  # type: ignore[no-untyped-def]
        import httpx2

        try:
            req = self._client.build_request(
                method, url, content=content, headers=headers, params=params
            )
            resp = await self._client.send(req, stream=True)
        except (httpx2.ConnectError, httpx2.ConnectTimeout) as exc:
            raise UpstreamError(f"cannot connect: {exc}", sent=False, timeout=False) from exc
        except httpx2.TimeoutException as exc:
            raise UpstreamError(f"timed out: {exc}", sent=True, timeout=True) from exc
        except httpx2.HTTPError as exc:
            raise UpstreamError(f"{type(exc).__name__}: {exc}", sent=True, timeout=False) from exc
        return _HttpxResponse(resp)

    async def close(self) -> None:
        await self._client.aclose()


def open_upstream(transport: str, *, max_connections: int, timeout_s: float) -> Upstream:
    """The shared pool for ``teacher.transport`` (``auto`` → the raw pool when httptools
    imports, else aiohttp when installed, else httpx2)."""
    resolved = resolve_transport(transport)  # checks the name even when the raw pool is used
    if transport == "auto":
        try:  # an import, not find_spec: a broken or shadowed httptools counts as absent
            from apidistill.proxy.raw_upstream import RawUpstream
        except ImportError:
            pass
        else:
            return RawUpstream(max_connections, timeout_s)
    if resolved == "aiohttp":
        return _Aiohttp(max_connections, timeout_s)
    return _Httpx2(max_connections, timeout_s)
