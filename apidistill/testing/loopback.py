"""A loopback test server in its own process, as a real provider is: start, stats, stop.

The server module must accept ``--port 0`` and print ``... listening on http://HOST:PORT``
once it accepts connections; this class reads that line for the port.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from typing import IO, Any, Self

__all__ = ["LoopbackServerProcess", "close_process", "spawn_listening", "stop_process"]


def stop_process(proc: subprocess.Popen[Any], *, grace_s: float) -> None:
    """SIGTERM a test server, SIGKILL it if it is still running after ``grace_s`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def close_process(proc: subprocess.Popen[str], *, grace_s: float = 10) -> None:
    """Stop a server started by :func:`spawn_listening` and close its stdout pipe."""
    stop_process(proc, grace_s=grace_s)
    if proc.stdout is not None:
        proc.stdout.close()


def spawn_listening(
    cmd: list[str],
    *,
    label: str,
    timeout_s: float,
    stderr: IO[str] | None = None,
    env: dict[str, str] | None = None,
    failure_detail: Callable[[], str] | None = None,
) -> tuple[subprocess.Popen[str], int]:
    """Start ``cmd`` and wait for its ``... listening on http://HOST:PORT`` line.

    Every test server process (loopback providers, the capture proxy) announces its port
    this way, so the spawn/read/stop loop lives here once. Returns the process and the
    port; if the line never comes (exit, other output, timeout) the process is stopped
    and ``RuntimeError`` names ``label``, the last line read and ``failure_detail()``.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    assert proc.stdout is not None
    deadline, line = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "listening on" in line or not line:
            break
    if "listening on" not in line:
        close_process(proc)
        detail = f"\n{failure_detail()}" if failure_detail is not None else ""
        raise RuntimeError(f"{label} did not start: {line!r}{detail}")
    return proc, int(line.rsplit(":", 1)[1])


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
        self.proc, self.port = spawn_listening(cmd, label=self.label, timeout_s=timeout_s)
        return self

    def _client(self) -> Any:
        import httpx2

        return httpx2.Client(base_url=self.root, timeout=30.0)

    def stats(self) -> dict[str, Any]:
        with self._client() as c:
            return c.get("/__stats").raise_for_status().json()

    def close(self) -> None:
        if self.proc is not None:
            close_process(self.proc, grace_s=10)
        self.proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
