from __future__ import annotations

import asyncio
import os
import sqlite3
from decimal import Decimal

import pytest

from apidistill.errors import ConfigError
from apidistill.harvest.writer import AsyncJournal
from apidistill.storage.journal import JournalStore, JournalWriteError, check_integrity


def _claim(store: JournalStore, key: str, usd: str | None = "0.5", **kw) -> object:
    return store.claim(
        key,
        teacher_id="t",
        model="m",
        request_json="{}",
        prompt_id=key,
        label=kw.pop("label", None),
        split=None,
        reserved_usd=None if usd is None else Decimal(usd),
        **kw,
    )


def test_lifecycle_sent_done_is_a_cache_hit(tmp_path):
    s = JournalStore(tmp_path / "j.sqlite")
    claim = _claim(s, "a")
    assert claim.completion_json is None
    assert s.lookup(["a"])["a"].state == "sent"
    s.done("a", completion_json='{"x":1}', cost_usd=Decimal("0.001234"),
           input_tokens=3, output_tokens=4, cached_input_tokens=0)  # fmt: skip
    row = s.lookup(["a"])["a"]
    assert row.state == "done" and row.reusable and row.completion_json == '{"x":1}'
    # a second claim of a done key returns the stored answer instead of sending
    assert _claim(s, "a").completion_json == '{"x":1}'
    (r,) = list(s.rows())
    assert (r.sends, r.attempts, r.cost_usd) == (1, 1, Decimal("0.001234"))
    s.close()


def test_unbilled_failure_is_not_counted_as_a_send(tmp_path):
    s = JournalStore(tmp_path / "j.sqlite")
    _claim(s, "a")
    s.attempt_failed("a", reason="rate_limited", error="429", maybe_billed=False, final=False)
    (r,) = list(s.rows())
    assert (r.state, r.sends, r.attempts, r.at_risk_usd) == ("reserved", 0, 1, Decimal(0))
    s.close()


def test_maybe_billed_failure_keeps_worst_case_at_risk(tmp_path):
    s = JournalStore(tmp_path / "j.sqlite")
    _claim(s, "a", usd="0.25")
    s.attempt_failed("a", reason="timeout", error="t", maybe_billed=True, final=False)
    _claim(s, "a", usd="0.25")
    s.attempt_failed("a", reason="unavailable", error="reset", maybe_billed=True, final=True)
    (r,) = list(s.rows())
    assert (r.state, r.reason, r.sends, r.unknown_sends) == ("failed", "unavailable", 2, 2)
    assert r.at_risk_usd == Decimal("0.50")
    totals = s.totals()
    assert totals.at_risk_usd == Decimal("0.50") and totals.spent_usd == 0
    s.close()


def test_recover_turns_in_flight_rows_into_unknown(tmp_path):
    path = tmp_path / "j.sqlite"
    s = JournalStore(path)
    _claim(s, "a", usd="0.1")
    _claim(s, "b", usd="0.2")
    s.done("b", completion_json="{}", cost_usd=Decimal("0.05"),
           input_tokens=1, output_tokens=1, cached_input_tokens=0)  # fmt: skip
    s.close()  # like a kill -9: 'a' is left 'sent'
    s = JournalStore(path)
    rec = s.recover()
    assert (rec.crashed, rec.crashed_at_risk_usd, rec.unknown) == (1, Decimal("0.1"), 1)
    row = s.lookup(["a"])["a"]
    assert row.state == "unknown" and row.unknown_sends == 1 and not row.reusable
    assert s.recover().crashed == 0  # idempotent
    assert [e[2] for e in s.events("a")] == ["sent", "recovered"]
    s.close()


def test_stopped_rows_are_retried_later_but_rejections_are_final(tmp_path):
    s = JournalStore(tmp_path / "j.sqlite")
    _claim(s, "a")
    s.attempt_failed("a", reason="unavailable", error="503", maybe_billed=False, final=False)
    s.stopped("a", "Ctrl-C")
    _claim(s, "b")
    s.attempt_failed("b", reason="rejected", error="400", maybe_billed=False, final=True)
    rows = s.lookup(["a", "b"])
    assert rows["a"].state == "failed" and rows["a"].reason == "stopped"
    assert not rows["a"].reusable
    assert rows["b"].reusable  # a 400 will not change on a re-run
    s.close()


def test_decimal_money_is_exact(tmp_path):
    s = JournalStore(tmp_path / "j.sqlite")
    s.begin()
    for i in range(1000):
        _claim(s, f"k{i}")
        s.done(f"k{i}", completion_json="{}", cost_usd=Decimal("0.000001"),
               input_tokens=1, output_tokens=1, cached_input_tokens=0)  # fmt: skip
    s.commit()
    assert s.totals().spent_usd == Decimal("0.001000")
    s.close()


def test_second_writer_is_refused_readers_are_not(tmp_path):
    path = tmp_path / "j.sqlite"
    s = JournalStore(path)
    with pytest.raises(ConfigError, match="another harvest"):
        JournalStore(path)
    reader = JournalStore(path, readonly=True)
    assert reader.count("done") == 0
    reader.close()
    s.close()
    JournalStore(path).close()  # the lock is released on close (and by the OS on kill)


def test_not_a_journal_is_a_clear_error(tmp_path):
    bad = tmp_path / "notes.sqlite"
    bad.write_text("hello, not sqlite")
    with pytest.raises(ConfigError, match=r"notes\.sqlite"):
        JournalStore(bad)
    with pytest.raises(ConfigError, match="not found"):
        JournalStore(tmp_path / "missing.sqlite", readonly=True)


def test_integrity_check_reports_sound_and_corrupt_files(tmp_path):
    path = tmp_path / "j.sqlite"
    s = JournalStore(path, durable=False)
    s.begin()
    for i in range(200):
        _claim(s, f"key-{i}")
    s.commit()
    s.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    s.close()
    assert check_integrity(path) == []
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) >= page * 5
    data[page * 2 : page * 4] = os.urandom(page * 2)  # trash two b-tree pages
    path.write_bytes(bytes(data))
    try:
        errors = check_integrity(path)
    except ConfigError:
        errors = ["unreadable"]
    assert errors


async def test_async_journal_group_commits_concurrent_calls(tmp_path):
    async with AsyncJournal(tmp_path / "j.sqlite", durable=False) as j:
        keys = [f"k{i}" for i in range(300)]
        await asyncio.gather(*(j.call(_claim, k) for k in keys))
        assert j.commits < len(keys)  # queued calls shared commits
        rows = await j.call(JournalStore.lookup, keys)
        assert len(rows) == 300 and {r.state for r in rows.values()} == {"sent"}


async def test_a_failing_op_does_not_sink_the_others(tmp_path):
    def boom(store: JournalStore) -> None:
        _claim(store, "half-written")
        raise RuntimeError("bug in an op")

    async with AsyncJournal(tmp_path / "j.sqlite", durable=False) as j:
        results = await asyncio.gather(
            j.call(_claim, "a"), j.call(boom), j.call(_claim, "b"), return_exceptions=True
        )
        assert isinstance(results[1], RuntimeError)
        rows = await j.call(JournalStore.lookup, ["a", "b", "half-written"])
        assert set(rows) == {"a", "b"}  # the failed op's write was rolled back


async def test_unwritable_journal_raises_a_journal_error(tmp_path):
    path = tmp_path / "j.sqlite"
    async with AsyncJournal(path, durable=False) as j:
        await j.call(_claim, "a")
        j._store.conn.execute("PRAGMA query_only=1")  # simulate a read-only medium
        with pytest.raises(JournalWriteError, match="cannot write the journal"):
            await j.call(_claim, "b")
    assert sqlite3.connect(path).execute("select count(*) from requests").fetchone() == (1,)
