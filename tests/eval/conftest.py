"""Fixtures of the eval tests (helpers live in ``eval_kit``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from eval_kit import FakeServer, Responder, serve_fake


@pytest.fixture
def fake_server() -> Iterator[Callable[..., contextlib.AbstractContextManager[FakeServer]]]:
    """Factory: ``with fake_server(respond, **opts) as srv: ...``."""

    def make(respond: Responder, **opts: Any) -> contextlib.AbstractContextManager[FakeServer]:
        return serve_fake(FakeServer(respond, **opts))

    yield make
