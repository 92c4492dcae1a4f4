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
from typing import Any

from apidistill.errors import ApidistillError, ModelLoadError

__all__ = ["ServerHandle", "launch_server", "launch_servers"]

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
    backend: str | None = "transformers",
    threads: int | None = None,
) -> ServerHandle:
    """Start a server on 127.0.0.1 and return once it accepts requests.

    Raises :class:`ModelLoadError` (model problems) or :class:`ApidistillError` (anything
    else) with the child's last stderr lines when it exits or stays silent past
    ``startup_timeout`` seconds. ``backend`` is ``--backend``: ``transformers`` by default, so
    the pipeline and the tests keep the engine they were written against (``None`` leaves the
    command's own default, ``auto``); :func:`apidistill.serve.backends.fastest_backend` names
    the fastest one here.
    """
    pending = _spawn(
        model,
        adapter=adapter,
        port=port,
        api_key=api_key,
        max_batch_size=max_batch_size,
        served_model_name=served_model_name,
        extra_args=extra_args,
        env=env,
        backend=backend,
        threads=threads,
    )
    return pending.wait(startup_timeout)


def launch_servers(*specs: Mapping[str, Any], startup_timeout: float = 180.0) -> list[ServerHandle]:
    """Start one server per ``specs`` entry (keyword arguments of :func:`launch_server`) at
    the same time and return them once all accept requests, in order. Model loads overlap,
    so two servers are ready in about the time of the slower one; if any fails to start, the
    others are stopped and its error is raised. Each may take ``startup_timeout`` seconds
    per server started: on a saturated machine loads that overlap share the CPU."""
    pending = [_spawn(**spec) for spec in specs]
    handles: list[ServerHandle] = []
    try:
        for p in pending:
            handles.append(p.wait(startup_timeout * len(pending)))
    except BaseException:
        for h in handles:
            h.close()
        for p in pending[len(handles) :]:
            _stop(p.proc)
        raise
    return handles


class _Pending:
    """A server child that was started and is not known to be ready yet."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.stderr_tail: deque[str] = deque(maxlen=40)
        self.ready: list[str] = []
        self.seen = threading.Event()
        threading.Thread(target=self._read_stdout, daemon=True, name="apidistill-serve-out").start()
        self.err_thread = threading.Thread(
            target=self._read_stderr, daemon=True, name="apidistill-serve-err"
        )
        self.err_thread.start()
        self.started = time.monotonic()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # keep draining after ready so the pipe never fills
            m = _READY.search(line.strip())
            if m and not self.ready:
                self.ready.append(m.group(1))
                self.seen.set()
        self.seen.set()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_tail.append(line.rstrip())

    def wait(self, startup_timeout: float) -> ServerHandle:
        deadline = self.started + startup_timeout
        while not self.seen.wait(0.1):
            if time.monotonic() > deadline:
                _stop(self.proc)
                raise ApidistillError(
                    f"apidistill serve did not become ready within {startup_timeout:.0f} s"
                    + _tail(self.stderr_tail),
                    hint="raise startup_timeout on a slow machine (the first load of a GGUF "
                    "model converts it once, ~20 s)",
                )
        if self.ready:
            return ServerHandle(self.proc, self.ready[0], self.stderr_tail)
        self.proc.wait(10)
        self.err_thread.join(2)
        text = _tail(self.stderr_tail)
        cls = (
            ModelLoadError
            if any(w in text.lower() for w in ("model", "gguf", "tokenizer"))
            else ApidistillError
        )
        raise cls(
            f"apidistill serve exited with code {self.proc.returncode} before it was ready{text}"
        )


def _spawn(
    model: str = "smollm2-135m-instruct",
    *,
    adapter: str | None = None,
    port: int = 0,
    api_key: str | None = None,
    max_batch_size: int = 16,
    served_model_name: str | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    backend: str | None = "transformers",
    threads: int | None = None,
) -> _Pending:
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
    if backend:
        cmd += ["--backend", backend]
    if threads:
        cmd += ["--threads", str(threads)]
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
    return _Pending(proc)


def _tail(lines: deque[str]) -> str:
    kept = [ln for ln in list(lines)[-8:] if ln.strip()]
    return (":\n  " + "\n  ".join(kept)) if kept else ""
