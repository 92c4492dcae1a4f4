"""WAL checkpoints of the capture store on a thread of their own.

SQLite's automatic checkpoint runs inside the commit that crosses ``wal_autocheckpoint``
pages: it copies the WAL into the database file and syncs both, and in the proxy that commit
runs on the event loop's thread, so every few hundred exchanges one request's answer waited
for a disk sync (the gap between wall and CPU time of the capture commits,
benchmarks/proxy_overhead.py, docs/proxy.md). Here the writer's automatic checkpoint is off
and a thread with its own connection runs ``PRAGMA wal_checkpoint(PASSIVE)`` every
``interval_s``: passive checkpoints never block the writer, and sqlite3 releases the GIL while
it copies and syncs. Durability is unchanged: a commit is in the WAL before it returns, a
checkpoint only moves committed pages.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

__all__ = ["WalCheckpointer"]

log = logging.getLogger("apidistill.proxy")


class WalCheckpointer:
    """Start with the writer's ``wal_autocheckpoint`` set to 0; :meth:`stop` before closing it."""

    def __init__(self, path: Path, interval_s: float = 0.25) -> None:
        self.path, self.interval_s = path, interval_s
        self.checkpoints = 0  # passive checkpoints run (tests read it)
        self._stop = threading.Event()
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._thread = threading.Thread(
            target=self._run, name="apidistill-wal-checkpoint", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.checkpoint()

    def checkpoint(self) -> None:
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.checkpoints += 1
        except sqlite3.Error as exc:  # e.g. disk full: the WAL keeps the rows; try again later
            log.warning("capture store checkpoint failed (%s); the rows stay in the WAL", exc)

    def stop(self) -> None:
        """Stop the thread after one last checkpoint (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self.checkpoint()
        self._conn.close()
