"""Which HTTP transport the official SDK clients run on: ``teacher.transport``.

Both SDKs (``openai`` 3.x, ``anthropic`` 2.x) are ``httpx2`` clients; each also ships an
aiohttp transport (``DefaultAioHttpClient``, the ``[aiohttp]`` extra) behind the same API.
At concurrency 64 against a loopback server the aiohttp transport spends far less CPU per
request (docs/harvest.md, benchmarks/RESULTS.md), so ``auto`` picks it whenever ``aiohttp``
imports and falls back to httpx2 otherwise.

The two transports fail differently: the SDKs' vendored aiohttp transport re-labels most
aiohttp errors (the openai copy calls a reset after sending a ``ConnectTimeout``), so
:mod:`apidistill.teachers.failures` classifies from the aiohttp exception kept in the cause
chain, never from that label. Tests run every fault over both transports.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

import httpx2

from apidistill.errors import ConfigError

__all__ = ["TRANSPORTS", "Transport", "aiohttp_available", "resolve_transport", "sdk_http_client"]

Transport = Literal["auto", "httpx2", "aiohttp"]
TRANSPORTS: tuple[str, ...] = ("auto", "httpx2", "aiohttp")


def aiohttp_available() -> bool:
    return importlib.util.find_spec("aiohttp") is not None


def resolve_transport(transport: str) -> Literal["httpx2", "aiohttp"]:
    """``auto`` → ``aiohttp`` when it is installed, else ``httpx2``; the others as given."""
    if transport not in TRANSPORTS:
        raise ConfigError(
            f"unknown transport {transport!r}",
            key="teacher.transport",
            hint=f"use one of: {', '.join(TRANSPORTS)}",
        )
    if transport == "auto":
        return "aiohttp" if aiohttp_available() else "httpx2"
    if transport == "aiohttp" and not aiohttp_available():
        raise ConfigError(
            "teacher.transport is 'aiohttp' but aiohttp is not installed",
            key="teacher.transport",
            hint="pip install 'openai[aiohttp]', or set teacher.transport: httpx2",
        )
    return transport  # type: ignore[return-value]


def sdk_http_client(sdk: Any, transport: str, *, max_connections: int) -> Any:
    """The ``http_client`` for an SDK module (``openai`` or ``anthropic``) on ``transport``.

    Both are ``httpx2.AsyncClient`` subclasses with the SDK's defaults; closing the SDK
    client closes them (the aiohttp one closes its ``ClientSession``, which it opens lazily
    in the loop of the first request)."""
    limits = httpx2.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    if resolve_transport(transport) == "aiohttp":
        return sdk.DefaultAioHttpClient(limits=limits)
    return sdk.DefaultAsyncHttpxClient(limits=limits)
