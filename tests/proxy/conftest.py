"""Fixtures for the proxy tests: a loopback teacher (both APIs) and proxies in front of it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from apidistill.testing.proxy_process import ProxyProcess, write_proxy_config
from apidistill.testing.proxy_teacher import ProxyTeacherProcess

PRICE = {"input_per_mtok": 1.0, "output_per_mtok": 2.0}
CLIENT_KEY = "sk-client-7f3a9b2c4d5e6f708192a3b4"


@pytest.fixture(scope="module")
def teacher() -> Iterator[ProxyTeacherProcess]:
    with ProxyTeacherProcess() as t:
        yield t


def proxy_settings(
    teacher: ProxyTeacherProcess, tmp: Path, *, provider: str = "openai", **extra: Any
) -> dict[str, Any]:
    model = "gpt-4o-mini" if provider == "openai" else "claude-sonnet-4-5"
    settings: dict[str, Any] = {
        "teacher": {
            "provider": provider,
            "model": model,
            "base_url": teacher.base_url,
            "price": PRICE,
        },
        "policy": {"use": "internal"},
        "capture": {"path": str(tmp / "captures.sqlite")},
    }
    if provider == "anthropic":
        settings["policy"]["authorization_reference"] = "test agreement #1"
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(settings.get(key), dict):
            settings[key] = {**settings[key], **value}
        else:
            settings[key] = value
    return settings


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    """``start_proxy(settings, env=...)`` → a running proxy; all are stopped at the end."""
    started: list[ProxyProcess] = []

    def start(settings: dict[str, Any], env: dict[str, str] | None = None) -> ProxyProcess:
        n = len(started)
        cfg = write_proxy_config(tmp_path / f"proxy{n}.yaml", settings)
        p = ProxyProcess(cfg, tmp_path / f"proxy{n}.log", env=env).start()
        started.append(p)
        return p

    yield start
    for p in started:
        p.close()
