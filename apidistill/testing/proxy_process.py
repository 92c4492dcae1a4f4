"""``apidistill proxy`` in its own process, for tests and benchmarks: start, read the port
from its ready line, stop (or SIGKILL it, as the crash tests do)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, Self

import yaml

from apidistill.testing.loopback import LoopbackServerProcess, spawn_listening

__all__ = ["ProxyProcess", "write_proxy_config"]


def write_proxy_config(path: Path, settings: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    return path


class ProxyProcess(LoopbackServerProcess):
    """``with ProxyProcess(config_path) as p: p.base_url``; stderr goes to ``log_path``.

    A loopback server process whose command is ``apidistill proxy``: the start/stop
    machinery (and ``root``/``base_url``/``close``) is :class:`LoopbackServerProcess`'s.
    """

    label = "proxy"

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        super().__init__()
        self.config, self.log_path = config, log_path
        self.env = {**os.environ, **(env or {})}

    def start(self, timeout_s: float = 60.0) -> Self:
        cmd = [sys.executable, "-m", "apidistill", "proxy", "--config", str(self.config),
               "--port", "0"]  # fmt: skip
        with self.log_path.open("a", encoding="utf-8") as log:
            self.proc, self.port = spawn_listening(
                cmd, label=self.label, timeout_s=timeout_s, stderr=log, env=self.env,
                failure_detail=self.log,
            )  # fmt: skip
        return self

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8") if self.log_path.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.close()
