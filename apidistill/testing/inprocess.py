"""An ASGI app served by uvicorn on a thread, on a free loopback port, for tests that need the
real HTTP stack but not a child process (in-process engines, fakes)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["serve_in_thread"]


@contextlib.contextmanager
def serve_in_thread(
    app: Any, *, startup_timeout_s: float = 60.0, **config: Any
) -> Iterator[tuple[str, Any]]:
    """``with serve_in_thread(app) as (root_url, server):`` — ``root_url`` is
    ``http://127.0.0.1:PORT``; ``config`` goes to ``uvicorn.Config`` (quiet by default). The
    server stops (and its thread is joined) when the block ends."""
    import uvicorn

    from apidistill.serve.app import bind_socket

    sock = bind_socket("127.0.0.1", 0)
    settings = {"log_level": "warning", "access_log": False, **config}
    server = uvicorn.Server(uvicorn.Config(app, **settings))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the in-process server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
