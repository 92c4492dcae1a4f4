from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import pytest

from apidistill.harvest.retry import RetryPolicy
from apidistill.testing.fault_server import FaultConfig, FaultServerProcess


@pytest.fixture(scope="session")
def fault_server() -> Iterator[FaultServerProcess]:
    """One fault-server process for the session; each test configures it afresh."""
    with FaultServerProcess() as srv:
        yield srv


@pytest.fixture
def fault(fault_server: FaultServerProcess) -> Callable[..., FaultServerProcess]:
    """``fault(latency_ms=10, fault_rate=0.2)``: reset counters, apply settings."""

    def configure(**overrides: Any) -> FaultServerProcess:
        fault_server.reset()
        fault_server.configure(**{**asdict(FaultConfig()), **overrides})
        return fault_server

    return configure


@pytest.fixture
def quick_retry() -> RetryPolicy:
    """Short backoffs so fault-heavy tests finish fast (the shape is tested separately); a
    long timeout, so that a stall of this shared machine never looks like a lost answer."""
    return RetryPolicy(max_retries=8, timeout_s=10.0, initial_backoff_s=0.01, max_backoff_s=0.1)
