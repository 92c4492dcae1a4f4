"""What every importer shares: the neutral imported exchange, line-located errors, the
``skip_invalid`` bookkeeping, and the step from an exchange to a dataset :class:`Record`.

An importer reads one kind of existing data (a fine-tuning file, stored completions, a Batch
output, the proxy's captures, a generic chat file) and yields :class:`ImportedExchange`
items. Everything after that is common: ids, provenance (``metadata["import"]`` names the
source kind, the file or id and the line), the terms decision of the model that produced the
answers, and the dataset format the harvest writes, so imported records flow into the same
curation, training and evaluation as harvested ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from apidistill.data.jsonl_lines import jsonl_lines
from apidistill.errors import DataError
from apidistill.records import Message, Provenance, Record, TokenLogprob, Usage

__all__ = [
    "IMPORT_SKIP_HINT",
    "ImportLoad",
    "ImportedExchange",
    "LineProblem",
    "collect",
    "jsonl_objects",
    "record_id",
    "to_record",
    "unique_records",
]

IMPORT_SKIP_HINT = (
    "fix the line, or skip bad lines and report how many: pass --skip-invalid to "
    "`apidistill import` (or to run, harvest, estimate), or set skip_invalid: true on the "
    "run file's import entry"
)
_MAX_PROBLEMS = 1000


class LineProblem(Exception):
    """One unusable item; the caller adds the file and line (or the id) to the message."""


@dataclass
class ImportedExchange:
    """One answered request from existing data, provider-neutral.

    ``messages`` is the input the answer was given to (the student's input as well: an import
    has no prototype prompt to drop), ``completion`` the answer text. ``ref`` names the file
    or remote id the item came from and ``line`` its line (0 for a remote list item).
    """

    source: str
    ref: str
    line: int
    messages: list[Message]
    completion: str
    provider: str
    model: str
    item_id: str | None = None
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: Decimal | None = None
    model_version: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImportLoad:
    """What an importer read: the exchanges, the bad items skipped and the failed requests
    found in the data (a Batch line that errored is not bad input, it is counted apart)."""

    items: list[ImportedExchange] = field(default_factory=list)
    skipped: int = 0
    failed: int = 0
    problems: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append(text)


def jsonl_objects(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line, JSON value)`` for every non-blank line; a line that is not JSON yields a
    :class:`LineProblem` in place of the value (so ``skip_invalid`` can count it)."""
    if not path.is_file():
        raise DataError("import file not found", file=str(path), hint="check the path")
    yield from jsonl_lines(path, LineProblem)


def collect(
    rows: Iterable[tuple[int, Any]],
    build: Any,
    *,
    where: str,
    skip_invalid: bool,
    load: ImportLoad | None = None,
    limit: int | None = None,
) -> ImportLoad:
    """Run ``build(line, value) -> list[ImportedExchange]`` over ``rows``.

    A :class:`LineProblem` (raised by ``build`` or given as the value) stops the import with a
    :class:`DataError` naming ``where`` and the line, unless ``skip_invalid``: then it is
    counted and described in the load's ``problems``.
    """
    load = load or ImportLoad()
    for line, value in rows:
        if limit is not None and len(load.items) >= limit:
            break
        try:
            if isinstance(value, LineProblem):
                raise value
            load.items.extend(build(line, value))
        except LineProblem as exc:
            if not skip_invalid:
                raise DataError(
                    str(exc), file=where, line=line or None, hint=IMPORT_SKIP_HINT
                ) from None
            load.skipped += 1
            load.note(f"{where}:{line}: {exc}" if line else f"{where}: {exc}")
    if limit is not None:
        del load.items[limit:]
    return load


def _content_hash(ex: ImportedExchange) -> str:
    body = {"messages": [m.model_dump() for m in ex.messages], "completion": ex.completion}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def record_id(ex: ImportedExchange) -> str:
    """Stable across re-imports: the source's own id when it has one (completion id,
    custom_id, capture id), else a hash of input and answer."""
    return f"{ex.source}-{ex.item_id or _content_hash(ex)}"


def to_record(ex: ImportedExchange, decision: Any, *, rid: str | None = None) -> Record:
    """The dataset record of one exchange, with the import's provenance and ``decision``
    (the terms decision of the model that produced the answer)."""
    meta = dict(ex.metadata)
    label, gold = meta.pop("label", None), meta.pop("gold", None)
    return Record(
        id=rid or record_id(ex),
        messages=ex.messages,
        completion=ex.completion,
        finish_reason=ex.finish_reason,
        logprobs=ex.logprobs,
        label=None if label is None else str(label),
        gold=None if gold is None else str(gold),
        metadata={**meta, "import": {"source": ex.source, "ref": ex.ref, "line": ex.line}},
        provenance=Provenance(
            provider=ex.provider,
            model=ex.model,
            model_version=ex.model_version,
            policy_decision_id=getattr(decision, "id", None),
            terms_document=getattr(decision, "document", None),
            terms_version=str(getattr(decision, "effective_date", "") or "") or None,
        ),
        usage=ex.usage,
        cost_usd=ex.cost_usd,
    )


def unique_records(items: Iterable[ImportedExchange], decisions: dict[tuple[str, str], Any]):
    """Records with unique ids (a repeated id gets ``-2``, ``-3``… in file order)."""
    seen: set[str] = set()
    for ex in items:
        base = record_id(ex)
        rid, n = base, 1
        while rid in seen:
            n += 1
            rid = f"{base}-{n}"
        seen.add(rid)
        yield to_record(ex, decisions.get((ex.provider, ex.model)), rid=rid)
