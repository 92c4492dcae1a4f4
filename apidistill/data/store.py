"""The dataset store: a folder of Parquet shards fed through a write-ahead file.

Layout of a dataset folder::

    manifest.json          shards (size, SHA-256, rows per split) + compacted write-ahead files
    shard-00000-<id>.parquet   records, zstd; logprobs in the compact layout of compact.py
    wal/<time>-<pid>.wal   records appended during a harvest, not yet in a shard

Harvest appends each record to the write-ahead file the moment it arrives (a crash loses at
most the frame being written); :meth:`DatasetWriter.flush` turns pending records into a
shard. Readers see the shards listed in the manifest plus every intact frame of write-ahead
files not yet compacted, so a dataset is readable mid-harvest and after a crash; damaged
frames are reported (a :class:`StoreWarning`) and never returned as half records.
"""

from __future__ import annotations

import contextlib
import os
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from apidistill.data.compact import (
    EncodedLogprobs,
    LogprobArrays,
    LogprobCodec,
    TokenArrays,
    TokenTable,
    decode_logprobs,
    encode_logprobs,
    from_arrays,
)
from apidistill.data.schema import Provenance, Record, TokenLogprob
from apidistill.data.shards import (
    MANIFEST,
    Manifest,
    ShardInfo,
    decode_row,
    read_manifest,
    read_shard,
    record_arrays,
    record_to_row,
    write_manifest,
    write_shard,
)
from apidistill.data.wal import WalFile, scan_wal
from apidistill.errors import DataError

__all__ = [
    "DatasetStatus",
    "DatasetWriter",
    "StoreWarning",
    "dataset_status",
    "iter_compact_records",
    "iter_provenance",
    "iter_records",
    "iter_token_arrays",
    "load_records",
    "record_ids",
    "save_records",
    "save_splits",
]

WAL_DIR = "wal"
SPLITS = ("train", "validation", "test")


class StoreWarning(UserWarning):
    """Part of a dataset could not be read (e.g. a write cut short by a crash) and was skipped."""


# --------------------------------------------------------------------------- WAL payloads


def _payload(rec: Record, codec: LogprobCodec, top_k: int | None) -> dict[str, Any]:
    if top_k is not None and rec.logprobs:
        rec = rec.model_copy(update={"logprobs": _truncate(rec.logprobs, top_k)})
    arr, table = record_arrays(rec)
    out: dict[str, Any] = {"row": record_to_row(rec), "codec": codec}
    if arr is not None and table is not None:
        out["lp"] = encode_logprobs(arr, codec, len(table)).to_wire()
        out["table"] = table.to_json()
    return out


def _truncate(lps: list[TokenLogprob], k: int) -> list[TokenLogprob]:
    return [p.model_copy(update={"top": p.top[:k]}) if len(p.top) > k else p for p in lps]


@dataclass
class _Pending:
    record: Record  # logprobs not attached (they stay as arrays until needed)
    arrays: LogprobArrays | None
    table: TokenTable | None

    def full(self) -> Record:
        if self.arrays is not None and self.table is not None:
            self.record.logprobs = from_arrays(self.arrays, self.table)
        return self.record


def _unpack(payload: dict[str, Any], where: str) -> _Pending:
    rec = decode_row(payload.get("row") or {}, where)
    if "lp" not in payload:
        return _Pending(rec, None, None)
    try:
        table = TokenTable.from_json(payload["table"])
        arr = decode_logprobs(EncodedLogprobs.from_wire(payload["lp"]), payload["codec"])
    except (KeyError, TypeError, ValueError, DataError) as exc:
        raise DataError(f"{where}: stored logprobs are malformed ({exc})") from None
    return _Pending(rec, arr, table)


def _pending_wal(folder: Path, manifest: Manifest, skip: set[str]) -> list[Path]:
    wal_dir = folder / WAL_DIR
    if not wal_dir.is_dir():
        return []
    done = set(manifest.compacted_wal) | skip
    return sorted(p for p in wal_dir.glob("*.wal") if p.name not in done)


def _read_wal(path: Path, report: Callable[[str], None]) -> list[_Pending]:
    scan = scan_wal(path)
    for dmg in scan.damage:
        report(str(dmg))
    out = []
    for n, payload in enumerate(scan.payloads, start=1):
        try:
            out.append(_unpack(payload, f"{path} frame {n}"))
        except DataError as exc:
            report(f"{exc.message}; skipped")
    return out


def _write_error(exc: OSError, folder: Path) -> DataError:
    return DataError(
        f"cannot write the dataset: {exc.strerror or exc}",
        file=str(exc.filename or folder),
        hint="free disk space or make the folder writable; records written so far are kept "
        "and recovered when the folder is opened again",
    )


def _warn(msg: str) -> None:
    warnings.warn(msg, StoreWarning, stacklevel=3)


# --------------------------------------------------------------------------- writer


class DatasetWriter:
    """Append-only, crash-safe writer for one dataset folder (one writer at a time).

    ``write`` appends to the write-ahead file at once; every ``shard_records`` records (and on
    ``flush``/exit) pending records become one Parquet shard. Opening a folder left by a crash
    first turns its intact write-ahead frames into a shard and reports the damaged ones.
    ``top_k`` keeps only the first k alternatives per token (``dataset.top_k_store``).
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        codec: LogprobCodec = "fp16",
        shard_records: int = 2000,
        top_k: int | None = None,
        on_damage: Callable[[str], None] | None = None,
    ) -> None:
        if codec not in ("fp16", "q8"):
            raise DataError(f"unknown logprob codec {codec!r}", hint="use 'fp16' or 'q8'")
        self.folder = Path(folder)
        self.codec: LogprobCodec = codec
        self.shard_records = max(1, shard_records)
        self.top_k = top_k
        self._report = on_damage or _warn
        self._wal: WalFile | None = None
        self._pending: list[dict[str, Any]] = []
        self._lock_fh: Any = None
        self.written = 0
        self.recovered = 0

    # -- lifecycle

    def __enter__(self) -> DatasetWriter:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / WAL_DIR).mkdir(exist_ok=True)
            self._lock()
            self._recover()
        except OSError as exc:  # read-only folder, disk full: say where, never a traceback
            self._unlock()
            raise _write_error(exc, self.folder) from exc

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._wal is not None:
                self._wal.close()
            self._unlock()

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: single-writer is the caller's duty
            return
        fh = (self.folder / ".lock").open("a")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise DataError(
                "another process is writing this dataset",
                file=str(self.folder),
                hint="wait for it to finish, or write to another folder",
            ) from None
        self._lock_fh = fh

    def _unlock(self) -> None:
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None

    # -- writing

    def write(self, record: Record) -> None:
        """Append one record durably enough to survive a crash of this process."""
        if self._lock_fh is None:
            raise DataError(
                "DatasetWriter is not open", hint="use it as `with DatasetWriter(dir) as w:`"
            )
        payload = _payload(record, self.codec, self.top_k)
        try:
            if self._wal is None:
                stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
                name = f"{stamp}-{os.getpid()}-{uuid.uuid4().hex[:6]}.wal"
                self._wal = WalFile(self.folder / WAL_DIR / name)
            self._wal.append(payload)
        except OSError as exc:
            self._drop_wal()
            raise _write_error(exc, self.folder) from exc
        self._pending.append(payload)
        self.written += 1
        if len(self._pending) >= self.shard_records:
            self.flush()

    def write_many(self, records: Iterable[Record]) -> None:
        for rec in records:
            self.write(rec)

    def flush(self) -> ShardInfo | None:
        """Turn pending records into a shard; then their write-ahead file is deleted."""
        if self._wal is None or not self._pending:
            return None
        wal_path = self._wal.path
        try:
            self._wal.close()
            self._wal = None
            items = [_unpack(p, str(wal_path)) for p in self._pending]
            info = self._commit([wal_path], items)
        except OSError as exc:
            self._drop_wal()
            raise _write_error(exc, self.folder) from exc
        self._pending = []
        return info

    def _drop_wal(self) -> None:
        """After a failed write: leave the write-ahead file and its records to the next
        open()'s recovery (never to this writer's next shard: that would store them twice)."""
        if self._wal is not None:
            with contextlib.suppress(OSError):
                self._wal.close()
        self._wal, self._pending = None, []

    def _commit(self, wal_paths: list[Path], items: list[_Pending]) -> ShardInfo | None:
        manifest = read_manifest(self.folder)
        info = None
        if items:
            name = f"shard-{len(manifest.shards):05d}-{uuid.uuid4().hex[:8]}.parquet"
            info = write_shard(
                self.folder / name, ((p.record, p.arrays, p.table) for p in items), self.codec
            )
            manifest.shards.append(info)
        manifest.compacted_wal.extend(p.name for p in wal_paths)
        write_manifest(self.folder, manifest)
        for p in wal_paths:
            p.unlink(missing_ok=True)
        # Names of deleted files need not be remembered any longer.
        manifest.compacted_wal = [
            n for n in manifest.compacted_wal if (self.folder / WAL_DIR / n).exists()
        ]
        write_manifest(self.folder, manifest)
        return info

    def _recover(self) -> None:
        manifest = read_manifest(self.folder)
        listed = {s.file for s in manifest.shards}
        for orphan in self.folder.glob("shard-*.parquet"):
            if orphan.name not in listed:  # written, but the crash came before the manifest
                orphan.unlink()
        for stale in self.folder.glob(".*.tmp*"):
            stale.unlink()
        for name in manifest.compacted_wal:
            (self.folder / WAL_DIR / name).unlink(missing_ok=True)
        leftovers = _pending_wal(self.folder, manifest, set())
        if not leftovers and not manifest.compacted_wal:
            return
        items = [item for path in leftovers for item in _read_wal(path, self._report)]
        self.recovered = len(items)
        self._commit(leftovers, items)

    def ids(self) -> set[str]:
        """Ids already stored (shards, pending and recovered), for resuming a harvest."""
        out = record_ids(self.folder)
        out.update(p["row"]["id"] for p in self._pending)
        return out


# --------------------------------------------------------------------------- reading


def _require_dataset(folder: Path) -> Manifest:
    if not folder.is_dir():
        raise DataError("dataset folder not found", file=str(folder), hint="check the path")
    if not (folder / MANIFEST).is_file() and not (folder / WAL_DIR).is_dir():
        raise DataError(
            "not an apidistill dataset folder (no manifest.json, no wal/)",
            file=str(folder),
            hint="point at the folder a harvest or `apidistill data split` wrote",
        )
    return read_manifest(folder)


def _check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise DataError(f"unknown split {split!r}", hint=f"use one of {', '.join(SPLITS)}")


def _shards_for(manifest: Manifest, split: str | None) -> list[ShardInfo]:
    return [s for s in manifest.shards if split is None or s.splits.get(split, 0)]


def iter_records(
    folder: str | Path,
    split: str | None = None,
    *,
    verify: bool = True,
    on_damage: Callable[[str], None] | None = None,
) -> Iterator[Record]:
    """Every record (logprobs rebuilt, token ids set where known), shards first, then
    records still in write-ahead files. Damage is passed to ``on_damage`` (default: a
    :class:`StoreWarning`); ``verify`` checks each shard's SHA-256 against the manifest."""
    folder = Path(folder)
    _check_split(split)
    report = on_damage or _warn
    manifest = _require_dataset(folder)
    for info in _shards_for(manifest, split):
        yield from read_shard(folder / info.file, info, verify=verify).records(split)
    for path in _pending_wal(folder, manifest, set()):
        for item in _read_wal(path, report):
            if split is None or item.record.split == split:
                yield item.full()


def load_records(
    folder: str | Path,
    split: str | None = None,
    *,
    verify: bool = True,
    on_damage: Callable[[str], None] | None = None,
) -> list[Record]:
    return list(iter_records(folder, split, verify=verify, on_damage=on_damage))


def iter_compact_records(
    folder: str | Path, split: str | None = None, *, verify: bool = True
) -> Iterator[tuple[Record, LogprobArrays | None, TokenTable | None]]:
    """Every record as :func:`iter_records` yields it but with its logprobs left in the
    compact arrays (``record.logprobs`` is None): the training fast path reads them straight
    into tensors, and :func:`~apidistill.data.compact.from_arrays` rebuilds one record's
    ``TokenLogprob`` list only where it is needed. The table is shared by a shard's rows."""
    folder = Path(folder)
    _check_split(split)
    manifest = _require_dataset(folder)
    for info in _shards_for(manifest, split):
        shard = read_shard(folder / info.file, info, verify=verify)
        for rec, arr in shard.compact_records(split):
            yield rec, arr, shard.table if arr is not None else None
    for path in _pending_wal(folder, manifest, set()):
        for item in _read_wal(path, _warn):
            if split is None or item.record.split == split:
                yield item.record, item.arrays, item.table


def _token_arrays(arr: LogprobArrays, ids: np.ndarray) -> TokenArrays:
    return TokenArrays(
        ids=ids[arr.idx],
        logprobs=arr.logprobs.astype(np.float32),
        topk_ids=ids[arr.top_idx],
        topk_logprobs=arr.top_logprobs.astype(np.float32),
    )


def iter_token_arrays(
    folder: str | Path, split: str | None = None, *, verify: bool = True
) -> Iterator[tuple[str, TokenArrays | None]]:
    """The training fast path: (record id, teacher token ids + logprobs as arrays) without
    building a pydantic object per token. Ids are −1 where the teacher's vocabulary is
    unknown; use :func:`iter_records` for the tokens' text and bytes there."""
    folder = Path(folder)
    _check_split(split)
    manifest = _require_dataset(folder)
    for info in _shards_for(manifest, split):
        shard = read_shard(folder / info.file, info, verify=verify)
        ids = shard.table.token_ids()
        for rid, arr in shard.arrays(split):
            yield rid, _token_arrays(arr, ids) if arr is not None else None
    for path in _pending_wal(folder, manifest, set()):
        for item in _read_wal(path, _warn):
            if split is not None and item.record.split != split:
                continue
            if item.arrays is None or item.table is None:
                yield item.record.id, None
            else:
                yield item.record.id, _token_arrays(item.arrays, item.table.token_ids())


def _stored_column(folder: Path, manifest: Manifest, column: str) -> Iterator[tuple[str, Any]]:
    """``(where, value)`` of one row field for every stored record, reading only that column
    of each shard, then the records still in write-ahead files; ``where`` names the place."""
    import pyarrow.parquet as pq

    for info in manifest.shards:
        values = pq.read_table(folder / info.file, columns=[column]).column(column).to_pylist()
        for n, value in enumerate(values, start=1):
            yield f"{folder / info.file} row {n}", value
    for path in _pending_wal(folder, manifest, set()):
        for n, payload in enumerate(scan_wal(path).payloads, start=1):
            yield f"{path} frame {n}", (payload.get("row") or {}).get(column)


def record_ids(folder: str | Path) -> set[str]:
    """Ids of every stored record, reading only the id column of each shard."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file() and not (folder / WAL_DIR).is_dir():
        return set()
    return {rid for _, rid in _stored_column(folder, read_manifest(folder), "id") if rid}


def iter_provenance(folder: str | Path) -> Iterator[Provenance | None]:
    """Each stored record's provenance, reading only that column of each shard: what a
    terms check needs, without decoding millions of logprob rows. A row whose provenance
    does not parse raises a :class:`DataError` naming its shard (or write-ahead file)."""
    folder = Path(folder)
    for where, raw in _stored_column(folder, _require_dataset(folder), "provenance"):
        yield _parse_provenance(raw, where)


def _parse_provenance(raw: str | None, where: str) -> Provenance | None:
    if not raw:
        return None
    try:
        return Provenance.model_validate_json(raw)
    except ValueError as exc:
        raise DataError(
            f"{where}: stored provenance is malformed ({exc.__class__.__name__})",
            hint="rebuild the dataset from its harvest cache",
        ) from None


@dataclass
class DatasetStatus:
    """What is in a dataset folder, without decoding any record."""

    folder: Path
    shards: list[ShardInfo]
    shard_rows: int
    pending_records: int
    damage: list[str] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)
    logprob_tokens: int = 0
    bytes: int = 0

    @property
    def bytes_per_token(self) -> float | None:
        return self.bytes / self.logprob_tokens if self.logprob_tokens else None


def dataset_status(folder: str | Path) -> DatasetStatus:
    folder = Path(folder)
    manifest = _require_dataset(folder)
    pending, damage = 0, []
    for path in _pending_wal(folder, manifest, set()):
        scan = scan_wal(path)
        pending += len(scan.payloads)
        damage.extend(str(d) for d in scan.damage)
    splits: dict[str, int] = {}
    for s in manifest.shards:
        for k, v in s.splits.items():
            splits[k] = splits.get(k, 0) + v
    return DatasetStatus(
        folder=folder,
        shards=manifest.shards,
        shard_rows=sum(s.rows for s in manifest.shards),
        pending_records=pending,
        damage=damage,
        splits=splits,
        logprob_tokens=sum(s.logprob_tokens for s in manifest.shards),
        bytes=sum(s.bytes for s in manifest.shards),
    )


# --------------------------------------------------------------------------- whole datasets


def save_records(
    records: Iterable[Record],
    folder: str | Path,
    *,
    codec: LogprobCodec = "fp16",
    shard_records: int = 5000,
    overwrite: bool = False,
    by_split: bool = False,
) -> list[ShardInfo]:
    """Write a finished set of records as a fresh dataset (no write-ahead file needed).

    ``by_split`` writes each split to its own shards (``train-00000-….parquet``), so loading
    one split reads only its files.
    """
    folder = Path(folder)
    if (folder / MANIFEST).is_file() or (folder / WAL_DIR).is_dir():
        if not overwrite:
            raise DataError(
                "dataset folder already holds a dataset",
                file=str(folder),
                hint="choose a new folder, or pass overwrite=True (--overwrite) to replace it",
            )
        _clear(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(shards=[])
    batches: dict[str, list[Record]] = {}

    def emit(prefix: str) -> None:
        batch = batches.pop(prefix)
        name = f"{prefix}-{len(manifest.shards):05d}-{uuid.uuid4().hex[:8]}.parquet"
        items = ((r, *record_arrays(r)) for r in batch)
        manifest.shards.append(write_shard(folder / name, items, codec))

    for rec in records:
        prefix = (rec.split or "unsplit") if by_split else "shard"
        batches.setdefault(prefix, []).append(rec)
        if len(batches[prefix]) >= shard_records:
            emit(prefix)
    for prefix in sorted(
        batches, key=lambda p: (p not in SPLITS, SPLITS.index(p) if p in SPLITS else 0)
    ):
        emit(prefix)
    write_manifest(folder, manifest)
    return manifest.shards


def _clear(folder: Path) -> None:
    manifest = read_manifest(folder)
    write_manifest(folder, Manifest(shards=[]))  # readers see an empty set, never a mix
    for info in manifest.shards:
        (folder / info.file).unlink(missing_ok=True)
    wal_dir = folder / WAL_DIR
    if wal_dir.is_dir():
        for p in wal_dir.glob("*.wal"):
            p.unlink()
        wal_dir.rmdir()


def save_splits(
    records: Iterable[Record],
    folder: str | Path,
    *,
    codec: LogprobCodec = "fp16",
    overwrite: bool = False,
) -> dict[str, int]:
    """Write split records (each ``record.split`` set), one group of shards per split.
    Returns rows per split."""
    recs = list(records)
    counts: dict[str, int] = {}
    for rec in recs:
        if rec.split is None:
            raise DataError(
                f"record {rec.id!r} has no split",
                hint="assign splits first (apidistill.data.splits.make_splits)",
            )
        counts[rec.split] = counts.get(rec.split, 0) + 1
    save_records(recs, folder, codec=codec, overwrite=overwrite, by_split=True)
    return counts
