"""The dataset card: what is in a distillation set, where it came from, what was removed.

A user must be able to trust a dataset built by a machine. The card states counts, label and
split histograms, every drop by reason, dedupe and balance effects, token statistics, cost,
the teachers and the terms decisions under which the data was harvested, as Markdown for
people and JSON for tools. Facts the records cannot tell (drops, cost ledger totals, policy
decisions) are passed in by the caller; the rest is computed from the records.

Spend comes from the run's ledger (:meth:`apidistill.costs.ledger.Ledger.card`), not from
the records: a record only carries the cost of its own answer, while the ledger also holds
failed, outcome-unknown and re-sent sends and the money still at risk. The card shows the
ledger's ``total_usd`` (settled + at risk) as the run's spend.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from apidistill.data.shards import STORE_VERSION, atomic_write
from apidistill.errors import redact
from apidistill.records import SCHEMA_VERSION, Record

__all__ = ["DatasetCard", "build_card", "token_stats"]


def _output_tokens(rec: Record) -> int:
    if rec.usage.output_tokens:
        return rec.usage.output_tokens
    if rec.logprobs is not None:
        return len(rec.logprobs)
    return len(rec.completion.split())


def _summary(values: Sequence[int]) -> dict[str, float | int]:
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "count": len(values),
        "total": sum(values),
        "mean": round(statistics.fmean(values), 2),
        "median": statistics.median(ordered),
        "p95": p95,
        "max": ordered[-1],
    }


def token_stats(records: Sequence[Record]) -> dict[str, Any]:
    """Output/input token summaries and how much logprob supervision the records carry."""
    with_lp = [r for r in records if r.logprobs is not None]
    ks = Counter(max((len(p.top) for p in r.logprobs or []), default=0) for r in with_lp)
    positions = sum(len(r.logprobs or []) for r in with_lp)
    with_ids = sum(1 for r in with_lp for p in r.logprobs or [] if p.token_id is not None)
    return {
        "output_tokens": _summary([_output_tokens(r) for r in records]),
        "input_tokens": _summary([r.usage.input_tokens for r in records if r.usage.input_tokens]),
        "records_with_logprobs": len(with_lp),
        "logprob_positions": positions,
        "top_k": {str(k): n for k, n in sorted(ks.items())},
        "token_ids_known_share": round(with_ids / positions, 4) if positions else None,
    }


def _provenance(records: Sequence[Record]) -> dict[str, Any]:
    teachers = Counter(
        f"{r.provenance.provider}:{r.provenance.model}" for r in records if r.provenance
    )
    versions = Counter(
        r.provenance.model_version for r in records if r.provenance and r.provenance.model_version
    )
    decisions = Counter(
        r.provenance.policy_decision_id
        for r in records
        if r.provenance and r.provenance.policy_decision_id
    )
    times = [r.provenance.harvested_at for r in records if r.provenance]
    return {
        "teachers": dict(teachers),
        "model_versions": dict(versions),
        "policy_decision_ids": dict(decisions),
        "harvested_from": min(times).isoformat() if times else None,
        "harvested_to": max(times).isoformat() if times else None,
        "without_provenance": sum(1 for r in records if r.provenance is None),
    }


def _ledger_totals(ledger: Mapping[str, Any]) -> dict[str, str]:
    """The USD rows of the card from the ledger's totals line (exact Decimal strings)."""
    total = ledger["total"]
    return {
        "settled_usd": str(total["cost_usd"]),
        "at_risk_usd": str(total["at_risk_usd"]),
        "total_usd": str(total["total_usd"]),
    }


def _ledger_note(ledger: Mapping[str, Any]) -> list[str]:
    t = ledger["total"]
    return [
        f"Ledger: {t['requests']} requests, {t['sends']} sends ({t['resends']} re-sent), "
        f"{t['done']} answered, {t['failed']} failed, {t['unknown']} outcome unknown, "
        f"{t['unpriced']} unpriced. Spend is settled cost plus money at risk "
        "(sends that may have been billed without an answer).",
        "",
    ]


def _record_cost(records: Sequence[Record]) -> dict[str, Any]:
    known = [r.cost_usd for r in records if r.cost_usd is not None]
    return {
        "sum_usd": str(sum(known, Decimal(0))),
        "records_with_unknown_cost": len(records) - len(known),
    }


@dataclass
class DatasetCard:
    name: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, **self.data}

    def to_markdown(self) -> str:
        d = self.data
        out = [
            f"# Dataset card: {self.name}",
            "",
            f"Built {d['created_at']} · store format "
            f"{d['store_version']} · record schema {d['schema_version']}",
            "",
        ]
        out += ["## Counts", "", f"- records: **{d['records']}**"]
        out += [f"- {s}: {n}" for s, n in d["splits"].items()]
        out += _table("Labels", ["label", "records"], d["labels"].items())
        out += _table("Dropped by filters", ["reason", "records"], d["drops_by_reason"].items())
        if d.get("dedupe"):
            out += _table("Deduplication", ["measure", "value"], d["dedupe"].items())
        if d.get("balance"):
            b = d["balance"]
            rows = [(c, v["before"], v["after"]) for c, v in b["histogram"].items()]
            out += _table(f"Balance (by {b['by']})", ["class", "before", "after"], rows)
            if b["under_represented"]:
                need = ", ".join(f"{c}: {n}" for c, n in b["under_represented"].items())
                out += [f"Under-represented (more examples needed): {need}", ""]
        ts = d["tokens"]
        rows = [
            (k, *(ts[k].get(c, "") for c in ("total", "mean", "median", "p95", "max")))
            for k in ("output_tokens", "input_tokens")
            if ts[k].get("count")
        ]
        out += _table("Tokens", ["", "total", "mean", "median", "p95", "max"], rows)
        out += [
            f"Records with logprobs: {ts['records_with_logprobs']} "
            f"({ts['logprob_positions']} positions; top-k sizes {ts['top_k'] or '—'}; "
            f"teacher token ids known for {_pct(ts['token_ids_known_share'])} of positions)",
            "",
        ]
        cost = d["cost"]
        rows = [(k, f"${v}") for k, v in cost["totals_usd"].items()]
        rows.append(("sum of record costs", f"${cost['records']['sum_usd']}"))
        out += _table("Cost", ["item", "USD"], rows)
        if cost.get("ledger"):
            out += _ledger_note(cost["ledger"])
        if cost["records"]["records_with_unknown_cost"]:
            out += [
                f"{cost['records']['records_with_unknown_cost']} records have an unknown cost "
                "(unpriced model).",
                "",
            ]
        prov = d["provenance"]
        out += _table("Teachers", ["teacher", "records"], prov["teachers"].items())
        out += [f"Harvested {prov['harvested_from']} → {prov['harvested_to']}", ""]
        for t in d["teachers"]:
            out.append("- " + ", ".join(f"{k}: {v}" for k, v in t.items()))
        out += ["", "## Terms of service decisions", ""]
        out += [d["policy_markdown"]] if d.get("policy_markdown") else []
        for p in d["policy"]:
            out.append("- " + ", ".join(f"{k}: {v}" for k, v in p.items()))
        if not d["policy"] and not d.get("policy_markdown"):
            out.append("No policy decision was recorded for this dataset.")
        for title, text in d.get("notes", {}).items():
            out += ["", f"## {title}", "", text]
        return "\n".join(out).rstrip() + "\n"

    def write(self, folder: str | Path) -> tuple[Path, Path]:
        """``card.json`` and ``README.md`` in ``folder`` (written atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        js, md = folder / "card.json", folder / "README.md"
        text = redact(json.dumps(self.to_json(), indent=2, default=str))
        atomic_write(js, lambda p: p.write_text(text, encoding="utf-8"))
        markdown = redact(self.to_markdown())  # no configured key in a card
        atomic_write(md, lambda p: p.write_text(markdown, encoding="utf-8"))
        return md, js


def _pct(share: float | None) -> str:
    return "—" if share is None else f"{100 * share:.1f}%"


def _table(title: str, header: list[str], rows: Any) -> list[str]:
    rows = list(rows)
    out = [f"## {title}", ""]
    if not rows:
        return [*out, "none", ""]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|" * len(header))
    out += [
        "| " + " | ".join(str(c) for c in (r if isinstance(r, tuple) else (r,))) + " |"
        for r in rows
    ]
    return [*out, ""]


def build_card(
    records: Sequence[Record],
    *,
    name: str = "dataset",
    drops_by_reason: Mapping[str, int] | None = None,
    dedupe_stats: Mapping[str, int] | None = None,
    balance: Any | None = None,
    cost_totals: Mapping[str, Decimal] | None = None,
    teachers: Sequence[Mapping[str, Any]] = (),
    policy: Sequence[Mapping[str, Any]] = (),
    policy_markdown: str | None = None,
    notes: Mapping[str, str] | None = None,
    ledger: Mapping[str, Any] | None = None,
) -> DatasetCard:
    """Compute the card of ``records``. ``balance`` is a ``BalanceResult``; ``ledger`` is
    :meth:`Ledger.card` of the run's journal (its totals become the card's spend);
    ``cost_totals`` are further Decimal totals shown as given (e.g. ``{"harvest":
    Decimal("1.20")}``); ``teachers`` and ``policy`` are dicts shown as given (e.g. a policy
    Decision dumped to a dict)."""
    totals_usd = _ledger_totals(ledger) if ledger else {}
    totals_usd.update({k: str(v) for k, v in (cost_totals or {}).items()})
    labels = Counter(r.label if r.label is not None else "(none)" for r in records)
    splits = Counter(r.split or "unsplit" for r in records)
    data: dict[str, Any] = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "store_version": STORE_VERSION,
        "schema_version": SCHEMA_VERSION,
        "records": len(records),
        "splits": {s: splits[s] for s in ("train", "validation", "test", "unsplit") if splits[s]},
        "labels": dict(sorted(labels.items(), key=lambda kv: (-kv[1], kv[0]))),
        "drops_by_reason": dict(drops_by_reason or {}),
        "dedupe": dict(dedupe_stats) if dedupe_stats else None,
        "balance": {
            "by": balance.by,
            "histogram": balance.histogram(),
            "under_represented": balance.under_represented,
        }
        if balance is not None
        else None,
        "tokens": token_stats(records),
        "cost": {
            "totals_usd": totals_usd,
            "records": _record_cost(records),
            "ledger": dict(ledger) if ledger else None,
        },
        "provenance": _provenance(records),
        "teachers": [dict(t) for t in teachers],
        "policy": [dict(p) for p in policy],
        "policy_markdown": policy_markdown,
        "notes": dict(notes or {}),
    }
    return DatasetCard(name=name, data=data)
