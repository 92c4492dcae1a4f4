"""The request journal: a content-addressed cache of answers and a log of every send.

One SQLite file (WAL) per run. ``requests`` holds one row per cache key
(:meth:`TeacherRequest.cache_key`) with its state; ``events`` is append-only: every send,
answer, failure and recovery with the money it moved. Both are written in the same
transaction, so they never disagree.

States of a request::

    reserved  budget reserved, nothing in flight (waiting to be retried)
    sent      on the wire right now; committed *before* the bytes leave
    done      answer stored (committed before anything else touches it): a cache hit forever
    failed    gave up, ``reason`` says why (``stopped`` and exhausted retries are re-tried
              by a later run; ``rejected``/``capability`` are not)
    unknown   sent, no answer (crash, or a transport fault after sending): may be billed

A process killed while requests are ``sent`` leaves them ``sent``; :meth:`JournalStore.recover`
turns them into ``unknown`` at the next open and keeps their worst-case cost charged
(``at_risk_usd``). ``sends`` counts the times a request may have been billed (answers plus
unknown outcomes); a provider's own count for the request can never exceed it.

Money is stored as TEXT Decimals so sums are exact to the cent. The async face for the
engine is :class:`apidistill.harvest.writer.AsyncJournal` (one writer thread, group commit).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from apidistill.errors import ConfigError, DataError, redact

__all__ = [
    "RETRYABLE_REASONS",
    "CachedRow",
    "Claim",
    "JournalRow",
    "JournalStore",
    "JournalTotals",
    "JournalWriteError",
    "Recovery",
    "check_integrity",
]

SCHEMA_VERSION = "1"
# Failure reasons a later run tries again (nothing about the request itself is wrong).
RETRYABLE_REASONS = frozenset(
    {"stopped", "rate_limited", "timeout", "unavailable", "teacher_error", "internal"}
)
_ZERO = Decimal(0)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
  key TEXT PRIMARY KEY,
  teacher_id TEXT NOT NULL,
  model TEXT NOT NULL,
  prompt_id TEXT,
  label TEXT,
  split TEXT,
  state TEXT NOT NULL CHECK (state IN ('reserved','sent','done','failed','unknown')),
  reason TEXT,
  error TEXT,
  request_json TEXT NOT NULL,
  completion_json TEXT,
  reserved_usd TEXT,
  cost_usd TEXT,
  at_risk_usd TEXT NOT NULL DEFAULT '0',
  input_tokens INTEGER,
  output_tokens INTEGER,
  cached_input_tokens INTEGER,
  attempts INTEGER NOT NULL DEFAULT 0,
  sends INTEGER NOT NULL DEFAULT 0,
  unknown_sends INTEGER NOT NULL DEFAULT 0,
  batch INTEGER NOT NULL DEFAULT 0,
  batch_id TEXT,
  chunk_key TEXT,
  created_at REAL NOT NULL,
  updated_at REAL NOT NULL,
  done_at REAL
);
CREATE INDEX IF NOT EXISTS requests_state ON requests(state);
CREATE INDEX IF NOT EXISTS requests_chunk ON requests(chunk_key);
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  ts REAL NOT NULL,
  key TEXT,
  event TEXT NOT NULL,
  usd TEXT,
  detail TEXT
);
CREATE TABLE IF NOT EXISTS batches (
  chunk_key TEXT PRIMARY KEY,
  batch_id TEXT,
  state TEXT NOT NULL,
  n_items INTEGER NOT NULL,
  created_at REAL NOT NULL,
  updated_at REAL NOT NULL
);
"""


def _dec(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def _txt(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class CachedRow:
    """What a run needs to know about a key before sending it."""

    key: str
    state: str
    reason: str | None
    error: str | None
    completion_json: str | None
    unknown_sends: int
    at_risk_usd: Decimal
    batch: bool = False  # sent through a Batch API (a journaled chunk owns it)
    # When a run last changed the row: for an outcome-unknown row, when it was sent (or
    # its send failed); reopening after a crash leaves it as it was.
    updated_at: float = 0.0

    @property
    def reusable(self) -> bool:
        """Answer (or a final failure) a re-run returns without sending."""
        return self.state == "done" or (
            self.state == "failed" and self.reason not in RETRYABLE_REASONS
        )


@dataclass(frozen=True, slots=True)
class Claim:
    """Result of claiming a key for a send: either go ahead, or it is already done."""

    completion_json: str | None  # set when another run already answered it
    prior_unknown_sends: int = 0  # > 0: this send is a re-send of a maybe-billed request


@dataclass(frozen=True, slots=True)
class Recovery:
    """What opening the journal found from earlier runs."""

    crashed: int  # rows left 'sent' by a killed process, now 'unknown'
    crashed_at_risk_usd: Decimal
    unknown: int  # every row whose outcome is unknown (crashed included)
    unknown_at_risk_usd: Decimal
    # What every stopped process ever left in flight, as the journal holds it (this open's
    # crash included): processes, requests, and their worst case.
    crashes_total: int = 0
    crashed_total: int = 0
    crashed_total_usd: Decimal = _ZERO


@dataclass(frozen=True, slots=True)
class JournalTotals:
    """Money and counts over the whole journal (every run)."""

    spent_usd: Decimal
    at_risk_usd: Decimal
    spent_today_usd: Decimal
    done: int
    failed: int
    unknown: int
    unpriced_done: int


@dataclass(frozen=True, slots=True)
class JournalRow:
    """One request as the dataset and ledger read it."""

    key: str
    teacher_id: str
    model: str
    prompt_id: str | None
    label: str | None
    split: str | None
    state: str
    reason: str | None
    error: str | None
    request_json: str
    completion_json: str | None
    cost_usd: Decimal | None
    at_risk_usd: Decimal
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    attempts: int
    sends: int
    unknown_sends: int
    batch: bool


_ROW_COLS = (
    "key, teacher_id, model, prompt_id, label, split, state, reason, error, request_json, "
    "completion_json, cost_usd, at_risk_usd, input_tokens, output_tokens, cached_input_tokens, "
    "attempts, sends, unknown_sends, batch"
)


def _row(r: tuple[Any, ...]) -> JournalRow:
    return JournalRow(
        *r[:11],
        cost_usd=_dec(r[11]),
        at_risk_usd=Decimal(r[12]),
        input_tokens=r[13] or 0,
        output_tokens=r[14] or 0,
        cached_input_tokens=r[15] or 0,
        attempts=r[16],
        sends=r[17],
        unknown_sends=r[18],
        batch=bool(r[19]),
    )


class JournalStore:
    """Synchronous access to one journal file. Not thread-safe: one owner thread.

    ``readonly=True`` opens for readers (dataset stage, ledger, tests) without the writer
    lock; a writer takes an exclusive lock file so two harvests never share a journal.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False, durable: bool = True) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock_fd: int | None = None
        if readonly:
            if not self.path.is_file():
                raise ConfigError("journal not found", file=str(self.path))
            uri = f"file:{self.path}?mode=ro"
            self.conn = self._connect(uri, uri=True)
            self._check_schema()
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._take_lock()
        except OSError as exc:  # read-only folder, disk full
            raise ConfigError(
                f"cannot open the journal for writing ({exc.strerror or exc})",
                file=str(self.path),
                hint="check free disk space and that the folder is writable",
            ) from None
        try:
            self.conn = self._connect(str(self.path))
            try:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self.conn.executescript(_SCHEMA)
                self.conn.execute(
                    "INSERT OR IGNORE INTO meta(k, v) VALUES ('schema_version', ?)",
                    (SCHEMA_VERSION,),
                )
            except sqlite3.DatabaseError as exc:
                self.conn.close()
                raise _open_failure(self.path, exc) from None
            self._check_schema()
        except BaseException:
            self._release_lock()
            raise

    def _connect(self, target: str, uri: bool = False) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(target, uri=uri, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=10000")
            return conn
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the journal: {exc}", file=str(self.path)) from None

    def _check_schema(self) -> None:
        try:
            row = self.conn.execute("SELECT v FROM meta WHERE k='schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise _open_failure(self.path, exc) from None
        if row is None or row[0] != SCHEMA_VERSION:
            raise ConfigError(
                f"journal schema {row[0] if row else 'missing'}, this apidistill reads "
                f"{SCHEMA_VERSION}",
                file=str(self.path),
            )

    def _take_lock(self) -> None:
        lock_path = f"{self.path}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                "another harvest is writing this journal",
                file=str(self.path),
                hint="wait for it to finish (or stop it), or give this run its own journal",
            ) from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
            self._lock_fd = None

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()
        self._release_lock()

    # ------------------------------------------------------------------ reads

    def lookup(self, keys: list[str]) -> dict[str, CachedRow]:
        out: dict[str, CachedRow] = {}
        for i in range(0, len(keys), 500):
            part = keys[i : i + 500]
            marks = ",".join("?" * len(part))
            for r in self.conn.execute(
                "SELECT key, state, reason, error, completion_json, unknown_sends, at_risk_usd, "
                f"batch, updated_at FROM requests WHERE key IN ({marks})",
                part,
            ):
                out[r[0]] = CachedRow(
                    *r[:6], at_risk_usd=Decimal(r[6]), batch=bool(r[7]), updated_at=r[8]
                )
        return out

    def totals(self, day_start_ts: float | None = None) -> JournalTotals:
        spent = at_risk = _ZERO
        counts = {"done": 0, "failed": 0, "unknown": 0}
        unpriced = 0
        for state, cost, risk in self.conn.execute(
            "SELECT state, cost_usd, at_risk_usd FROM requests"
        ):
            if state in counts:
                counts[state] += 1
            if state == "done":
                if cost is None:
                    unpriced += 1
                else:
                    spent += Decimal(cost)
            at_risk += Decimal(risk)
        today = _ZERO
        if day_start_ts is not None:
            for (usd,) in self.conn.execute(
                "SELECT usd FROM events WHERE ts >= ? AND usd IS NOT NULL "
                "AND event IN ('done', 'unknown', 'recovered')",
                (day_start_ts,),
            ):
                today += Decimal(usd)
        return JournalTotals(
            spent, at_risk, today, counts["done"], counts["failed"], counts["unknown"], unpriced
        )

    def answers(self, keys: list[str]) -> dict[str, str]:
        """The stored answer (``completion_json``) of each of ``keys`` that is ``done``; the
        dataset stage builds its records from these, so answers live in one place."""
        out: dict[str, str] = {}
        for i in range(0, len(keys), 500):
            part = keys[i : i + 500]
            marks = ",".join("?" * len(part))
            for key, completion in self.conn.execute(
                "SELECT key, completion_json FROM requests "
                f"WHERE state='done' AND completion_json IS NOT NULL AND key IN ({marks})",
                part,
            ):
                out[key] = completion
        return out

    def rows(self, *, state: str | None = None) -> Iterator[JournalRow]:
        """Every request (or those in ``state``), in insertion order; streams."""
        sql = f"SELECT {_ROW_COLS} FROM requests"
        args: tuple[Any, ...] = ()
        if state is not None:
            sql += " WHERE state = ?"
            args = (state,)
        for r in self.conn.execute(sql + " ORDER BY rowid", args):
            yield _row(r)

    def events(self, key: str | None = None) -> list[tuple[float, str | None, str, str | None]]:
        sql = "SELECT ts, key, event, usd FROM events"
        args: tuple[Any, ...] = ()
        if key is not None:
            sql += " WHERE key = ?"
            args = (key,)
        return list(self.conn.execute(sql + " ORDER BY seq", args))

    def usage_flags(self) -> list[dict[str, Any]]:
        """Every answer whose usage was flagged (missing, or outside the request's bound),
        oldest first: ``{"key", "flag", "input_tokens", "output_tokens", "input_bound", ...}``."""
        rows = self.conn.execute(
            "SELECT key, detail FROM events WHERE event='usage_flag' ORDER BY seq"
        )
        return [{"key": key, **json.loads(detail)} for key, detail in rows]

    def meta(self, key: str) -> str | None:
        """A value of the journal's ``meta`` table (``schema_version``, ``run_id``...)."""
        row = self.conn.execute("SELECT v FROM meta WHERE k=?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta(k, v) VALUES (?, ?)", (key, value))

    def request_count(self) -> int:
        """Rows in ``requests``, read from the table itself (not an index), so a damaged
        page of answers raises ``sqlite3.DatabaseError`` here."""
        return self.conn.execute("SELECT COUNT(*) FROM requests NOT INDEXED").fetchone()[0]

    def count(self, state: str) -> int:
        return self.conn.execute(
            "SELECT COUNT(*) FROM requests WHERE state=?", (state,)
        ).fetchone()[0]

    # ------------------------------------------------------------------ writes

    def _event(self, key: str | None, event: str, usd: Decimal | None, detail: str | None) -> None:
        detail = redact(detail) if detail else detail
        self.conn.execute(
            "INSERT INTO events(ts, key, event, usd, detail) VALUES (?, ?, ?, ?, ?)",
            (time.time(), key, event, _txt(usd), detail),
        )

    def note(self, event: str, detail: dict[str, Any] | None = None) -> None:
        """A run-level event (start, stop, summary)."""
        self._event(None, event, None, json.dumps(detail) if detail else None)

    def claim(
        self,
        key: str,
        *,
        teacher_id: str,
        model: str,
        request_json: str,
        prompt_id: str | None,
        label: str | None,
        split: str | None,
        reserved_usd: Decimal | None,
        batch: bool = False,
        state: str = "sent",
    ) -> Claim:
        """Mark ``key`` as about to be sent (or ``reserved`` for a Batch API chunk)."""
        now = time.time()
        cur = self.conn.execute(
            "SELECT state, completion_json, unknown_sends FROM requests WHERE key=?", (key,)
        ).fetchone()
        if cur is not None and cur[0] == "done":
            return Claim(cur[1])
        sends = 1 if state == "sent" else 0
        if cur is None:
            self.conn.execute(
                "INSERT INTO requests(key, teacher_id, model, prompt_id, label, split, state, "
                "request_json, reserved_usd, attempts, sends, batch, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, teacher_id, model, prompt_id, label, split, state, request_json,
                 _txt(reserved_usd), sends, sends, int(batch), now, now),
            )  # fmt: skip
        else:
            self.conn.execute(
                "UPDATE requests SET state=?, reserved_usd=?, attempts=attempts+?, "
                "sends=sends+?, reason=NULL, error=NULL, batch=?, updated_at=? WHERE key=?",
                (state, _txt(reserved_usd), sends, sends, int(batch), now, key),
            )
        self._event(key, state, reserved_usd, None)
        return Claim(None, cur[2] if cur is not None else 0)

    def attempt_failed(
        self, key: str, *, reason: str, error: str, maybe_billed: bool, final: bool
    ) -> None:
        """One send failed. Maybe billed: its worst case moves to ``at_risk_usd``."""
        error = redact(error)  # provider text may echo a key: never into the journal
        cur = self.conn.execute(
            "SELECT reserved_usd, at_risk_usd, unknown_sends FROM requests WHERE key=?", (key,)
        ).fetchone()
        if cur is None:
            return
        reserved, at_risk, unknown = _dec(cur[0]), Decimal(cur[1]), cur[2]
        if maybe_billed:
            unknown += 1
            at_risk += reserved or _ZERO
            state = "failed" if final else "unknown"
            self.conn.execute(
                "UPDATE requests SET state=?, reason=?, error=?, at_risk_usd=?, "
                "unknown_sends=?, updated_at=? WHERE key=?",
                (state, reason, error, str(at_risk), unknown, time.time(), key),
            )
            self._event(key, "unknown", reserved, reason)
        else:
            state = "failed" if final else ("unknown" if unknown else "reserved")
            self.conn.execute(
                "UPDATE requests SET state=?, reason=?, error=?, sends=sends-1, updated_at=? "
                "WHERE key=?",
                (state, reason, error, time.time(), key),
            )
            self._event(key, "attempt_failed", None, reason)

    def done(
        self,
        key: str,
        *,
        completion_json: str,
        cost_usd: Decimal | None,
        input_tokens: int,
        output_tokens: int,
        cached_input_tokens: int,
        recovered: bool = False,
        usage_flag: str | None = None,
        usage_detail: dict[str, Any] | None = None,
    ) -> Decimal:
        """The answer arrived. ``recovered``: it is the provider's stored answer to an earlier
        outcome-unknown send, so that send's worst case is no longer at risk; returns the
        amount released from ``at_risk_usd`` (0 otherwise). ``usage_flag`` (see
        :mod:`apidistill.costs.usage_check`) adds a ``usage_flag`` event in the same
        transaction."""
        now = time.time()
        released = _ZERO
        if recovered:
            cur = self.conn.execute(
                "SELECT reserved_usd, at_risk_usd FROM requests WHERE key=?", (key,)
            ).fetchone()
            if cur is not None:
                released = min(_dec(cur[0]) or _ZERO, Decimal(cur[1]))
                self.conn.execute(
                    "UPDATE requests SET at_risk_usd=? WHERE key=?",
                    (str(Decimal(cur[1]) - released), key),
                )
        self.conn.execute(
            "UPDATE requests SET state='done', completion_json=?, cost_usd=?, input_tokens=?, "
            "output_tokens=?, cached_input_tokens=?, reason=NULL, error=NULL, updated_at=?, "
            "done_at=? WHERE key=?",
            (completion_json, _txt(cost_usd), input_tokens, output_tokens,
             cached_input_tokens, now, now, key),
        )  # fmt: skip
        self._event(key, "done", cost_usd, None)
        if usage_flag is not None:
            detail = json.dumps({"flag": usage_flag, **(usage_detail or {})})
            self._event(key, "usage_flag", None, detail)
        if recovered:
            self._event(key, "from_store", released, "the provider's stored answer, not re-sent")
        return released

    def unclaim(self, key: str, error: str) -> None:
        """Undo :meth:`claim` for a send that never happened (stopped while it waited)."""
        cur = self.conn.execute(
            "UPDATE requests SET state=CASE WHEN unknown_sends > 0 THEN 'unknown' "
            "ELSE 'failed' END, reason='stopped', error=?, attempts=attempts-1, "
            "sends=sends-1, updated_at=? WHERE key=? AND state='sent'",
            (error, time.time(), key),
        )
        if cur.rowcount:
            self._event(key, "unsent", None, error)

    def stopped(self, key: str, error: str) -> None:
        """The run stopped before this request could be (re)sent."""
        self.conn.execute(
            "UPDATE requests SET state=CASE WHEN unknown_sends > 0 THEN 'unknown' "
            "ELSE 'failed' END, reason='stopped', error=?, updated_at=? "
            "WHERE key=? AND state != 'done'",
            (error, time.time(), key),
        )
        self._event(key, "stopped", None, None)

    def recover(self) -> Recovery:
        """Turn rows a killed process left ``sent`` into ``unknown`` (worst case at risk).

        Batch items stay as they are: their batch id is journaled and the batch runner
        collects them, so their outcome is not unknown."""
        crashed = 0
        crashed_risk = _ZERO
        for key, reserved, at_risk in list(
            self.conn.execute(
                "SELECT key, reserved_usd, at_risk_usd FROM requests WHERE state='sent' AND batch=0"
            )
        ):
            worst = _dec(reserved) or _ZERO
            crashed += 1
            crashed_risk += worst
            self.conn.execute(
                "UPDATE requests SET state='unknown', reason='crashed', "
                "error='the harvest stopped while this request was in flight', "
                "at_risk_usd=?, unknown_sends=unknown_sends+1 WHERE key=?",  # keeps updated_at
                (str(Decimal(at_risk) + worst), key),
            )
            self._event(key, "recovered", worst, "sent without an answer when the run ended")
        if crashed:
            self.note("crash_recovered", {"requests": crashed, "usd": str(crashed_risk)})
        unknown = 0
        risk = _ZERO
        for (r,) in self.conn.execute("SELECT at_risk_usd FROM requests WHERE state='unknown'"):
            unknown += 1
            risk += Decimal(r)
        total, total_usd = 0, _ZERO
        for (usd,) in self.conn.execute("SELECT usd FROM events WHERE event='recovered'"):
            total += 1
            total_usd += Decimal(usd or 0)
        (crashes,) = self.conn.execute(
            "SELECT COUNT(*) FROM events WHERE event='crash_recovered'"
        ).fetchone()
        # journals written before the per-crash note: at least one crash if any row was found
        crashes = max(crashes, 1 if total else 0)
        return Recovery(crashed, crashed_risk, unknown, risk, crashes, total, total_usd)

    # ------------------------------------------------------------- batch chunks

    def batch_chunk(self, chunk_key: str) -> tuple[str | None, str] | None:
        r = self.conn.execute(
            "SELECT batch_id, state FROM batches WHERE chunk_key=?", (chunk_key,)
        ).fetchone()
        return None if r is None else (r[0], r[1])

    def set_batch_chunk(
        self, chunk_key: str, *, batch_id: str | None, state: str, keys: Iterable[str] = ()
    ) -> None:
        """Journal a Batch API chunk (its id before anything polls it) and tag its items."""
        now = time.time()
        keys = list(keys)
        self.conn.execute(
            "INSERT INTO batches(chunk_key, batch_id, state, n_items, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(chunk_key) DO UPDATE SET "
            "batch_id=CASE WHEN excluded.state='planned' THEN NULL "
            "ELSE COALESCE(excluded.batch_id, batch_id) END, state=excluded.state, "
            "updated_at=excluded.updated_at",
            (chunk_key, batch_id, state, len(keys), now, now),
        )
        for key in keys:
            self.conn.execute(
                "UPDATE requests SET chunk_key=?, batch_id=COALESCE(?, batch_id), updated_at=? "
                "WHERE key=?",
                (chunk_key, batch_id, now, key),
            )
        self._event(None, f"batch_{state}", None, json.dumps({"chunk": chunk_key, "id": batch_id}))

    def mark_batch_sent(self, chunk_key: str) -> None:
        self.conn.execute(
            "UPDATE requests SET state='sent', attempts=attempts+1, sends=sends+1, updated_at=? "
            "WHERE chunk_key=? AND state='reserved'",
            (time.time(), chunk_key),
        )

    # ------------------------------------------------------------ transactions

    def begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("ROLLBACK")

    def integrity_errors(self) -> list[str]:
        rows = [r[0] for r in self.conn.execute("PRAGMA integrity_check")]
        return [] if rows == ["ok"] else rows


def _open_failure(path: Path, exc: sqlite3.DatabaseError) -> ConfigError:
    """A file that is not a journal, or a sound journal on a full / read-only disk: the
    second must never read as "start afresh" (that journal is what prevents paying twice)."""
    if isinstance(exc, sqlite3.OperationalError):  # disk full, I/O error, read-only
        return ConfigError(
            f"cannot use the journal ({exc})",
            file=str(path),
            hint="check free disk space and that the folder is writable; keep this file: "
            "it records what was already paid for",
        )
    return ConfigError(
        f"not an apidistill journal, or a damaged one ({exc})",
        file=str(path),
        hint=f"if it is this run's journal, recover every intact answer with `apidistill "
        f"journal salvage {path}` (it keeps the damaged file) and re-run: answers it recovers "
        "are not bought again; if it is not a journal, give the run a path of its own",
    )


def check_integrity(path: str | Path) -> list[str]:
    """``PRAGMA integrity_check`` of a journal file: ``[]`` when it is sound."""
    store = JournalStore(path, readonly=True)
    try:
        return store.integrity_errors()
    finally:
        store.close()


class JournalWriteError(DataError):
    """The journal cannot be written (disk full, read-only, corrupt): the run must stop."""
