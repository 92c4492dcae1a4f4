"""``apidistill journal salvage``: recover every intact row of a damaged journal.

A journal damaged by a disk fault, a bad copy or a truncated file must not push the user to
start afresh (that re-buys every answer). SQLite reads a damaged file page by page: rows on
sound pages read fine, rows on a broken page raise. So each table is read one row id at a
time, every readable row is checked (an answer must parse as a :class:`Completion`) and
copied into a new journal; the damaged file is kept beside it, renamed, never deleted.

Rows keep their state and money (answers and their cost, failures, outcome-unknown rows with
their worst case still at risk), so the budget and ledger see the same history; the events
log is copied the same way. What cannot be read is counted and named in the report: those
requests have no row in the new journal and are sent again by the next harvest.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from apidistill.errors import ConfigError
from apidistill.records import Completion
from apidistill.storage.journal import JournalStore

__all__ = ["SalvageReport", "salvage_journal"]

_TABLES = ("requests", "events", "batches")


@dataclass
class SalvageReport:
    """What a salvage recovered and lost."""

    source: Path
    kept_as: Path | None  # where the damaged file now is (None with ``out=``)
    journal: Path  # the recovered journal
    answers: int = 0  # 'done' rows with an intact answer
    spent_usd: Decimal = Decimal(0)  # their cost
    other_requests: int = 0  # failed / unknown / in-flight rows, copied as they were
    damaged_answers: int = 0  # 'done' rows whose answer does not parse (dropped: re-sent)
    unreadable: dict[str, int] | None = None  # table -> rows that could not be read
    events: int = 0

    def lines(self) -> list[str]:
        lost = sum((self.unreadable or {}).values())
        out = [
            f"recovered {self.answers} answer(s) (${self.spent_usd} paid for them) and "
            f"{self.other_requests} other request(s) into {self.journal}",
            f"{self.events} event(s) of the spend history copied",
        ]
        if lost or self.damaged_answers:
            what = ", ".join(f"{t} {n}" for t, n in (self.unreadable or {}).items() if n)
            out.append(
                f"could not recover {lost} row(s) ({what or 'none unreadable'}) and "
                f"{self.damaged_answers} damaged answer(s): a re-run sends those requests again"
            )
        if self.kept_as is not None:
            out.append(f"the damaged journal is kept at {self.kept_as}")
        return out


def _rows(
    conn: sqlite3.Connection, table: str, cols: list[str]
) -> Iterator[tuple[Any, ...] | None]:
    """Every row of ``table`` by row id; ``None`` for one that cannot be read."""
    try:
        (top,) = conn.execute(f"SELECT MAX(rowid) FROM {table}").fetchone()
    except sqlite3.DatabaseError:
        top = None
    if top is None:  # the rightmost pages are damaged: probe until a long run of misses
        top = _probe_top(conn, table)
    select = f"SELECT {', '.join(cols)} FROM {table} WHERE rowid = ?"
    for rowid in range(1, (top or 0) + 1):
        try:
            row = conn.execute(select, (rowid,)).fetchone()
        except sqlite3.DatabaseError:
            yield None
            continue
        if row is not None:
            yield row


def _probe_top(conn: sqlite3.Connection, table: str, misses: int = 10_000) -> int:
    top, rowid, gap = 0, 0, 0
    while gap < misses:
        rowid += 1
        try:
            hit = conn.execute(f"SELECT 1 FROM {table} WHERE rowid = ?", (rowid,)).fetchone()
        except sqlite3.DatabaseError:
            hit = (1,)
        if hit is None:
            gap += 1
        else:
            top, gap = rowid, 0
    return top


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def salvage_journal(path: str | Path, *, out: str | Path | None = None) -> SalvageReport:
    """Copy every intact row of the journal at ``path`` into a new journal.

    Without ``out`` the damaged file is renamed ``<name>.damaged-<UTC time>`` (with its
    ``-wal`` / ``-shm`` files) and the recovered journal takes its place, so a re-run of the
    same run file resumes from it. With ``out`` the damaged file is left where it is."""
    src = Path(path)
    if not src.is_file():
        raise ConfigError("journal not found", file=str(src))
    dest = Path(out) if out is not None else src.with_name(src.name + ".salvaged")
    if dest.exists():
        raise ConfigError(
            "already exists; salvage never overwrites a file",
            file=str(dest),
            hint="move it away, or pass --out with a new path",
        )
    try:
        old = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot open ({exc})", file=str(src)) from None
    src_lock = _lock(src)  # no harvest may write the damaged file meanwhile
    new = JournalStore(dest)  # takes dest's writer lock; creates the schema
    report = SalvageReport(source=src, kept_as=None, journal=dest, unreadable={})
    try:
        with contextlib.closing(old):
            new.begin()
            for table in _TABLES:
                _copy_table(old, new, table, report)
            with contextlib.suppress(sqlite3.DatabaseError):
                for k, v in old.execute("SELECT k, v FROM meta WHERE k != 'schema_version'"):
                    new.set_meta(k, v)
            new.note("salvaged", {"from": str(src), "unreadable": report.unreadable})
            new.commit()
    except BaseException:
        new.rollback()
        new.close()
        os.close(src_lock)
        dest.unlink(missing_ok=True)
        Path(f"{dest}.lock").unlink(missing_ok=True)
        raise
    new.close()
    Path(f"{dest}.lock").unlink(missing_ok=True)  # ours, written by JournalStore just now
    try:
        if out is None:
            report.kept_as = _swap(src, dest)
            report.journal = src
    finally:
        os.close(src_lock)
    return report


def _lock(src: Path) -> int:
    import fcntl

    fd = os.open(f"{src}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(
            "a harvest is writing this journal",
            file=str(src),
            hint="stop it first, then salvage",
        ) from None
    return fd


def _copy_table(
    old: sqlite3.Connection, new: JournalStore, table: str, report: SalvageReport
) -> None:
    try:
        theirs = set(_columns(old, table))
    except sqlite3.DatabaseError:
        theirs = set()
    cols = [c for c in _columns(new.conn, table) if c in theirs]
    assert report.unreadable is not None
    report.unreadable[table] = 0
    if not cols:
        if table == "requests":
            raise ConfigError(
                "the journal's table of requests cannot be read at all: nothing to salvage",
                file=str(report.source),
                hint="restore the journal from a backup; keep this file",
            )
        return
    insert = (
        f"INSERT OR IGNORE INTO {table}({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    )
    for row in _rows(old, table, cols):
        if row is None:
            report.unreadable[table] += 1
            continue
        if table == "requests" and not _keep_request(dict(zip(cols, row, strict=True)), report):
            continue
        if table == "events":
            report.events += 1
        new.conn.execute(insert, row)


def _keep_request(row: dict[str, Any], report: SalvageReport) -> bool:
    """Count a request row; an answer that does not parse is dropped (the request is sent
    again), everything else is kept as it was."""
    if row.get("state") == "done":
        try:
            Completion.model_validate_json(row.get("completion_json") or "")
        except ValueError:
            report.damaged_answers += 1
            return False
        report.answers += 1
        with contextlib.suppress(ArithmeticError, TypeError, ValueError):
            report.spent_usd += Decimal(row["cost_usd"]) if row.get("cost_usd") else 0
        return True
    report.other_requests += 1
    return True


def _swap(src: Path, dest: Path) -> Path:
    """Rename the damaged journal (and its side files) aside, put the recovered one in place."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    kept = src.with_name(f"{src.name}.damaged-{stamp}")
    for suffix in ("-wal", "-shm"):
        side = Path(f"{src}{suffix}")
        if side.exists():
            side.rename(Path(f"{kept}{suffix}"))
    src.rename(kept)
    os.replace(dest, src)
    for suffix in ("-wal", "-shm"):  # the recovered journal was closed: nothing pending
        Path(f"{dest}{suffix}").unlink(missing_ok=True)
    return kept
