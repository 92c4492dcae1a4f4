"""The proxy's hot-path machinery: uvloop and httptools when installed (and a clean fallback
when not, said at start), and the group commit of journal rows (one transaction for the rows
of one loop turn; each row's future done only once it is committed; a row that cannot be
written fails alone)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from decimal import Decimal
from pathlib import Path

import httpx2
import pytest

from apidistill.proxy.capture_store import CaptureStore, CaptureStoreError
from apidistill.proxy.group_commit import GroupCommit
from apidistill.proxy.redact import Redactor
from apidistill.testing.proxy_teacher import ProxyTeacherProcess
from tests.proxy.conftest import CLIENT_KEY, proxy_settings

_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _ask(base_url: str) -> int:
    r = httpx2.post(
        base_url + "/chat/completions", json=_BODY,
        headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=30,
    )  # fmt: skip
    return r.status_code


def test_proxy_runs_on_uvloop_and_httptools_and_says_so(start_proxy, tmp_path: Path) -> None:
    with ProxyTeacherProcess() as teacher:
        proxy = start_proxy(proxy_settings(teacher, tmp_path))
        assert _ask(proxy.base_url) == 200
    assert "event loop uvloop, HTTP parser httptools" in proxy.log()


def test_proxy_falls_back_to_asyncio_and_h11_without_them(start_proxy, tmp_path: Path) -> None:
    hide = tmp_path / "hide"
    hide.mkdir()
    for name in ("uvloop", "httptools"):  # importing either fails, as when not installed
        (hide / f"{name}.py").write_text(f"raise ImportError('{name} hidden by the test')\n")
    env = {"PYTHONPATH": f"{hide}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with ProxyTeacherProcess() as teacher:
        proxy = start_proxy(proxy_settings(teacher, tmp_path), env=env)
        assert _ask(proxy.base_url) == 200
    log = proxy.log()
    assert "event loop asyncio (uvloop not installed)" in log
    assert "HTTP parser h11 (httptools not installed)" in log


def _start_row(store: CaptureStore, id: str) -> tuple[str, tuple[object, ...]]:
    return store.start_row(id, route="r", api="openai", model="m", captured=True,
                           request={"messages": [{"role": "user", "content": id}]},
                           sampling={}, policy_decision_id=None, reserved_usd=Decimal("0.01"))  # fmt: skip


def test_rows_of_one_loop_turn_share_one_commit_and_are_on_disk_when_awaited(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.sqlite"
    store = CaptureStore(path, Redactor())

    async def main() -> GroupCommit:
        commits = GroupCommit(store)
        futures = [commits.submit(_start_row(store, f"e{i}")) for i in range(50)]
        assert not any(f.done() for f in futures)  # nothing is committed yet
        await asyncio.gather(*futures)
        with sqlite3.connect(path) as other:  # another connection sees every row
            assert other.execute("SELECT count(*) FROM exchanges").fetchone()[0] == 50
        done = commits.submit(store.finish_row("e0", captured=True, http_status=200,
                                               response={"id": "a"}, usage={}, cost_usd=None))  # fmt: skip
        await done
        return commits

    commits = asyncio.run(main())
    assert (commits.batches, commits.rows) == (2, 51)
    with sqlite3.connect(path) as other:
        assert other.execute("SELECT status FROM exchanges WHERE id='e0'").fetchone() == ("done",)
    store.close()


def test_a_row_that_cannot_be_written_fails_alone(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    store = CaptureStore(path, Redactor())

    async def main() -> None:
        commits = GroupCommit(store)
        await commits.submit(_start_row(store, "dup"))
        ok1, bad, ok2 = (commits.submit(_start_row(store, i)) for i in ("a", "dup", "b"))
        await ok1
        await ok2
        with pytest.raises(CaptureStoreError, match="cannot write the capture"):
            await bad

    asyncio.run(main())
    with sqlite3.connect(path) as other:
        ids = {r[0] for r in other.execute("SELECT id FROM exchanges")}
    assert ids == {"dup", "a", "b"}
    store.close()


def test_a_store_made_with_the_earlier_schema_still_journals_and_recovers(tmp_path: Path) -> None:
    """Stores made before the hot-path schema (AUTOINCREMENT seq, an index on status) open,
    take new rows after their old ones, and recover and total exactly like new stores."""
    from apidistill.proxy import capture_store as cs

    old = cs._SCHEMA.replace("seq INTEGER PRIMARY KEY,", "seq INTEGER PRIMARY KEY AUTOINCREMENT,")
    old += "CREATE INDEX IF NOT EXISTS exchanges_status ON exchanges (status);\n"
    assert old != cs._SCHEMA
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(old)
    body = {"messages": [{"role": "user", "content": "hi"}]}
    for store_path in (path, tmp_path / "new.sqlite"):
        store = CaptureStore(store_path, Redactor())
        for i, status in enumerate((200, None)):  # one answered, one left in flight
            store.start(f"x{i}", route="r", api="openai", model="m", captured=True,
                        request=body, sampling={}, policy_decision_id=None,
                        reserved_usd=Decimal("0.5"))  # fmt: skip
            if status:
                store.finish(f"x{i}", http_status=status, response={"choices": []},
                             usage={"input_tokens": 1}, cost_usd=Decimal("0.1"))  # fmt: skip
        store.close()
        store = CaptureStore(store_path, Redactor())
        rec = store.recover()
        assert (rec.in_flight, rec.at_risk_usd) == (1, Decimal("0.5"))
        assert store.totals()[:2] == (Decimal("0.1"), Decimal("0.5"))
        store.close()
        with sqlite3.connect(store_path) as db:
            seqs = [r[0] for r in db.execute("SELECT seq FROM exchanges ORDER BY seq")]
        assert seqs == [1, 2]


def test_checkpoints_run_beside_the_writer_and_lose_nothing(tmp_path: Path) -> None:
    """With background checkpoints the writer never checkpoints in a commit (its automatic
    checkpoint is off), the thread moves the committed pages into the database file, and
    every row is there after close."""
    path = tmp_path / "c.sqlite"
    store = CaptureStore(path, Redactor(), background_checkpoint=True)
    assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    assert store.checkpointer is not None
    store.checkpointer.interval_s = 0.01
    for i in range(300):
        store.start(f"x{i}", route="r", api="openai", model="m", captured=True,
                    request={"messages": [{"role": "user", "content": "a" * 500}]}, sampling={},
                    policy_decision_id=None, reserved_usd=None)  # fmt: skip
    before = store.checkpointer.checkpoints
    for _ in range(500):  # the thread runs on its own
        if store.checkpointer.checkpoints > before + 1:
            break
        time.sleep(0.01)
    assert store.checkpointer.checkpoints > before + 1
    assert path.stat().st_size > 300 * 500  # the pages reached the database file
    store.close()
    assert not store.checkpointer._thread.is_alive()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM exchanges").fetchone()[0] == 300
