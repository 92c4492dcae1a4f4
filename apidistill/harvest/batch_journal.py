"""The Batch-API chunks a run's journal records, and what to tell a user who interrupts them.

A Batch-API harvest journals every batch id before it polls it (harvest/batch_run.py), so
the run's journal alone says which batches a run started; ``apidistill batch`` (cli/batch.py)
and the pipeline's Ctrl-C message both read it from here.
"""

from __future__ import annotations

import contextlib
import shlex
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from apidistill.errors import ConfigError

if TYPE_CHECKING:
    from apidistill.config import RunConfig

__all__ = ["JournaledBatch", "interrupted_batch_lines", "journaled_batches"]


@dataclass(frozen=True)
class JournaledBatch:
    """One chunk of a Batch-API harvest as the journal records it.

    ``state``: ``planned`` (not uploaded yet), ``submitted`` (running or ended at the
    provider, not yet collected), ``collected`` (its results are in the journal) or
    ``failed`` (the provider refused the upload)."""

    chunk_key: str
    batch_id: str | None
    state: str
    n_items: int
    created_at: float

    @property
    def open(self) -> bool:
        return self.state == "submitted" and self.batch_id is not None


def journaled_batches(journal: Path) -> list[JournaledBatch]:
    """Every batch chunk in ``journal``, oldest first (read-only; a running harvest may
    hold the journal open)."""
    if not journal.is_file():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as conn:
            rows = conn.execute(
                "SELECT chunk_key, batch_id, state, n_items, created_at FROM batches "
                "ORDER BY created_at, chunk_key"
            ).fetchall()
    except sqlite3.Error as exc:
        raise ConfigError(
            f"cannot read the journal: {exc}",
            file=str(journal),
            hint="is this a run folder written by apidistill? (a harvest may be writing it)",
        ) from None
    return [JournaledBatch(*r) for r in rows]


def interrupted_batch_lines(cfg: RunConfig, journal: Path) -> list[str]:
    """What to tell a user who pressed Ctrl-C on a batch harvest: the batches keep running
    and billing at the provider, and the exact commands that cancel or collect them."""
    running = [b for b in journaled_batches(journal) if b.open]
    if not running:
        return []
    run_file = shlex.quote(str(cfg.source or "RUN.yaml"))
    ids = ", ".join(str(b.batch_id) for b in running)
    return [
        f"{len(running)} batch(es) keep running — and billing — at {cfg.teacher.provider}: {ids}",
        f"  cancel them:         apidistill batch cancel {run_file}",
        f"  see where they are:  apidistill batch status {run_file}",
        f"  or collect them:     apidistill harvest {run_file}   (journaled: never paid twice)",
    ]
