"""A client that goes away mid-stream: the exchange is closed in the journal (never left
``started``), charged at its worst case (the teacher may bill the whole answer), not captured."""

from __future__ import annotations

import sqlite3
import time
from decimal import Decimal

import httpx2

from apidistill.proxy.capture_store import iter_captures
from apidistill.testing.proxy_teacher import ProxyTeacherProcess
from tests.proxy.conftest import CLIENT_KEY, proxy_settings


def test_client_gone_mid_stream_is_closed_and_charged(start_proxy, tmp_path) -> None:
    with ProxyTeacherProcess(stream_delay_ms=300) as slow:
        proxy = start_proxy(proxy_settings(slow, tmp_path, budget={"usd": "1"}))
        body = {"model": "gpt-4o-mini", "max_tokens": 16, "stream": True,
                "messages": [{"role": "user", "content": "a long answer please"}]}  # fmt: skip
        with httpx2.stream("POST", proxy.base_url + "/chat/completions", json=body,
                           headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=30) as r:  # fmt: skip
            first = next(r.iter_raw())
            assert first.startswith(b"data: ")
        path = tmp_path / "captures.sqlite"
        for _ in range(200):  # the proxy notices when it next writes to the closed connection
            with sqlite3.connect(path) as db:
                row = db.execute("SELECT status, cost_usd, reserved_usd FROM exchanges").fetchone()
            if row[0] != "started":
                break
            time.sleep(0.05)
        status, cost, reserved = row
        assert status == "failed" and Decimal(cost) == Decimal(reserved) > 0
        assert list(iter_captures(path)) == []
        spent = httpx2.get(proxy.root + "/stats").json()["budget"]["spent_usd"]
        assert Decimal(spent) == Decimal(reserved)
