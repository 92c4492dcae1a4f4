"""Fixtures of the reliability suite: one fault-server process per session (own port)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rel_helpers import configure

from apidistill.testing.fault_server import FaultServerProcess


@pytest.fixture(scope="session")
def rel_server() -> Iterator[FaultServerProcess]:
    with FaultServerProcess() as srv:
        yield srv


@pytest.fixture
def fault(rel_server: FaultServerProcess) -> Callable[..., FaultServerProcess]:
    """``fault(latency_ms=5, fault_rate=0.3)``: fresh counters and settings for this test."""

    def apply(**overrides: Any) -> FaultServerProcess:
        return configure(rel_server, **overrides)

    return apply
