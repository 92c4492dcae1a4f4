"""The dataset store: a folder of Parquet shards written once, from finished records.

Layout of a dataset folder::

    manifest.json              shards (size, SHA-256, rows per split)
    train-00000-<id>.parquet   records, zstd; logprobs in the compact layout of compact.py

There is no incremental writer: harvested answers are durable in the run's journal
(:mod:`apidistill.storage.journal`) the moment they arrive, and the dataset stage writes
each split once from them (:func:`save_splits`). A folder written by an older apidistill
that still holds write-ahead files (``wal/*.wal``) is refused by name: its records are in
that run's journal, and the dataset stage rebuilds the folder from there.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from apidistill.data.compact import (
    LogprobArrays,
    LogprobCodec,
    TokenArrays,
    TokenTable,
)
from apidistill.data.shards import (
    MANIFEST,
    Manifest,
    ShardInfo,
    read_manifest,
    read_shard,
    record_arrays,
    write_manifest,
    write_shard,
)
from apidistill.errors import DataError
from apidistill.records import Provenance, Record

__all__ = [
    "DatasetStatus",
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

_OLD_WAL_DIR = "wal"  # write-ahead files of an older apidistill (refused, never read)
SPLITS = ("train", "validation", "test")


# --------------------------------------------------------------------------- reading


def _require_dataset(folder: Path) -> Manifest:
    if not folder.is_dir():
        raise DataError("dataset folder not found", file=str(folder), hint="check the path")
    _refuse_write_ahead(folder)
    if not (folder / MANIFEST).is_file():
        raise DataError(
            "not an apidistill dataset folder (no manifest.json)",
            file=str(folder),
            hint="point at the folder the dataset stage or `apidistill data split` wrote",
        )
    return read_manifest(folder)


def _refuse_write_ahead(folder: Path) -> None:
    """A record-store folder of an older apidistill with records still in write-ahead files:
    never read as if it were whole (those records would be silently missing)."""
    wal = folder / _OLD_WAL_DIR
    if wal.is_dir() and any(wal.glob("*.wal")):
        raise DataError(
            "holds write-ahead files of an older apidistill (wal/*.wal): records not yet in "
            "a shard",
            file=str(wal),
            hint="rebuild the dataset from the run's journal (apidistill run config.yaml "
            "--stop-after dataset): every harvested answer is there",
        )


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
) -> Iterator[Record]:
    """Every record (logprobs rebuilt, token ids set where known), shard by shard.
    ``verify`` checks each shard's SHA-256 against the manifest; a damaged shard raises a
    :class:`DataError` naming it."""
    folder = Path(folder)
    _check_split(split)
    manifest = _require_dataset(folder)
    for info in _shards_for(manifest, split):
        yield from read_shard(folder / info.file, info, verify=verify).records(split)


def load_records(
    folder: str | Path,
    split: str | None = None,
    *,
    verify: bool = True,
) -> list[Record]:
    return list(iter_records(folder, split, verify=verify))


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


def _stored_column(folder: Path, manifest: Manifest, column: str) -> Iterator[tuple[str, Any]]:
    """``(where, value)`` of one row field for every stored record, reading only that column
    of each shard; ``where`` names the place."""
    import pyarrow.parquet as pq

    for info in manifest.shards:
        values = pq.read_table(folder / info.file, columns=[column]).column(column).to_pylist()
        for n, value in enumerate(values, start=1):
            yield f"{folder / info.file} row {n}", value


def record_ids(folder: str | Path) -> set[str]:
    """Ids of every stored record, reading only the id column of each shard."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        return set()
    return {rid for _, rid in _stored_column(folder, read_manifest(folder), "id") if rid}


def iter_provenance(folder: str | Path) -> Iterator[Provenance | None]:
    """Each stored record's provenance, reading only that column of each shard: what a
    terms check needs, without decoding millions of logprob rows. A row whose provenance
    does not parse raises a :class:`DataError` naming its shard."""
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
    splits: dict[str, int] = field(default_factory=dict)
    logprob_tokens: int = 0
    bytes: int = 0

    @property
    def bytes_per_token(self) -> float | None:
        return self.bytes / self.logprob_tokens if self.logprob_tokens else None


def dataset_status(folder: str | Path) -> DatasetStatus:
    folder = Path(folder)
    manifest = _require_dataset(folder)
    splits: dict[str, int] = {}
    for s in manifest.shards:
        for k, v in s.splits.items():
            splits[k] = splits.get(k, 0) + v
    return DatasetStatus(
        folder=folder,
        shards=manifest.shards,
        shard_rows=sum(s.rows for s in manifest.shards),
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
    """Write a finished set of records as a fresh dataset, each shard once.

    ``by_split`` writes each split to its own shards (``train-00000-….parquet``), so loading
    one split reads only its files. A write that fails (disk full, read-only folder) is a
    :class:`DataError` naming the file; the manifest is written last, so readers never see
    a half-written dataset.
    """
    folder = Path(folder)
    written: list[Path] = []
    try:
        return _save_records(records, folder, codec, shard_records, overwrite, by_split, written)
    except OSError as exc:
        for path in written:  # shards of this write that no manifest lists: never read
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        raise DataError(
            f"cannot write the dataset: {exc.strerror or exc}",
            file=str(exc.filename or folder),
            hint="free disk space or make the folder writable, then write it again (the "
            "dataset stage rebuilds it from the run's journal)",
        ) from None


def _save_records(
    records: Iterable[Record],
    folder: Path,
    codec: LogprobCodec,
    shard_records: int,
    overwrite: bool,
    by_split: bool,
    written: list[Path],
) -> list[ShardInfo]:
    if (folder / MANIFEST).is_file():
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
        written.append(folder / name)
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
