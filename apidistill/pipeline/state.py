"""A run folder's state is never silently thrown away, mixed with another run's, or re-bought.

Checked before a harvest sends anything (:func:`guard_run_state`):

- **one run per folder**: ``run.json`` (the run identity: a random id, the run's name and the
  path of its run file relative to the folder) is written the first time; a run file with
  another name or at another path that points at the same folder is refused, since the two
  would swap each other's journal and dataset.
- **the journal belongs to this run**: the journal records the identity's id in its
  ``meta`` table; a journal with another id (copied from another run) is refused.
- **no silent re-buying**: a run folder holding harvested records or a dataset but no journal
  (deleted), an empty one (re-created) or a foreign one is refused: harvesting again would buy
  every answer again and reset the spend history the budget counts.
- **never delete what the project did not write**: ``harvest/`` (and its ``.partial`` /
  ``.old`` siblings) is replaced after each harvest; if it holds anything the record store did
  not write (a user's ``notes.txt`` under ``run_dir: .``), the harvest is refused before it
  sends anything.

Starting over is always possible on purpose: ``--fresh`` (:func:`move_aside`) moves every
file the project wrote in the run folder into ``previous-<UTC time>/`` there; nothing is
deleted. Journals written before run identities existed are adopted as they are.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sqlite3
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from apidistill.errors import ConfigError
from apidistill.pipeline.layout import RunLayout

__all__ = ["RunIdentity", "foreign_entries", "guard_run_state", "move_aside"]

IDENTITY = "run.json"
FRESH_HINT = (
    "to start this run over on purpose, re-run with --fresh: it moves the old state into a "
    "'previous-*' folder inside the run folder (nothing is deleted)"
)
# What the record store writes in a folder (apidistill.data.store); anything else is not ours.
_STORE_FILES = ("manifest.json", ".lock", "*.parquet", ".*.tmp*")
_STORE_WAL = ("*.wal", ".*.tmp*")
# Every name in a run folder that a stage writes (moved aside by --fresh).
_RUN_STATE = (
    "imported",
    "import_downloads",
    "journal.sqlite",
    "journal.sqlite-wal",
    "journal.sqlite-shm",
    "journal.sqlite.lock",
    "harvest",
    "harvest.partial",
    "harvest.old",
    "harvest_summary.json",
    "answers.jsonl",
    "teacher_timing.json",
    "estimate.json",
    "policy.json",
    "logprob_fallback.json",
    "candidates.json",
    "dataset",
    "train",
    "student",
    "eval",
    "report",
    "summary.json",
    IDENTITY,
)


@dataclass(frozen=True)
class RunIdentity:
    """Which run owns a run folder. ``config``: the run file's path relative to the folder
    (so moving the project as a whole keeps it), None for a config built in code."""

    run_id: str
    name: str
    config: str | None
    created_at: float

    @classmethod
    def for_config(cls, cfg: Any, root: Path) -> RunIdentity:
        source = getattr(cfg, "source", None)
        rel = os.path.relpath(Path(source).resolve(), root.resolve()) if source else None
        return cls(uuid.uuid4().hex, cfg.name, rel, time.time())

    def same_run(self, other: RunIdentity) -> bool:
        if self.name != other.name:
            return False
        return self.config is None or other.config is None or self.config == other.config

    @classmethod
    def read(cls, root: Path) -> RunIdentity | None:
        path = root / IDENTITY
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(str(data["run_id"]), str(data["name"]), data.get("config"),
                       float(data.get("created_at", 0)))  # fmt: skip
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"unreadable run identity ({exc})",
                file=str(path),
                hint="restore it from a backup, or " + FRESH_HINT,
            ) from None

    def write(self, root: Path) -> None:
        path = root / IDENTITY
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        tmp.replace(path)


def foreign_entries(folder: Path) -> list[str]:
    """Entries of a record-store folder that the store did not write (relative names)."""
    if not folder.is_dir():
        return []
    out = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and entry.name == "wal":
            out += [f"wal/{p.name}" for p in sorted(entry.iterdir())
                    if not _matches(p.name, _STORE_WAL) or not p.is_file()]  # fmt: skip
        elif not entry.is_file() or not _matches(entry.name, _STORE_FILES):
            out.append(entry.name)
    return out


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _has_results(layout: RunLayout) -> list[str]:
    """What holds the results of an earlier harvest (answers that were paid for): the index
    of the answers it returned (``answers.jsonl``), or the record folders of older versions
    and the dataset."""
    found = []
    if layout.answers.is_file() and layout.answers.stat().st_size:
        found.append(layout.answers.name)
    for folder in (layout.harvest, layout.harvest.with_name("harvest.partial"), layout.dataset):
        shards = folder.glob("*.parquet") if folder.is_dir() else iter(())
        wal = folder / "wal"
        frames = wal.glob("*.wal") if wal.is_dir() else iter(())
        if any(p.stat().st_size for p in shards) or any(p.stat().st_size for p in frames):
            found.append(f"{folder.name}/")
    return found


def guard_run_state(layout: RunLayout, cfg: Any, *, fresh: bool = False) -> RunIdentity:
    """Refuse a harvest that would lose, mix or re-buy state; return this run's identity.

    ``fresh``: move the old state aside first (:func:`move_aside`)."""
    from apidistill.storage.journal import JournalStore

    if fresh:
        move_aside(layout)
    for folder in (layout.harvest, layout.harvest.with_name("harvest.partial"),
                   layout.harvest.with_name("harvest.old")):  # fmt: skip
        foreign = foreign_entries(folder)
        if foreign:
            raise ConfigError(
                f"holds files apidistill did not write ({', '.join(foreign[:5])}); this "
                "name is part of a run's state (older versions kept the harvested records "
                "here, and --fresh moves it aside), so the harvest will not run here",
                file=str(folder),
                hint="move those files elsewhere, or give the run a run_dir of its own "
                "(run_dir: runs/{name})",
            )
    mine = RunIdentity.for_config(cfg, layout.root)
    owner = RunIdentity.read(layout.root)
    if owner is not None and not owner.same_run(mine):
        raise ConfigError(
            f"this run folder belongs to run '{owner.name}' (run file {owner.config}), not to "
            f"'{mine.name}' (run file {mine.config}): sharing it would mix their journals "
            "and datasets",
            file=str(layout.root),
            key="run_dir",
            hint="give each run file its own run_dir (the default runs/{name} does), or, "
            "if this run file replaces the other one, " + FRESH_HINT,
        )
    results = _has_results(layout)
    journal_id: str | None = None
    n_requests = 0
    if layout.journal.is_file():
        journal_id, n_requests = _journal_facts(layout.journal)
    imports_only = (layout.root / "imported" / "manifest.json").is_file()
    if results == ["dataset/"] and layout.journal.is_file() and n_requests == 0 and imports_only:
        results = []  # built from imports alone (prompts.imports, nothing sent): nothing bought
    if results and (not layout.journal.is_file() or n_requests == 0):
        what = "missing" if not layout.journal.is_file() else "empty"
        raise ConfigError(
            f"the journal is {what}, but this run folder holds the results of an earlier "
            f"harvest ({', '.join(results)}): harvesting now would buy every answer again "
            "and forget what was spent",
            file=str(layout.journal),
            hint="put the run's journal.sqlite back (from a backup, or `apidistill journal "
            "salvage` of a damaged copy); " + FRESH_HINT,
        )
    identity = owner
    if journal_id is not None and journal_id != (owner.run_id if owner else None):
        raise ConfigError(
            f"the journal belongs to another run (run id {journal_id}"
            + (f", this folder's run is {owner.run_id})" if owner else ", this folder has no "
               "run.json)")
            + ": using it would mix that run's answers and spend into this one",
            file=str(layout.journal),
            hint="put this run's own journal back, or " + FRESH_HINT,
        )  # fmt: skip
    if identity is None:
        identity = mine
        identity.write(layout.root)
    if journal_id is None:  # a new journal, or one written before run identities: adopt it
        store = JournalStore(layout.journal)
        try:
            store.set_meta("run_id", identity.run_id)
        finally:
            store.close()
    return identity


def _journal_facts(journal: Path) -> tuple[str | None, int]:
    """The journal's run id and its number of requests, read without changing the folder."""
    from apidistill.storage.journal import JournalStore

    existed = {p for p in _side_files(journal) if p.exists()}
    try:
        store = JournalStore(journal, readonly=True)
        try:
            return store.meta("run_id"), store.request_count()
        finally:
            store.close()
    except sqlite3.OperationalError as exc:  # disk full, I/O error: not damage
        raise ConfigError(
            f"cannot read the journal ({exc})",
            file=str(journal),
            hint="check free disk space and that the folder is readable; keep this file: "
            "it records what was already paid for",
        ) from None
    except sqlite3.DatabaseError as exc:  # a damaged page: salvage, never start afresh
        raise ConfigError(
            f"the journal is damaged ({exc})",
            file=str(journal),
            hint=f"recover every intact answer with `apidistill journal salvage {journal}` "
            "(the damaged file is kept), then re-run: recovered answers are not bought again",
        ) from None
    finally:
        _drop_empty_side_files(journal, existed)


def _side_files(journal: Path) -> tuple[Path, Path]:
    return Path(f"{journal}-wal"), Path(f"{journal}-shm")


def _drop_empty_side_files(journal: Path, existed: set[Path]) -> None:
    """A read-only look at a closed journal makes SQLite create an empty ``-wal`` (and a
    ``-shm``); remove what this look created, so a check that refuses leaves the run folder
    byte for byte as it was."""
    wal, shm = _side_files(journal)
    if wal not in existed and wal.exists() and wal.stat().st_size == 0:
        wal.unlink(missing_ok=True)
        if shm not in existed:
            shm.unlink(missing_ok=True)


def move_aside(layout: RunLayout) -> Path | None:
    """Move every file a stage wrote in the run folder into ``previous-<UTC time>/``.

    Nothing is deleted; files the project did not write stay where they are. Returns the
    folder, or None when there was nothing to move."""
    import fcntl

    present = [n for n in _RUN_STATE if (layout.root / n).exists()]
    if not present:
        return None
    lock = layout.root / "journal.sqlite.lock"
    if lock.exists():
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                "another harvest is writing this run's journal; --fresh will not move it",
                file=str(layout.journal),
                hint="wait for it to finish (or stop it), then re-run with --fresh",
            ) from None
        finally:
            os.close(fd)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    dest = layout.root / f"previous-{stamp}"
    n = 1
    while dest.exists():
        n += 1
        dest = layout.root / f"previous-{stamp}-{n}"
    dest.mkdir()
    for name in present:
        (layout.root / name).rename(dest / name)
    return dest
