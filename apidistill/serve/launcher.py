"""Start ``apidistill serve`` as a child process and wait until it answers.

Used by the demo pipeline (self-hosted teacher and student) and by tests of other stages::

    with launch_server("smollm2-135m-instruct") as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="unused")

A separate process, not a thread: the server sets torch's thread count and owns a model,
and a crash or ``kill`` of it must not take the caller down. The API key travels in an
environment variable, never on the command line (where ``ps`` would show it).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from types import TracebackType

from apidistill.errors import ApidistillError, ModelLoadError

__all__ = ["ServerHandle", "launch_server"]

_READY = re.compile(r"apidistill serve: ready on (http://\S+?)/v1\s*$")
_KEY_ENV = "APIDISTILL_SERVE_API_KEY"


class ServerHandle:
    """A running server child. ``close()`` (or leaving the ``with`` block) stops it."""

    def __init__(self, proc: subprocess.Popen[str], root_url: str, stderr_tail: deque[str]):
        self.proc = proc
        self.root_url = root_url  # http://127.0.0.1:PORT
        self.base_url = root_url + "/v1"
        self.port = int(root_url.rsplit(":", 1)[1])
        self._stderr_tail = stderr_tail
        self._finalizer = weakref.finalize(self, _stop, proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_tail(self) -> str:
        return "\n".join(self._stderr_tail)

    def close(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        self._finalizer.detach()
        _stop(self.proc, timeout)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ServerHandle(base_url={self.base_url!r}, pid={self.pid})"


def _stop(proc: subprocess.Popen[str], timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def launch_server(
    model: str = "smollm2-135m-instruct",
    *,
    adapter: str | None = None,
    port: int = 0,
    api_key: str | None = None,
    max_batch_size: int = 16,
    served_model_name: str | None = None,
    extra_args: Sequence[str] = (),
    startup_timeout: float = 180.0,
    env: Mapping[str, str] | None = None,
) -> ServerHandle:
    """Start a server on 127.0.0.1 and return once it accepts requests.

    Raises :class:`ModelLoadError` (model problems) or :class:`ApidistillError` (anything
    else) with the child's last stderr lines when it exits or stays silent past
    ``startup_timeout`` seconds.
    """
    cmd = [
        sys.executable, "-m", "apidistill", "serve",
        "--model", model,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--max-batch-size", str(max_batch_size),
    ]  # fmt: skip
    if adapter:
        cmd += ["--adapter", adapter]
    if served_model_name:
        cmd += ["--served-model-name", served_model_name]
    child_env = {**os.environ, **(env or {})}
    child_env.setdefault("HF_HUB_OFFLINE", "1")
    child_env.setdefault("TRANSFORMERS_OFFLINE", "1")
    child_env["PYTHONUNBUFFERED"] = "1"
    if api_key:
        child_env[_KEY_ENV] = api_key
        cmd += ["--api-key-env", _KEY_ENV]
    cmd += list(extra_args)
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env,
    )
    stderr_tail: deque[str] = deque(maxlen=40)
    ready: list[str] = []
    seen = threading.Event()

    def read_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:  # keep draining after ready so the pipe never fills
            m = _READY.search(line.strip())
            if m and not ready:
                ready.append(m.group(1))
                seen.set()
        seen.set()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr_tail.append(line.rstrip())

    threading.Thread(target=read_stdout, daemon=True, name="apidistill-serve-out").start()
    err_thread = threading.Thread(target=read_stderr, daemon=True, name="apidistill-serve-err")
    err_thread.start()
    deadline = time.monotonic() + startup_timeout
    while not seen.wait(0.1):
        if time.monotonic() > deadline:
            _stop(proc)
            raise ApidistillError(
                f"apidistill serve did not become ready within {startup_timeout:.0f} s"
                + _tail(stderr_tail),
                hint="raise startup_timeout on a slow machine (the first load of a GGUF "
                "model converts it once, ~20 s)",
            )
    if ready:
        return ServerHandle(proc, ready[0], stderr_tail)
    proc.wait(10)
    err_thread.join(2)
    text = _tail(stderr_tail)
    cls = (
        ModelLoadError
        if any(w in text.lower() for w in ("model", "gguf", "tokenizer"))
        else ApidistillError
    )
    raise cls(f"apidistill serve exited with code {proc.returncode} before it was ready{text}")


def _tail(lines: deque[str]) -> str:
    kept = [ln for ln in list(lines)[-8:] if ln.strip()]
    return (":\n  " + "\n  ".join(kept)) if kept else ""
