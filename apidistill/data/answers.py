"""Which journaled answers make a run's dataset, and reading them back from the journal.

The journal (:mod:`apidistill.storage.journal`) is the one durable record of every answer.
A harvest writes only a small index of the answers it returned (``answers.jsonl`` in the run
folder: cache key, sample index and the caller's metadata, one line per answer, in the order
they arrived); the dataset stage joins that index with the journal's stored completions. The
caller's metadata (prompt id, label, gold, student messages) is not part of the cache key, so
it comes from the index: a re-run with relabelled prompts gets the new labels on old answers.

There is no second copy of the answers (no write-ahead files): a harvest killed at any point
loses nothing, because every answer is committed to the journal before it is returned, and
the next harvest answers it from there without sending it again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apidistill.errors import DataError
from apidistill.records import Completion
from apidistill.storage.journal import JournalStore

__all__ = ["AnswerRef", "JournalAnswer", "journal_answers", "read_answer_refs", "write_answer_refs"]

_HINT = "re-run the harvest (apidistill harvest config.yaml): the journal answers it again"


@dataclass(frozen=True)
class AnswerRef:
    """One answer a harvest returned: its cache key and the caller's side of the request."""

    key: str
    sample_index: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> str:
        meta = self.metadata
        return json.dumps(
            {"key": self.key, "sample_index": self.sample_index, "metadata": meta},
            ensure_ascii=False,
            separators=(",", ":"),
            default=str,
        )


@dataclass(frozen=True)
class JournalAnswer:
    """An answer as the dataset stage uses it: the index entry plus the journaled completion.

    ``request`` is the :class:`AnswerRef` (it has the ``metadata`` and ``sample_index`` a
    record needs, like a harvest result's request)."""

    key: str
    request: AnswerRef
    completion: Completion


def write_answer_refs(path: str | Path, refs: Iterable[AnswerRef]) -> Path:
    """Write the index atomically (a crash leaves the old index or the new one, never half)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for ref in refs:
            f.write(ref.as_json() + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return path


def read_answer_refs(path: str | Path) -> list[AnswerRef]:
    """Read the index; a missing file or a damaged line is a :class:`DataError` naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(
            "no harvest answers to build a dataset from",
            file=str(path),
            hint="run the harvest first (apidistill harvest config.yaml)",
        ) from None
    refs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            refs.append(
                AnswerRef(str(obj["key"]), int(obj.get("sample_index", 0)), dict(obj["metadata"]))
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"damaged answer index line: {exc}", file=str(path), line=n, hint=_HINT
            ) from None
    return refs


def journal_answers(journal: str | Path, refs: Sequence[AnswerRef]) -> list[JournalAnswer]:
    """Each indexed answer with its completion from ``journal``, in index order.

    An index entry the journal has no answer for (a journal from another run, or damaged)
    is a :class:`DataError`: a dataset never silently loses paid-for answers."""
    journal = Path(journal)
    if not journal.is_file():
        raise DataError("the run's journal is missing", file=str(journal), hint=_HINT)
    store = JournalStore(journal, readonly=True)
    try:
        stored = store.answers(list(dict.fromkeys(r.key for r in refs)))
    finally:
        store.close()
    missing = [r.key for r in refs if r.key not in stored]
    if missing:
        raise DataError(
            f"{len(missing)} harvested answers are not in the journal (first: {missing[0][:16]})",
            file=str(journal),
            hint=_HINT,
        )
    parsed: dict[str, Completion] = {}
    out = []
    for ref in refs:
        comp = parsed.get(ref.key)
        if comp is None:
            try:
                comp = parsed[ref.key] = Completion.model_validate_json(stored[ref.key])
            except ValueError as exc:
                raise DataError(
                    f"the journal's answer {ref.key[:16]} does not parse: {exc}",
                    file=str(journal),
                    hint="check the journal (apidistill journal salvage)",
                ) from None
        out.append(JournalAnswer(ref.key, ref, comp))
    return out
