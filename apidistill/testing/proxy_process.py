"""``apidistill proxy`` in its own process, for tests and benchmarks: start, read the port
from its ready line, stop (or SIGKILL it, as the crash tests do)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Self

import yaml

from apidistill.testing.loopback import stop_process

__all__ = ["ProxyProcess", "write_proxy_config"]


def write_proxy_config(path: Path, settings: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    return path


class ProxyProcess:
    """``with ProxyProcess(config_path) as p: p.base_url``; stderr goes to ``log_path``."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.config, self.log_path = config, log_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.port: int | None = None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def start(self, timeout_s: float = 60.0) -> Self:
        cmd = [sys.executable, "-m", "apidistill", "proxy", "--config", str(self.config),
               "--port", "0"]  # fmt: skip
        with self.log_path.open("a", encoding="utf-8") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=self.env
            )
        assert self.proc.stdout is not None
        deadline, line = time.monotonic() + timeout_s, ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if "listening on" in line or not line:
                break
        if "listening on" not in line:
            self.close()
            raise RuntimeError(f"proxy did not start: {line!r}\n{self.log()}")
        self.port = int(line.rsplit(":", 1)[1])
        return self

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8") if self.log_path.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._drop()

    def _drop(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace_s=10)
        self._drop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
