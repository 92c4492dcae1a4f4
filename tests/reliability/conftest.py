"""Fixtures of the reliability suite.

``rel_target``: the server the suite runs against (``APIDISTILL_REL_TARGET``, see
``rel_target.py``): the project's fault server (default), the real llama.cpp server, or a URL.
``rel_server`` / ``fault``: the fault server with fault injection; a test that asks for them is
skipped, with that reason, when the target is another server (it cannot inject faults).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rel_helpers import configure
from rel_target import SUITE_KEY, RelTarget, TargetError, parse_target

from apidistill.testing.fault_server import FaultServerProcess


def _spec():
    try:
        return parse_target(os.environ)
    except TargetError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.fixture(scope="session")
def rel_server() -> Iterator[FaultServerProcess]:
    spec = _spec()
    if spec.kind != "fault":
        pytest.skip(
            f"needs the fault server's fault injection; the target is {spec.kind} "
            "(APIDISTILL_REL_TARGET), which cannot produce these faults"
        )
    with FaultServerProcess() as srv:
        yield srv


@pytest.fixture
def fault(rel_server: FaultServerProcess) -> Callable[..., FaultServerProcess]:
    """``fault(latency_ms=5, fault_rate=0.3)``: fresh counters and settings for this test."""

    def apply(**overrides: Any) -> FaultServerProcess:
        return configure(rel_server, **overrides)

    return apply


@pytest.fixture(scope="session")
def _rel_target_session() -> Iterator[RelTarget]:
    spec = _spec()
    if spec.kind == "url":
        key = os.environ.get(spec.key_env) if spec.key_env else None
        yield RelTarget("url", spec.url or "", spec.model or "", spec.profile, spec.key_env, key)
    elif spec.kind == "llamacpp":
        try:
            from apidistill.testing.llamacpp_server import EMBEDDED_GGUF_MODEL, LlamaCppServer
        except ImportError as exc:  # asked for by name: an error, never a silent skip
            pytest.fail(f"APIDISTILL_REL_TARGET=llamacpp, but the server cannot start: {exc}")
        with LlamaCppServer(alias=EMBEDDED_GGUF_MODEL, n_threads=2, api_key=SUITE_KEY) as srv:
            yield RelTarget(
                "llamacpp", srv.base_url, EMBEDDED_GGUF_MODEL, spec.profile,
                "REL_SUITE_KEY", SUITE_KEY, srv,
            )  # fmt: skip
    else:
        with FaultServerProcess() as srv:
            yield RelTarget(
                "fault", srv.base_url, "fault-model", spec.profile, "REL_SUITE_KEY", SUITE_KEY, srv
            )


@pytest.fixture
def rel_target(_rel_target_session: RelTarget) -> RelTarget:
    """The target with fresh counters for this test."""
    _rel_target_session.mark()
    return _rel_target_session
