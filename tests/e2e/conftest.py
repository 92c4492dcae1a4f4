"""Fixtures of the conformance matrix: the prompt file and the loopback teachers (helpers
and checks are in ``matrix_kit.py``)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from matrix_kit import N_TICKETS, TICKETS


@pytest.fixture(scope="session")
def tickets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first demo tickets (text, gold answer, label) as the run's prompt file."""
    rows = TICKETS.read_text(encoding="utf-8").splitlines()[:N_TICKETS]
    path = tmp_path_factory.mktemp("prompts") / "tickets.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def answers_teacher(tickets: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The loopback API teacher (OpenAI chat with o200k tokens, OpenAI reasoning models and
    Anthropic Messages on one port), answering each ticket with its gold answer."""
    from apidistill.testing.o200k_teacher import O200kTeacherProcess

    rows = [json.loads(line) for line in tickets.read_text(encoding="utf-8").splitlines()]
    answers = tmp_path_factory.mktemp("teacher") / "answers.json"
    answers.write_text(json.dumps({r["text"]: r["gold"] for r in rows}), encoding="utf-8")
    with O200kTeacherProcess(answers) as server:
        yield server


class _ThreadedBatchServer:
    """:class:`apidistill.testing.batch_server.BatchServer` on its own event loop thread, so
    a child ``apidistill run`` can reach it while the test waits."""

    def __init__(self) -> None:
        from apidistill.testing.batch_server import BatchServer

        self.server = BatchServer(polls_to_finish=1)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Any:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)
        return self.server

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def batch_server() -> Iterator[Any]:
    with _ThreadedBatchServer() as server:
        yield server
