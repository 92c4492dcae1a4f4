"""Same-tokenizer KD targets straight from the dataset's compact arrays (numpy → torch).

A record's logprobs are stored as table indices and values (:mod:`apidistill.data.compact`).
Rebuilding them as pydantic objects costs 1 + k objects per position — about 42 million at
10k records × 200 tokens × k = 20 — only for :mod:`.collate` to turn them back into
``[T, K]`` tensors. When the teacher's token ids are the student's (a self-hosted teacher on
the same tokenizer) this module reads the arrays into those tensors directly, with exactly
the rules of the object path (:func:`.collate._same_vocab_targets`, ``_direct_top``,
``_eot_top``): the first ``top_k`` stored alternatives, each named by its id (or, without
one, by its bytes' unique student token), duplicates after the first dropped, the sampled
token appended when it is missing and there is room. Records the fast path cannot take (ids
missing, or ids that do not spell the completion) return None and go the object path.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from apidistill.data.compact import LogprobArrays, TokenTable
from apidistill.records import Record
from apidistill.train.align import StudentVocab

__all__ = [
    "CompactLogprobs",
    "CompactTargets",
    "TableCache",
    "compact_digest",
    "compact_targets",
    "load_compact_split",
    "student_ids_of_table",
]


@dataclass(frozen=True)
class CompactLogprobs:
    """One record's stored logprobs: its arrays and the (shared) token table they index."""

    arrays: LogprobArrays
    table: TokenTable


def load_compact_split(
    folder: str | Path, split: str | None = None
) -> tuple[list[Record], dict[str, CompactLogprobs]]:
    """A dataset split as records without logprobs plus their compact logprobs by id."""
    from apidistill.data.store import iter_compact_records

    records: list[Record] = []
    compact: dict[str, CompactLogprobs] = {}
    for rec, arrays, table in iter_compact_records(folder, split):
        records.append(rec)
        if arrays is not None and table is not None:
            compact[rec.id] = CompactLogprobs(arrays, table)
    return records, compact


def compact_digest(compact: CompactLogprobs) -> bytes:
    """SHA-256 of one record's stored logprobs that does not depend on the shard's table
    numbering: the tokens it uses, in order of first use, and the values."""
    arr = compact.arrays
    k = int((arr.top_idx != 0).sum(1).max(initial=0)) if arr.top_idx.size else 0
    grid = np.column_stack([arr.idx, arr.top_idx[:, :k]]).ravel()
    used, first, inverse = np.unique(grid, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(used), np.int64)
    rank[order] = np.arange(len(used))
    local = rank[inverse]
    entries = [compact.table.entries[int(j)] for j in used[order]]
    h = hashlib.sha256()
    h.update(json.dumps(entries, ensure_ascii=False, default=list).encode("utf-8", "replace"))
    h.update(local.astype("<i8").tobytes())
    h.update(np.ascontiguousarray(arr.logprobs, "<f8").tobytes())
    h.update(np.ascontiguousarray(arr.top_logprobs[:, :k], "<f8").tobytes())
    return h.digest()


@dataclass(frozen=True)
class CompactTargets:
    """Teacher ids of the answer (end-of-turn stripped) and ``[T, top_k]`` top-k rows for
    them plus one more row for the end-of-turn position (empty unless the teacher's list
    ended with its own end-of-turn entry)."""

    ids: np.ndarray  # int64 [T]
    top_ids: np.ndarray  # int64 [T + 1, top_k]
    top_logprobs: np.ndarray  # float32 [T + 1, top_k], -inf = no slot
    filled: np.ndarray  # int64 [T + 1] slots used per row (0 = no teacher target)


@dataclass
class _TableIds:
    """Per table: the teacher id of each entry, and the student id an alternative names."""

    teacher: np.ndarray
    student: np.ndarray


@dataclass
class TableCache:
    """Student ids of a table's entries, computed once per table (tables are per shard)."""

    vocab: StudentVocab
    _by_table: dict[int, tuple[TokenTable, _TableIds]] = field(default_factory=dict)

    def get(self, table: TokenTable) -> _TableIds:
        hit = self._by_table.get(id(table))
        if hit is None or hit[0] is not table:
            hit = (table, student_ids_of_table(table, self.vocab))
            self._by_table[id(table)] = hit
        return hit[1]


def student_ids_of_table(table: TokenTable, vocab: StudentVocab) -> _TableIds:
    """Entry → teacher id (−1 unknown) and entry → the id an alternative stands for: its own
    id, else the unique student token of its bytes (−1 for none, and for the padding entry)."""
    teacher = table.token_ids()
    student = teacher.copy()
    for j in np.flatnonzero(teacher < 0).tolist():
        if j == 0:
            continue
        _, token, raw = table.entries[j]
        data = bytes(raw) if raw is not None else token.encode("utf-8")
        student[j] = vocab.index.get(data, -1)
    return _TableIds(teacher, student)


def compact_targets(
    compact: CompactLogprobs,
    completion: str,
    vocab: StudentVocab,
    cache: TableCache,
    eot: int,
    top_k: int,
) -> CompactTargets | None:
    """Targets from the arrays, or None when the teacher ids are not usable student ids."""
    arr = compact.arrays
    ids_of = cache.get(compact.table)
    ids = ids_of.teacher[arr.idx]
    if (ids < 0).any():
        return None
    ends_with_eot = bool(ids.size) and int(ids[-1]) == eot
    body = ids[:-1] if ends_with_eot else ids
    table = vocab.token_bytes
    if (body >= len(table)).any():
        return None
    pieces = [table[i] for i in body.tolist()]
    if any(p is None for p in pieces) or b"".join(pieces) != completion.encode():  # type: ignore[arg-type]
        return None
    top_ids, top_lps, filled = _rows(arr, ids_of.student, ids, top_k)
    n = body.size
    if not ends_with_eot:  # the end-of-turn row carries nothing
        top_ids = np.concatenate([top_ids[:n], np.zeros((1, top_k), np.int64)])
        top_lps = np.concatenate([top_lps[:n], np.full((1, top_k), -np.inf, np.float32)])
        filled = np.concatenate([filled[:n], np.zeros(1, np.int64)])
    return CompactTargets(body, top_ids, top_lps, filled)


def _rows(
    arr: LogprobArrays, student_of_entry: np.ndarray, sampled: np.ndarray, top_k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_direct_top`` for every position at once (see the module docstring)."""
    t = sampled.size
    k = min(top_k, arr.top_idx.shape[1]) if arr.top_idx.ndim == 2 else 0
    entry = arr.top_idx[:, :k]
    alt = student_of_entry[entry]
    real = (entry != 0) & (alt >= 0)
    dup = np.zeros_like(real)
    for j in range(1, k):
        dup[:, j] = ((alt[:, :j] == alt[:, j : j + 1]) & real[:, :j]).any(1)
    keep = real & ~dup
    order = np.argsort(~keep, axis=1, kind="stable")
    count = keep.sum(1)
    slot = np.arange(k)[None, :] < count[:, None]
    out_ids = np.zeros((t, top_k), np.int64)
    out_lps = np.full((t, top_k), -np.inf, np.float32)
    out_ids[:, :k] = np.where(slot, np.take_along_axis(alt, order, 1), 0)
    kept_lps = np.take_along_axis(arr.top_logprobs[:, :k], order, 1)
    out_lps[:, :k] = np.where(slot, kept_lps, -np.inf).astype(np.float32)
    has_sampled = (keep & (alt == sampled[:, None])).any(1)
    append = ~has_sampled & (count < top_k)
    rows = np.flatnonzero(append)
    out_ids[rows, count[rows]] = sampled[rows]
    out_lps[rows, count[rows]] = arr.logprobs[rows].astype(np.float32)
    return out_ids, out_lps, count + append
