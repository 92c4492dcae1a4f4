"""A damaged journal is salvaged, not thrown away (issue 19, item 4).

A journal of 300 answers gets one of its table pages overwritten (a disk fault). The run's
state check names the damage and points to ``apidistill journal salvage`` (never "give a new
path", which re-buys everything); the salvage command (a child process, as a user runs it)
recovers every row on a sound page into a new journal, keeps the damaged file, and the next
harvest sends only the requests whose rows were lost.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from harvest_fakes import FakeTeacher, requests

from apidistill.config import RunConfig
from apidistill.errors import ConfigError
from apidistill.harvest import HarvestOptions, JournalStore, harvest_sync
from apidistill.harvest.retry import RetryPolicy
from apidistill.pipeline.layout import RunLayout
from apidistill.pipeline.state import guard_run_state

N = 300
FAST = RetryPolicy(max_retries=1, timeout_s=5, initial_backoff_s=0.001)


def _requests():
    # ~1 KB per row: a page holds a few rows, so one bad page loses a few
    return requests(N, prefix="s " + "lorem ipsum " * 60)


def _corrupt_page_holding(journal: Path, marker: bytes) -> None:
    with sqlite3.connect(journal) as conn:
        page = conn.execute("PRAGMA page_size").fetchone()[0]
    data = bytearray(journal.read_bytes())
    at = data.find(marker)
    assert at > 0, marker
    start = (at // page) * page
    data[start : start + page] = b"\xa5" * page
    journal.write_bytes(bytes(data))


def _cfg() -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "salvage",
            "teacher": {
                "provider": "openai_compatible",
                "model": "m",
                "base_url": "http://127.0.0.1:9/v1",
            },
            "prompts": {"path": "p.jsonl"},
            "policy": {"use": "internal", "acknowledge_unknown": "test"},
            "budget": {"usd": 1},
        }
    )


def test_salvage_recovers_every_intact_answer_and_a_rerun_sends_only_the_lost(tmp_path):
    root = tmp_path / "run"
    layout = RunLayout(root).ensure()
    guard_run_state(layout, _cfg())  # a run's journal, with its run id
    teacher = FakeTeacher()
    first = harvest_sync(_requests(), teacher=teacher, journal=layout.journal,
                         options=HarvestOptions(retry_policy=FAST), progress=False, close_teacher=False)  # fmt: skip
    assert first.done == N
    assert not Path(f"{layout.journal}-wal").exists()  # checkpointed on close
    (layout.harvest).mkdir()

    _corrupt_page_holding(layout.journal, b'ipsum -150"')
    with pytest.raises(ConfigError) as info:
        guard_run_state(layout, _cfg())
    message = str(info.value)
    assert "damaged" in message and "apidistill journal salvage" in message
    assert "give a new path" not in message

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "apidistill", "journal", "salvage", str(layout.journal)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    kept = [
        p
        for p in root.iterdir()
        if p.name.startswith("journal.sqlite.damaged-") and not p.name.endswith(("-wal", "-shm"))
    ]
    assert len(kept) == 1  # the damaged file is kept, never deleted
    assert "recovered" in done.stdout and str(kept[0]) in done.stdout.replace("\n", "")

    store = JournalStore(layout.journal, readonly=True)
    try:
        assert store.integrity_errors() == []
        rows = list(store.rows())
        assert store.meta("run_id") is not None  # still this run's journal
    finally:
        store.close()
    recovered = {r.prompt_id.rsplit("-", 1)[1] for r in rows if r.state == "done"}
    lost = {str(i) for i in range(N)} - recovered
    assert 0 < len(lost) <= 10  # one page's rows, no more
    assert "150" in lost
    assert f"recovered {len(recovered)} answer(s)" in done.stdout
    guard_run_state(layout, _cfg())  # the run may go on

    second = harvest_sync(_requests(), teacher=teacher, journal=layout.journal,
                          options=HarvestOptions(retry_policy=FAST), progress=False)  # fmt: skip
    assert second.cached == len(recovered) and second.done == len(lost)
    assert {
        p.rsplit("-", 1)[1] for p, n in teacher.calls.items() if n == 2
    } == lost  # only the lost re-sent
