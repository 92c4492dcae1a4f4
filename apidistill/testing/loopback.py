"""A loopback test server in its own process, as a real provider is: start, stats, stop.

The server module must accept ``--port 0`` and print ``... listening on http://HOST:PORT``
once it accepts connections; this class reads that line for the port.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any, Self

__all__ = ["LoopbackServerProcess", "stop_process"]


def stop_process(proc: subprocess.Popen[Any], *, grace_s: float) -> None:
    """SIGTERM a test server, SIGKILL it if it is still running after ``grace_s`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class LoopbackServerProcess:
    """``with Subclass(...) as srv: srv.base_url``; subclasses name the module to run."""

    module: str = ""
    label: str = "loopback server"

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.port: int | None = None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def args(self) -> list[str]:
        """Extra command-line arguments for the server module."""
        return []

    def start(self, timeout_s: float = 30.0) -> Self:
        cmd = [sys.executable, "-m", self.module, "--port", "0", *self.args()]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if "listening on" in line or not line:
                break
        if "listening on" not in line:
            self.close()
            raise RuntimeError(f"{self.label} did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])
        return self

    def _client(self) -> Any:
        import httpx2

        return httpx2.Client(base_url=self.root, timeout=30.0)

    def stats(self) -> dict[str, Any]:
        with self._client() as c:
            return c.get("/__stats").raise_for_status().json()

    def close(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace_s=10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
