"""Parquet shards of records and the manifest that lists them.

A shard is written to a temporary name, fsynced and atomically renamed, and only then listed
in ``manifest.json`` (itself replaced atomically) with its size and SHA-256, so a reader never
sees a half-written shard: a file that is not in the manifest does not exist for it, and a
listed file whose checksum differs is reported by name. Each shard carries the store format
version, the logprob codec and its token table in the Parquet footer metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError
from pydantic_core import to_jsonable_python

from apidistill.data.compact import (
    CODECS,
    EncodedLogprobs,
    LogprobArrays,
    LogprobCodec,
    TokenTable,
    decode_logprobs,
    encode_logprobs,
    from_arrays,
    remap,
    to_arrays,
)
from apidistill.errors import DataError
from apidistill.records import SCHEMA_VERSION, Message, Provenance, Record, Usage

__all__ = [
    "MANIFEST",
    "STORE_VERSION",
    "Manifest",
    "ShardInfo",
    "atomic_write",
    "decode_row",
    "read_manifest",
    "read_shard",
    "record_to_row",
    "write_manifest",
    "write_shard",
]

STORE_VERSION = 1
MANIFEST = "manifest.json"
_META_VERSION = b"apidistill.store_version"
_META_SCHEMA = b"apidistill.schema_version"
_META_CODEC = b"apidistill.logprob_codec"
_META_TABLE = b"apidistill.token_table"

_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("messages", pa.string()),
        ("prompt", pa.string()),
        ("completion", pa.string()),
        ("finish_reason", pa.string()),
        ("label", pa.string()),
        ("gold", pa.string()),
        ("split", pa.string()),
        ("metadata", pa.string()),
        ("provenance", pa.string()),
        ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("cached_input_tokens", pa.int64()),
        ("cost_usd", pa.string()),
        ("lp_t", pa.int32()),
        ("lp_k", pa.int16()),
        ("lp_index_bytes", pa.int8()),
        ("lp_top_idx", pa.binary()),
        ("lp_top_lp", pa.binary()),
        ("lp_rank", pa.binary()),
        ("lp_extra_idx", pa.binary()),
        ("lp_extra_lp", pa.binary()),
    ]
)
_LP_BLOBS = ("top_idx", "top_lp", "rank", "extra_idx", "extra_lp")


# --------------------------------------------------------------------------- record ↔ row


def _json(value: Any) -> str:
    return json.dumps(to_jsonable_python(value), separators=(",", ":"), ensure_ascii=False)


def record_to_row(rec: Record) -> dict[str, Any]:
    """Every field of a record except its logprobs, as Parquet-friendly scalars."""
    return {
        "id": rec.id,
        "messages": _json([m.model_dump() for m in rec.messages]) if rec.messages else None,
        "prompt": rec.prompt,
        "completion": rec.completion,
        "finish_reason": rec.finish_reason,
        "label": rec.label,
        "gold": rec.gold,
        "split": rec.split,
        "metadata": _json(rec.metadata),
        "provenance": rec.provenance.model_dump_json() if rec.provenance else None,
        "input_tokens": rec.usage.input_tokens,
        "output_tokens": rec.usage.output_tokens,
        "cached_input_tokens": rec.usage.cached_input_tokens,
        "cost_usd": str(rec.cost_usd) if rec.cost_usd is not None else None,
    }


def _lp_columns(enc: EncodedLogprobs | None) -> dict[str, Any]:
    if enc is None:
        return {"lp_t": None, "lp_k": None, "lp_index_bytes": None} | {
            f"lp_{n}": None for n in _LP_BLOBS
        }
    cols: dict[str, Any] = {"lp_t": enc.t, "lp_k": enc.k, "lp_index_bytes": enc.index_bytes}
    cols.update({f"lp_{n}": getattr(enc, n) for n in _LP_BLOBS})
    return cols


def row_encoding(row: dict[str, Any]) -> EncodedLogprobs | None:
    if row.get("lp_t") is None:
        return None
    return EncodedLogprobs(
        t=row["lp_t"],
        k=row["lp_k"],
        index_bytes=row["lp_index_bytes"],
        **{n: row[f"lp_{n}"] for n in _LP_BLOBS},
    )


def decode_row(row: dict[str, Any], where: str) -> Record:
    """A record (without logprobs) from a stored row; a bad row names its place."""
    try:
        messages = row["messages"]
        prov = row["provenance"]
        rec = Record(
            id=row["id"],
            messages=[Message(**m) for m in json.loads(messages)] if messages else None,
            prompt=row["prompt"],
            completion=row["completion"],
            finish_reason=row["finish_reason"],
            label=row["label"],
            gold=row["gold"],
            split=row["split"],
            metadata=json.loads(row["metadata"]) if row["metadata"] else {},
            provenance=Provenance.model_validate_json(prov) if prov else None,
            usage=Usage(
                input_tokens=row["input_tokens"] or 0,
                output_tokens=row["output_tokens"] or 0,
                cached_input_tokens=row["cached_input_tokens"] or 0,
            ),
            cost_usd=Decimal(row["cost_usd"]) if row["cost_usd"] is not None else None,
        )
    except (ValidationError, KeyError, TypeError, ValueError, ArithmeticError) as exc:
        raise DataError(
            f"{where}: stored record is malformed ({type(exc).__name__}: {str(exc)[:200]})",
            hint="the file was edited or written by another tool; restore it from the run",
        ) from None
    return rec


# --------------------------------------------------------------------------- files


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Any) -> None:
    """Run ``write(tmp_path)``, fsync the result, rename it over ``path``, fsync the folder."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class ShardInfo:
    file: str
    rows: int
    bytes: int
    sha256: str
    codec: str
    splits: dict[str, int]
    logprob_tokens: int

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Manifest:
    shards: list[ShardInfo]
    store_version: int = STORE_VERSION
    schema_version: int = SCHEMA_VERSION
    updated_at: str = ""


def read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST
    if not path.is_file():
        return Manifest(shards=[])
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        version = int(data["store_version"])
        shards = [ShardInfo(**s) for s in data["shards"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"dataset manifest is unreadable ({type(exc).__name__}: {exc})",
            file=str(path),
            hint="restore manifest.json; shards not listed in it are ignored",
        ) from None
    _check_version(version, str(path))
    # files are opened and deleted by name (an older manifest's ``compacted_wal`` list names
    # write-ahead files that are never opened again: it is ignored)
    for name in [s.file for s in shards]:
        if not isinstance(name, str) or not _plain_name(name):
            raise DataError(
                f"dataset manifest names a file outside its folder: {name!r}",
                file=str(path),
                hint="a manifest lists plain file names only; do not use this folder as is",
            )
    return Manifest(
        shards,
        version,
        int(data.get("schema_version", 1)),
        data.get("updated_at", ""),
    )


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0")


def write_manifest(folder: Path, manifest: Manifest) -> None:
    manifest.updated_at = datetime.now(UTC).isoformat()
    body = {
        "store_version": manifest.store_version,
        "schema_version": manifest.schema_version,
        "updated_at": manifest.updated_at,
        "shards": [s.to_json() for s in manifest.shards],
    }
    text = json.dumps(body, indent=1)
    atomic_write(folder / MANIFEST, lambda p: p.write_text(text, encoding="utf-8"))


def _check_version(version: int, where: str) -> None:
    if version > STORE_VERSION:
        raise DataError(
            f"written by a newer apidistill (store format {version}; this one reads up to "
            f"{STORE_VERSION})",
            file=where,
            hint="upgrade apidistill (pip install -U apidistill)",
        )
    if version < 1:
        raise DataError(f"unknown store format version {version}", file=where)


def write_shard(
    path: Path,
    items: Iterable[tuple[Record, LogprobArrays | None, TokenTable | None]],
    codec: LogprobCodec,
) -> ShardInfo:
    """Write records (with logprobs as arrays over their own token tables) into one shard.

    Every record's tokens are re-indexed into one table for the shard, so a token's text and
    bytes are stored once per shard however often it occurs.
    """
    table = TokenTable()
    staged: list[tuple[dict[str, Any], LogprobArrays | None]] = []
    splits: dict[str, int] = {}
    for rec, arr, local in items:
        row = record_to_row(rec)
        if arr is not None and local is not None:
            mapping = np.array(
                [0] + [table.add(*_key(e)) for e in local.entries[1:]], dtype=np.int64
            )
            arr = remap(arr, mapping)
        staged.append((row, arr))
        key = rec.split or "unsplit"
        splits[key] = splits.get(key, 0) + 1
    table, order = _by_frequency(table, [a for _, a in staged if a is not None])
    rows, tokens = [], 0
    for row, arr in staged:
        enc = encode_logprobs(remap(arr, order), codec, len(table)) if arr is not None else None
        tokens += enc.t if enc else 0
        rows.append(row | _lp_columns(enc))
    tbl = pa.Table.from_pylist(rows, schema=_SCHEMA)
    meta = {
        _META_VERSION: str(STORE_VERSION).encode(),
        _META_SCHEMA: str(SCHEMA_VERSION).encode(),
        _META_CODEC: codec.encode(),
        _META_TABLE: table.to_bytes(),
    }
    atomic_write(path, lambda p: _write_parquet(p, tbl, meta))
    return ShardInfo(
        file=path.name,
        rows=len(rows),
        bytes=path.stat().st_size,
        sha256=sha256_file(path),
        codec=codec,
        splits=splits,
        logprob_tokens=tokens,
    )


def _write_parquet(path: Path, tbl: pa.Table, meta: dict[bytes, bytes]) -> None:
    # store_schema=False: pyarrow's Arrow-schema copy would repeat the metadata (the token
    # table, base64) in the footer; the Parquet schema alone round-trips these column types.
    with pq.ParquetWriter(
        path, tbl.schema, compression="zstd", compression_level=9, store_schema=False
    ) as writer:
        writer.add_key_value_metadata(meta)
        writer.write_table(tbl)


def _by_frequency(table: TokenTable, arrays: list[LogprobArrays]) -> tuple[TokenTable, np.ndarray]:
    """Renumber the table so frequent tokens get small indices (then the high byte planes
    of the indices are mostly zero and compress away). Returns the table and old → new."""
    counts = np.zeros(len(table), dtype=np.int64)
    for a in arrays:
        counts += np.bincount(a.idx, minlength=len(table))
        counts += np.bincount(a.top_idx.ravel(), minlength=len(table))
    ranked = 1 + np.argsort(-counts[1:], kind="stable")
    order = np.zeros(len(table), dtype=np.int64)
    order[ranked] = np.arange(1, len(table))
    return TokenTable([table.entries[0], *(table.entries[i] for i in ranked)]), order


def _key(
    entry: tuple[int | None, str, tuple[int, ...] | None],
) -> tuple[int | None, str, list[int] | None]:
    tid, tok, raw = entry
    return tid, tok, list(raw) if raw is not None else None


@dataclass
class ShardRows:
    """An opened shard: its rows, its token table and codec."""

    path: Path
    table: TokenTable
    codec: LogprobCodec
    rows: pa.Table

    def records(self, split: str | None = None) -> Iterator[Record]:
        for n, row, enc in self._rows(split):
            rec = decode_row(row, f"{self.path} row {n}")
            if enc is not None:
                rec.logprobs = from_arrays(self._decode(enc, n), self.table)
            yield rec

    def compact_records(
        self, split: str | None = None
    ) -> Iterator[tuple[Record, LogprobArrays | None]]:
        """Records without logprobs, each with its logprob arrays (index into ``table``)."""
        for n, row, enc in self._rows(split):
            yield (
                decode_row(row, f"{self.path} row {n}"),
                (self._decode(enc, n) if enc is not None else None),
            )

    def arrays(self, split: str | None = None) -> Iterator[tuple[str, LogprobArrays | None]]:
        for n, row, enc in self._rows(split):
            yield row["id"], self._decode(enc, n) if enc is not None else None

    def _rows(
        self, split: str | None
    ) -> Iterator[tuple[int, dict[str, Any], EncodedLogprobs | None]]:
        for n, row in enumerate(self.rows.to_pylist(), start=1):
            if split is not None and row["split"] != split:
                continue
            yield n, row, row_encoding(row)

    def _decode(self, enc: EncodedLogprobs, n: int) -> LogprobArrays:
        try:
            arr = decode_logprobs(enc, self.codec)
        except DataError as exc:
            raise DataError(f"{self.path} row {n}: {exc.message}") from None
        if arr.idx.size and int(max(arr.idx.max(), arr.top_idx.max(initial=0))) >= len(self.table):
            raise DataError(f"{self.path} row {n}: token index outside the shard's token table")
        return arr


def read_shard(path: Path, expected: ShardInfo | None = None, *, verify: bool = True) -> ShardRows:
    """Open one shard, checking checksum (against the manifest) and format version."""
    if not path.is_file():
        raise DataError(
            "shard listed in the manifest is missing",
            file=str(path),
            hint="restore the file, or remove its entry from manifest.json to load the rest",
        )
    if verify and expected is not None and sha256_file(path) != expected.sha256:
        raise DataError(
            "shard checksum differs from the manifest (file damaged or edited)",
            file=str(path),
            hint="restore the file from a backup, or remove its entry from manifest.json",
        )
    try:
        pf = pq.ParquetFile(path)
        meta = pf.metadata.metadata or {}
        tbl = pf.read()
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"not a readable Parquet shard ({exc})", file=str(path)) from None
    if _META_VERSION not in meta:
        raise DataError(
            "not an apidistill dataset shard (no store version in its metadata)", file=str(path)
        )
    _check_version(int(meta[_META_VERSION]), str(path))
    codec = meta.get(_META_CODEC, b"fp16").decode()
    if codec not in CODECS:
        raise DataError(f"unknown logprob codec {codec!r}", file=str(path))
    table = TokenTable.from_bytes(meta[_META_TABLE]) if _META_TABLE in meta else TokenTable()
    return ShardRows(path, table, codec, tbl)  # type: ignore[arg-type]


def record_arrays(rec: Record) -> tuple[LogprobArrays | None, TokenTable | None]:
    """A record's logprobs as arrays over a fresh token table (None when it has none)."""
    if rec.logprobs is None:
        return None, None
    table = TokenTable()
    return to_arrays(rec.logprobs, table, record_id=rec.id), table
