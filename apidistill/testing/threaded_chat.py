"""A loopback chat-completions server on its own thread, for tests that shape each answer.

Subclasses implement :meth:`ThreadedChatServer.chat` (the ``POST /v1/chat/completions``
handler), or override :meth:`ThreadedChatServer.routes` for other endpoints; the base class owns the event loop, the free port on 127.0.0.1 and the shutdown, so
a test that needs one odd answer (a 401 that echoes the key, raw payload bytes, a key check)
writes only that answer.
"""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web

__all__ = ["ThreadedChatServer"]


class ThreadedChatServer:
    """Serves :meth:`chat` at ``base_url`` until :meth:`close`; started by ``__init__``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(ready,), daemon=True)
        self.thread.start()
        if not ready.wait(30):
            raise RuntimeError("the loopback chat server did not start within 30 s")

    async def chat(self, request: web.Request) -> web.Response:
        raise NotImplementedError

    def routes(self, app: web.Application) -> None:
        """The endpoints served; by default only :meth:`chat`."""
        app.router.add_post("/v1/chat/completions", self.chat)

    def _main(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        self.routes(app)
        self.runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = self.runner.addresses[0][1]
        ready.set()
        self.loop.run_forever()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
