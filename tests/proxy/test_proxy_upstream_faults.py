"""Upstream answers that are not whole (a body cut in half, JSON that does not parse, a stream
with a broken event or without its end) reach the client as they are, are never captured as
answers, and are charged at their worst case (the provider may have billed them)."""

from __future__ import annotations

import contextlib
import sqlite3
from decimal import Decimal

import httpx2
import pytest

from apidistill.proxy.capture_store import iter_captures
from apidistill.testing.fault_server import FaultServerProcess
from tests.proxy.conftest import CLIENT_KEY, proxy_settings


@pytest.mark.parametrize("fault", ["invalid_json", "half_body"])
def test_broken_answers_are_not_captured(fault: str, start_proxy, tmp_path) -> None:
    with FaultServerProcess(fault_rate=1.0, faults={fault: 1.0}) as srv:
        proxy = start_proxy(proxy_settings(srv, tmp_path, budget={"usd": "1"}))
        for stream in (False, True):
            body = {"model": "gpt-4o-mini", "max_tokens": 8, "stream": stream,
                    "messages": [{"role": "user", "content": f"{fault} {stream}"}]}  # fmt: skip
            headers = {"authorization": f"Bearer {CLIENT_KEY}"}
            with contextlib.suppress(httpx2.HTTPError):  # a cut body may reach the client cut
                httpx2.post(
                    proxy.base_url + "/chat/completions", json=body, headers=headers, timeout=30
                )
        path = tmp_path / "captures.sqlite"
        assert list(iter_captures(path)) == []
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT status, cost_usd, reserved_usd FROM exchanges").fetchall()
        assert len(rows) == 2
        for status, cost, reserved in rows:
            assert status == "failed" and Decimal(cost) == Decimal(reserved)
