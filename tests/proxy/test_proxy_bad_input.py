"""Bad input meets a clear error: a corrupt or foreign capture file (left untouched), a full
disk (the answer still reaches the client, rows already written are kept), a bad settings
file (file, line, key)."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from apidistill.errors import ConfigError
from apidistill.proxy.capture_store import CaptureStore, CaptureStoreError, iter_captures
from apidistill.proxy.config import load_proxy_config
from apidistill.proxy.redact import Redactor


def _one(store: CaptureStore, id: str) -> None:
    store.start(id, route="r", api="openai", model="m", captured=True,
                request={"messages": [{"role": "user", "content": "hello"}]}, sampling={},
                policy_decision_id=None, reserved_usd=Decimal("0.1"))  # fmt: skip
    store.finish(id, http_status=200, response={"id": id}, usage={}, cost_usd=Decimal("0.01"))


def test_corrupt_capture_file_is_a_clear_error_and_left_as_is(tmp_path: Path) -> None:
    path = tmp_path / "captures.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    before = path.read_bytes()
    with pytest.raises(CaptureStoreError) as err:
        CaptureStore(path, Redactor())
    assert str(path) in str(err.value) and "move it aside" in (err.value.hint or "")
    with pytest.raises(CaptureStoreError):
        list(iter_captures(path))
    assert path.read_bytes() == before


def test_foreign_sqlite_file_is_refused_for_reading(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(CaptureStoreError, match="not an apidistill capture store"):
        list(iter_captures(path))


def test_full_disk_keeps_what_was_written(tmp_path: Path) -> None:
    path = tmp_path / "captures.sqlite"
    store = CaptureStore(path, Redactor())
    _one(store, "kept")
    store._db.execute("PRAGMA max_page_count = 1")  # every later growth fails like a full disk
    big = {"messages": [{"role": "user", "content": "x" * 200_000}]}
    with pytest.raises(CaptureStoreError, match="cannot write the capture") as err:
        store.start("big", route="r", api="openai", model="m", captured=True, request=big,
                    sampling={}, policy_decision_id=None, reserved_usd=None)  # fmt: skip
    assert "free disk space" in (err.value.hint or "")
    store.close()
    assert [c.id for c in iter_captures(path)] == ["kept"]


def test_bad_settings_name_file_line_and_key(tmp_path: Path) -> None:
    p = tmp_path / "proxy.yaml"
    p.write_text(
        "teacher:\n  provider: openai\n  model: gpt-4o-mini\ncapture:\n  sample_rate: 2\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as err:
        load_proxy_config(p)
    assert "capture.sample_rate" in str(err.value) and str(p) in str(err.value)
    p.write_text(
        "teacher: {provider: openai, model: m}\ncapture:\n  redaction:\n    patterns: ['(']\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        load_proxy_config(p)
    p.write_text("teacher: {provider: openai, model: m}\nbudget: {usd: 1, at_cap: student}\n")
    with pytest.raises(ConfigError, match="student_url"):
        load_proxy_config(p)
