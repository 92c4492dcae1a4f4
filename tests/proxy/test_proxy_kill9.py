"""kill -9 of the proxy under a client fleet: every answer a client received is in the capture
store, and the next start reports how many exchanges were in flight (journal rows started and
never finished) and keeps their reservations as money at risk."""

from __future__ import annotations

import sqlite3
import threading
import time

import httpx2
import openai
import pytest

from apidistill.proxy.capture_store import iter_captures
from apidistill.testing.proxy_teacher import ProxyTeacherProcess
from tests.proxy.conftest import CLIENT_KEY, proxy_settings


def test_kill9_loses_no_acknowledged_capture_and_reports_in_flight(start_proxy, tmp_path) -> None:
    with ProxyTeacherProcess(latency_ms=150) as slow:
        settings = proxy_settings(slow, tmp_path, budget={"usd": "10"})
        proxy = start_proxy(settings)
        got: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()

        def client(n: int) -> None:
            oa = openai.OpenAI(
                base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30
            )
            i = 0
            while not stop.is_set():
                msgs = [{"role": "user", "content": f"client {n} request {i}"}]
                try:
                    if i % 2:
                        chunks = list(oa.chat.completions.create(
                            model="gpt-4o-mini", messages=msgs, max_tokens=8, stream=True
                        ))  # fmt: skip
                        rid = chunks[0].id
                    else:
                        rid = oa.chat.completions.create(
                            model="gpt-4o-mini", messages=msgs, max_tokens=8
                        ).id
                except (openai.APIError, httpx2.HTTPError):
                    return  # the proxy is gone
                with lock:
                    got.append(rid)
                i += 1

        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        while True:  # let the fleet get going: at least 16 answers acknowledged
            with lock:
                if len(got) >= 16:
                    break
            time.sleep(0.05)
        proxy.kill9()
        stop.set()
        for t in threads:
            t.join(60)

        path = tmp_path / "captures.sqlite"
        captured = {c.response["id"] for c in iter_captures(path)}
        assert set(got) <= captured  # every answer a client had is in the store
        with sqlite3.connect(path) as db:
            in_flight = db.execute(
                "SELECT count(*) FROM exchanges WHERE status = 'started'"
            ).fetchone()[0]
        assert in_flight >= 1  # 8 clients, each always waiting on a 150 ms teacher

        again = start_proxy(settings)
        assert f"{in_flight} exchange(s) were in flight" in again.log()
        stats = httpx2.get(again.root + "/stats").json()
        assert stats["recovered"]["in_flight_at_last_stop"] == in_flight
        assert float(stats["recovered"]["at_risk_usd"]) > 0
        assert float(stats["budget"]["at_risk_usd"]) == float(stats["recovered"]["at_risk_usd"])


def _wait_teacher(teacher: ProxyTeacherProcess, key: str) -> None:
    while httpx2.get(teacher.root + "/__stats").json()[key] < 1:
        time.sleep(0.02)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_the_answer_waits_for_its_commit(start_proxy, tmp_path, stream: bool) -> None:
    """Deterministic: another connection holds SQLite's write lock while the teacher answers,
    so the exchange's final commit cannot complete; the proxy is killed while it waits. The
    client must not have the answer's end then (a proxy that sends the answer before its
    commit is caught here every time, not only when a kill happens to land in the gap)."""
    with ProxyTeacherProcess(latency_ms=800) as teacher:
        proxy = start_proxy(proxy_settings(teacher, tmp_path))
        path = tmp_path / "captures.sqlite"
        got: list[str] = []

        def client() -> None:
            oa = openai.OpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0)
            msgs = [{"role": "user", "content": "hold me"}]
            try:
                if stream:
                    chunks = list(oa.chat.completions.create(
                        model="gpt-4o-mini", messages=msgs, max_tokens=8, stream=True
                    ))  # fmt: skip
                    got.append(chunks[0].id)
                else:
                    got.append(oa.chat.completions.create(
                        model="gpt-4o-mini", messages=msgs, max_tokens=8
                    ).id)  # fmt: skip
            except (openai.APIError, httpx2.HTTPError):
                pass  # the proxy was killed before the answer ended: as it must be

        t = threading.Thread(target=client)
        t.start()
        _wait_teacher(teacher, "received")  # the journal row is committed by now
        lock = sqlite3.connect(path, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # the proxy's next commit now waits on this lock
        _wait_teacher(teacher, "answered")
        time.sleep(1.0)  # time for the proxy to pass the answer on, if it wrongly would
        proxy.kill9()
        lock.execute("ROLLBACK")
        lock.close()
        t.join(30)

    assert got == []  # the answer's end never left before its commit
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT status FROM exchanges").fetchall() == [("started",)]
