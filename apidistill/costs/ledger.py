"""What a run cost, read from its journal: totals and breakdowns as exact Decimals.

Every request's usage, settled cost and at-risk money live in the run's journal
(:mod:`apidistill.storage.journal`); the ledger is a read-only view of it, grouped by
teacher, model, label or split (labels and splits come from ``TeacherRequest.metadata``).
It reads the storage module only (cost math knows no engine). The dataset card embeds
:meth:`Ledger.card` and the eval report :meth:`Ledger.spend`, so both state the same money:
settled answers plus what failed, unknown and re-sent sends may have cost (money at risk).

Prompt caching: ``cached_input_tokens`` are the input tokens read from a provider's prompt
cache (OpenAI ``cached_tokens``, Anthropic ``cache_read_input_tokens``) and
``cache_write_input_tokens`` those written to it (Anthropic ``cache_creation_input_tokens``),
each already priced at its own rate in ``cost_usd``; the write count is read from the stored
answer's usage, so journals written before it existed read as 0.

A group with answers from an unpriced model reports ``cost_usd=None`` for those answers
(``unpriced`` counts them): unknown is never added up as 0.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Literal

from apidistill.errors import ConfigError
from apidistill.storage.journal import JournalRow, JournalStore

__all__ = ["GroupBy", "Ledger", "LedgerLine"]

GroupBy = Literal["teacher", "model", "label", "split"]
_ZERO = Decimal(0)
_CENT = Decimal("0.01")
# the stored completion is pydantic's compact JSON; one field, found without decoding the
# logprobs around it
_CACHE_WRITES = re.compile(r'"cache_write_input_tokens":(\d+)')


def _cache_writes(completion_json: str | None) -> int:
    m = _CACHE_WRITES.search(completion_json or "")
    return int(m.group(1)) if m else 0


@dataclass
class LedgerLine:
    """Money and usage of one group of requests (or of all of them)."""

    group: dict[str, str | None] = field(default_factory=dict)
    requests: int = 0
    done: int = 0
    failed: int = 0
    unknown: int = 0
    sends: int = 0  # times possibly billed (answers + unknown outcomes)
    resends: int = 0  # sends beyond the first, per request
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0  # read from a prompt cache
    cache_write_input_tokens: int = 0  # written to a prompt cache (Anthropic)
    cost_usd: Decimal = _ZERO  # settled cost of priced answers
    at_risk_usd: Decimal = _ZERO  # worst cases of sends with unknown outcome
    unpriced: int = 0  # answers whose cost is unknown
    batch: int = 0  # answered through a Batch API

    def add(self, r: JournalRow) -> None:
        self.requests += 1
        state = r.state
        self.done += state == "done"
        self.failed += state == "failed"
        self.unknown += state == "unknown"
        self.sends += r.sends
        self.resends += max(r.sends - 1, 0)
        self.at_risk_usd += r.at_risk_usd
        if state == "done":
            self.input_tokens += r.input_tokens
            self.output_tokens += r.output_tokens
            self.cached_input_tokens += r.cached_input_tokens
            self.cache_write_input_tokens += _cache_writes(r.completion_json)
            self.batch += bool(r.batch)
            if r.cost_usd is None:
                self.unpriced += 1
            else:
                self.cost_usd += r.cost_usd

    @property
    def total_usd(self) -> Decimal:
        """Settled cost plus money at risk: the most this group can have cost."""
        return self.cost_usd + self.at_risk_usd

    def as_dict(self) -> dict[str, object]:
        """JSON-safe form; money as exact Decimal strings (``total_usd`` = cost + at risk)."""
        return {
            **{f"by_{k}": v for k, v in self.group.items()},
            "requests": self.requests,
            "done": self.done,
            "failed": self.failed,
            "unknown": self.unknown,
            "sends": self.sends,
            "resends": self.resends,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cache_write_input_tokens": self.cache_write_input_tokens,
            "cost_usd": str(self.cost_usd),
            "at_risk_usd": str(self.at_risk_usd),
            "total_usd": str(self.total_usd),
            "unpriced": self.unpriced,
            "batch": self.batch,
        }


class Ledger:
    """Read-only cost view of one journal file."""

    def __init__(self, journal: str | Path) -> None:
        self.path = Path(journal)

    def _rows(self) -> Iterable[JournalRow]:
        store = JournalStore(self.path, readonly=True)
        try:
            yield from store.rows()
        finally:
            store.close()

    def totals(self) -> LedgerLine:
        line = LedgerLine()
        for row in self._rows():
            line.add(row)
        return line

    def summary(self, by: Sequence[GroupBy] = ("teacher", "model")) -> list[LedgerLine]:
        """One line per distinct value of ``by`` (e.g. ``("label",)``), largest cost first."""
        for name in by:
            if name not in ("teacher", "model", "label", "split"):
                raise ConfigError(
                    f"cannot group the ledger by {name!r}",
                    hint="use teacher, model, label or split",
                )
        lines: dict[tuple[str | None, ...], LedgerLine] = {}
        attr = {"teacher": "teacher_id", "model": "model", "label": "label", "split": "split"}
        for row in self._rows():
            key = tuple(getattr(row, attr[n]) for n in by)
            line = lines.get(key)
            if line is None:
                line = lines[key] = LedgerLine(group=dict(zip(by, key, strict=True)))
            line.add(row)
        return sorted(lines.values(), key=lambda ln: (-ln.total_usd, str(ln.group)))

    def spend(self) -> dict[str, object]:
        """What the run spent, for a card or report: the totals line of :meth:`card`."""
        return self.totals().as_dict()

    def card(self) -> dict[str, object]:
        """The cost section of a dataset card: totals plus the split by label and split."""
        total = self.totals()
        return {
            "total": total.as_dict(),
            "by_teacher_model": [ln.as_dict() for ln in self.summary(("teacher", "model"))],
            "by_label": [ln.as_dict() for ln in self.summary(("label",))],
            "by_split": [ln.as_dict() for ln in self.summary(("split",))],
        }

    def table(self, by: Sequence[GroupBy] = ("teacher", "model")) -> str:
        """A markdown table of :meth:`summary` (cents rounded for reading only)."""
        head = [*by, "done", "failed", "unknown", "in tok", "out tok", "cost $", "at risk $"]
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for ln in self.summary(by):
            cells = [str(ln.group.get(b)) for b in by] + [
                str(ln.done), str(ln.failed), str(ln.unknown),
                str(ln.input_tokens) + _cache_note(ln), str(ln.output_tokens),
                str(ln.cost_usd.quantize(_CENT)) + (f" (+{ln.unpriced} unpriced)" if ln.unpriced else ""),
                str(ln.at_risk_usd.quantize(_CENT)),
            ]  # fmt: skip
            out.append("| " + " | ".join(cells) + " |")
        return "\n".join(out)


def _cache_note(ln: LedgerLine) -> str:
    """``" (1200 cache read, 300 cache write)"`` for input served or stored by a prompt
    cache; empty when there was none."""
    if not ln.cached_input_tokens and not ln.cache_write_input_tokens:
        return ""
    return f" ({ln.cached_input_tokens} cache read, {ln.cache_write_input_tokens} cache write)"
