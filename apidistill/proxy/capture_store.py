"""The proxy's capture store and journal: one SQLite file in WAL mode.

Every exchange the proxy forwards gets a row *before* it is sent upstream (``started``, with
the worst-case cost reserved) and is finished (``done`` with the assembled answer, usage and
cost, or ``failed``) and **committed before the last byte of the answer goes to the client**.
So after a ``kill -9`` every answer a client received is in the file, and rows still
``started`` are exactly the exchanges that were in flight: :meth:`CaptureStore.recover` counts
them at the next start and keeps their reservation as money at risk (it may have been billed).

Request and answer text is written only for captured exchanges (capture on, the teacher's
terms allow training on outputs, the exchange drawn by the sampling rate), and always through
the store's :class:`~apidistill.proxy.redact.Redactor`: there is no way to write unmasked text.
Headers are never stored, so client API keys never reach the file.

WAL with ``synchronous=NORMAL``: a commit is in the operating system's hands when the call
returns, which survives the process being killed (not a power cut; ``synchronous=FULL`` would
cost an fsync per exchange). Readers (:func:`iter_captures`) never block the proxy.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from apidistill.errors import DataError
from apidistill.proxy.redact import Redactor
from apidistill.proxy.wal_checkpoint import WalCheckpointer

__all__ = ["CaptureStore", "CaptureStoreError", "CapturedExchange", "Recovery", "iter_captures"]

SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS exchanges (
    seq INTEGER PRIMARY KEY,        -- rows are never deleted: the rowid only grows
    id TEXT NOT NULL UNIQUE,
    route TEXT NOT NULL,
    api TEXT NOT NULL,
    model TEXT,
    status TEXT NOT NULL,          -- started | done | failed | interrupted
    captured INTEGER NOT NULL,     -- 1: request/answer text kept (redacted)
    request TEXT,
    response TEXT,
    logprobs TEXT,
    usage TEXT,
    cost_usd TEXT,
    reserved_usd TEXT,
    policy_decision_id TEXT,
    sampling TEXT,
    http_status INTEGER,
    created_at TEXT NOT NULL,
    finished_at TEXT
);
"""
# No AUTOINCREMENT (its sqlite_sequence row) and no index on status (read only at start, by
# recover() and totals()): each would be one more page written per commit, on the proxy's hot
# path (benchmarks/proxy_overhead.py). Stores made before keep theirs; both read the same.


class CaptureStoreError(DataError):
    """The capture file cannot be opened, read or written (corrupt, not ours, disk full)."""


@dataclass(frozen=True)
class CapturedExchange:
    """One captured exchange, as importers read it (:func:`iter_captures`)."""

    id: str
    route: str
    api: Literal["openai", "anthropic"]
    model: str
    request: dict[str, Any]  # the body the client sent, redacted; never any header
    response: dict[str, Any]  # non-stream shape; a stream is assembled into it
    logprobs: Any | None
    usage: dict[str, int]
    cost_usd: Decimal | None
    policy_decision_id: str | None
    sampling: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class Recovery:
    """What a start found left by the previous run: exchanges in flight when it stopped."""

    in_flight: int
    at_risk_usd: Decimal


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _dump(obj: Any) -> str | None:
    return None if obj is None else json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    where = str(path)
    if readonly:
        if not path.is_file():
            raise CaptureStoreError("capture store not found", file=where)
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
    try:
        ok = conn.execute("PRAGMA quick_check").fetchone()
        if not ok or ok[0] != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {ok}")
        if not readonly:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "exchanges" not in tables:
            raise sqlite3.DatabaseError("no 'exchanges' table: not an apidistill capture store")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise CaptureStoreError(
            f"not a readable capture store: {exc}",
            file=where,
            hint="the file is left as it is: move it aside (keep it; `sqlite3 FILE .recover` "
            "may save its rows) and start again, or point capture.path at another file",
        ) from None
    return conn


class CaptureStore:
    """The writer side; one per proxy process (single event loop, synchronous calls)."""

    def __init__(
        self, path: str | Path, redactor: Redactor, *, background_checkpoint: bool = False
    ) -> None:
        """``background_checkpoint``: WAL checkpoints on a thread of their own instead of
        inside a commit (:mod:`apidistill.proxy.wal_checkpoint`; the proxy turns it on)."""
        self.path = Path(path)
        self.redactor = redactor
        self._db = _connect(self.path, readonly=False)
        self._db.execute(
            "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
        )
        self.checkpointer: WalCheckpointer | None = None
        if background_checkpoint:
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self.checkpointer = WalCheckpointer(self.path)

    def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        try:
            self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise CaptureStoreError(
                f"cannot write the capture: {exc}",
                file=str(self.path),
                hint="free disk space (rows already written are kept); the answer was still "
                "given to the client",
            ) from None

    def start(self, id: str, **fields: Any) -> None:
        """Journal an exchange before it is sent and commit it on its own (``request`` kept
        only when ``captured``); ``fields`` are :meth:`start_row`'s. The proxy itself batches
        these rows through :class:`~apidistill.proxy.group_commit.GroupCommit`."""
        self._write(*self.start_row(id, **fields))

    def start_row(
        self,
        id: str,
        *,
        route: str,
        api: str,
        model: str | None,
        captured: bool,
        request: dict[str, Any] | None,
        sampling: dict[str, Any],
        policy_decision_id: str | None,
        reserved_usd: Decimal | None,
        secrets: Iterable[str] = (),
    ) -> tuple[str, tuple[Any, ...]]:
        """The redacted INSERT of :meth:`start`, for a caller that commits it itself
        (:class:`~apidistill.proxy.group_commit.GroupCommit`)."""
        secrets = tuple(secrets)
        body = self.redactor.scrub(request, secrets) if captured and request is not None else None
        return (
            "INSERT INTO exchanges (id, route, api, model, status, captured, request, "
            "reserved_usd, policy_decision_id, sampling, created_at) "
            "VALUES (?, ?, ?, ?, 'started', ?, ?, ?, ?, ?, ?)",
            (
                id, route, api, model, int(captured), _dump(body),
                None if reserved_usd is None else str(reserved_usd),
                policy_decision_id, _dump(self.redactor.scrub(sampling, secrets)), _now(),
            ),
        )  # fmt: skip

    def finish(self, id: str, **fields: Any) -> None:
        """Mark an exchange answered (``done`` for a 2xx, else ``failed``) and commit it on its
        own; ``fields`` are :meth:`finish_row`'s but ``captured``, which is read from the row."""
        row = self._db.execute("SELECT captured FROM exchanges WHERE id = ?", (id,)).fetchone()
        self._write(*self.finish_row(id, captured=bool(row and row[0]), **fields))

    def finish_row(
        self,
        id: str,
        *,
        captured: bool,
        http_status: int,
        response: dict[str, Any] | None,
        usage: dict[str, int] | None,
        cost_usd: Decimal | None,
        logprobs: Any = None,
        secrets: Iterable[str] = (),
    ) -> tuple[str, tuple[Any, ...]]:
        """The redacted UPDATE of :meth:`finish` for an exchange journaled with ``captured``
        (the caller knows it: no read of the row on the hot path)."""
        secrets = tuple(secrets)
        done = 200 <= http_status < 300
        keep = captured and done
        return (
            "UPDATE exchanges SET status = ?, http_status = ?, response = ?, logprobs = ?, "
            "usage = ?, cost_usd = ?, finished_at = ? WHERE id = ?",
            (
                "done" if done else "failed", http_status,
                _dump(self.redactor.scrub(response, secrets)) if keep else None,
                _dump(self.redactor.scrub(logprobs, secrets)) if keep else None,
                _dump(usage), None if cost_usd is None else str(cost_usd), _now(), id,
            ),
        )  # fmt: skip

    def write_batch(
        self, rows: list[tuple[str, tuple[Any, ...]]]
    ) -> list[CaptureStoreError | None]:
        """Write ``rows`` in one transaction (one commit for all). When it fails (disk full,
        a row too big) it is rolled back and each row is written on its own, so one row that
        cannot be written fails alone; the result says per row (``None`` = committed)."""
        try:
            self._db.execute("BEGIN")
            for sql, args in rows:
                self._db.execute(sql, args)
            self._db.execute("COMMIT")
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):  # no transaction left open
                self._db.execute("ROLLBACK")
        else:
            return [None] * len(rows)
        out: list[CaptureStoreError | None] = []
        for sql, args in rows:
            try:
                self._write(sql, args)
                out.append(None)
            except CaptureStoreError as exc:
                out.append(exc)
        return out

    def recover(self) -> Recovery:
        """Rows left ``started`` by a run that stopped (kill -9, power cut) become
        ``interrupted``; their reservations stay charged as money at risk."""
        rows = self._db.execute(
            "SELECT reserved_usd FROM exchanges WHERE status = 'started'"
        ).fetchall()
        if rows:
            self._write(
                "UPDATE exchanges SET status = 'interrupted', finished_at = ? "
                "WHERE status = 'started'",
                (_now(),),
            )
        risk = sum((Decimal(r[0]) for r in rows if r[0] is not None), Decimal(0))
        return Recovery(in_flight=len(rows), at_risk_usd=risk)

    def totals(self) -> tuple[Decimal, Decimal, Decimal]:
        """(spent, at risk, spent today UTC) over every run on this file, for the budget."""
        spent = risk = today = Decimal(0)
        day = datetime.now(UTC).date().isoformat()
        for status, cost, reserved, created in self._db.execute(
            "SELECT status, cost_usd, reserved_usd, created_at FROM exchanges "
            "WHERE status IN ('done', 'failed', 'interrupted')"
        ):
            amount = Decimal(reserved) if status == "interrupted" and reserved else None
            if amount is not None:
                risk += amount
            elif cost is not None:
                spent += Decimal(cost)
                if created.startswith(day):
                    today += Decimal(cost)
        return spent, risk, today

    def counts(self) -> dict[str, int]:
        """Rows per status, and how many carry captured text."""
        out = dict(self._db.execute("SELECT status, count(*) FROM exchanges GROUP BY status"))
        out["captured"] = self._db.execute(
            "SELECT count(*) FROM exchanges WHERE captured = 1 AND status = 'done'"
        ).fetchone()[0]
        return out

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()
        self._db.close()


def _row_to_capture(row: sqlite3.Row) -> CapturedExchange:
    return CapturedExchange(
        id=row["id"],
        route=row["route"],
        api=row["api"],
        model=row["model"] or "",
        request=json.loads(row["request"] or "{}"),
        response=json.loads(row["response"] or "{}"),
        logprobs=json.loads(row["logprobs"]) if row["logprobs"] else None,
        usage=json.loads(row["usage"] or "{}"),
        cost_usd=Decimal(row["cost_usd"]) if row["cost_usd"] is not None else None,
        policy_decision_id=row["policy_decision_id"],
        sampling=json.loads(row["sampling"] or "{}"),
        created_at=datetime.fromisoformat(row["created_at"]),
    )


def iter_captures(path: str | Path) -> Iterator[CapturedExchange]:
    """Every captured, answered exchange in ``path``, oldest first (read-only; safe while the
    proxy runs). A damaged file is a :class:`CaptureStoreError` naming it; rows are never
    changed by reading."""
    conn = _connect(Path(path), readonly=True)
    conn.row_factory = sqlite3.Row
    try:
        cur = conn.execute(
            "SELECT * FROM exchanges WHERE status = 'done' AND captured = 1 ORDER BY seq"
        )
        for row in cur:
            try:
                yield _row_to_capture(row)
            except (ValueError, TypeError) as exc:
                raise CaptureStoreError(
                    f"capture {row['id']!r} (row {row['seq']}) cannot be read: {exc}",
                    file=str(path),
                ) from None
    finally:
        conn.close()
