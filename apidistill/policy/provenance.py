"""The terms a trained student inherits: the decisions recorded with its training data.

Every harvested record stores the id of the terms decision it was harvested under
(``Record.provenance.policy_decision_id``); the full decisions are kept by id in the dataset's
``card.json`` (``policy``) and in the run folder's ``policy.json``. :func:`dataset_terms`
takes the records' own provenance, so each teacher whose outputs are in the dataset is found, and
resolves every decision id they cite. A cited decision that no file records is an error: its
obligations (a name prefix, an attribution line) would otherwise be lost without a trace.
Decisions are matched by id, which is a hash of their content, so a stray file cannot stand
in for another decision.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from apidistill.errors import DataError
from apidistill.policy.schema import Decision
from apidistill.records import Provenance

__all__ = ["DatasetTerms", "dataset_terms", "decision_sources"]

CARD_FILE = "card.json"
RUN_POLICY_FILE = "policy.json"


@dataclass
class DatasetTerms:
    """The decisions cited by a dataset's records, each resolved to its full record."""

    dataset: Path
    decisions: list[Decision] = field(default_factory=list)  # in order of first citation
    records: int = 0
    undecided: int = 0  # records without provenance or without a decision id
    teachers: dict[str, int] = field(default_factory=dict)  # "provider:model" → records


def _decisions_in(value: Any) -> list[Decision]:
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if not isinstance(item, dict) or not item.get("id"):
            continue
        try:
            out.append(Decision.model_validate(item))
        except ValidationError:
            continue  # the card's policy list is free-form: skip what is no decision
    return out


def decision_sources(dataset: Path) -> list[Path]:
    """Files that may record the decisions a dataset's records cite."""
    return [dataset / CARD_FILE, dataset.parent / RUN_POLICY_FILE]


def _known_decisions(dataset: Path) -> dict[str, Decision]:
    known: dict[str, Decision] = {}
    for path in decision_sources(dataset):
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(
                f"cannot read the recorded terms decisions ({exc})",
                file=str(path),
                hint="restore the file from the run, or rebuild the dataset card",
            ) from None
        found = _decisions_in(data.get("policy", []) if path.name == CARD_FILE else data)
        for dec in found:
            known.setdefault(dec.id, dec)
    return known


def dataset_terms(dataset: str | Path, provenance: Iterable[Provenance | None]) -> DatasetTerms:
    """Resolve the decisions cited by ``provenance``, every record's provenance in ``dataset``
    (read by :func:`apidistill.data.store.iter_provenance`: the caller reads the dataset, so
    policy stays pure and below the data layer, docs/architecture.md)."""
    dataset = Path(dataset)
    cited: dict[str, Counter[str]] = {}
    teachers: Counter[str] = Counter()
    records = undecided = 0
    for prov in provenance:
        records += 1
        if prov is None:
            undecided += 1
            continue
        teacher = f"{prov.provider}:{prov.model}"
        teachers[teacher] += 1
        if prov.policy_decision_id:
            cited.setdefault(prov.policy_decision_id, Counter())[teacher] += 1
        else:
            undecided += 1
    known = _known_decisions(dataset) if cited else {}
    missing = [i for i in cited if i not in known]
    if missing:
        looked = ", ".join(map(str, decision_sources(dataset)))
        first = missing[0]
        who = ", ".join(f"{t} ({n} records)" for t, n in cited[first].most_common())
        raise DataError(
            f"records cite terms decision {first} ({who}) that no file records"
            + (f", and {len(missing) - 1} more" if len(missing) > 1 else "")
            + ": its obligations cannot be carried into the student's card",
            file=str(dataset),
            hint="rebuild the dataset with the run that harvested it (its card.json and "
            f"policy.json keep the decisions); looked in {looked}",
        )
    return DatasetTerms(
        dataset=dataset,
        decisions=[known[i] for i in cited],
        records=records,
        undecided=undecided,
        teachers=dict(teachers),
    )
