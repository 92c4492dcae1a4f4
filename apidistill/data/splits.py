"""Deterministic stratified train/validation/test splits that never split a duplicate group.

If a prompt and its near-copy land in train and test, evaluation measures memorization.
Records are first grouped by (near-)duplicate prompts; whole groups are then assigned, per
class, to the split furthest below its target count. Targets are the class size times the
split share, rounded by largest remainder, so every class lands within one example of its
share (up to the size of a duplicate group, which is never broken up). The same records and
seed give the same split whatever their input order.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from apidistill.config import SplitConfig
from apidistill.data.balance import class_of
from apidistill.data.dedupe import (
    DedupeMode,
    NearDupIndex,
    duplicate_groups,
    record_text,
    sample_family,
)
from apidistill.records import Record

__all__ = ["SplitResult", "cross_split_duplicates", "make_splits", "split_targets"]

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")


@dataclass
class SplitResult:
    records: list[Record]  # copies with ``split`` set, in input order
    counts: dict[str, dict[str, int]]  # split → class → count
    targets: dict[str, dict[str, int]]  # split → class → target count
    groups_kept_together: int = 0  # duplicate groups (> 1 record) placed whole
    by: str | None = None

    def of(self, split: str) -> list[Record]:
        return [r for r in self.records if r.split == split]

    def shares(self) -> dict[str, int]:
        return {s: sum(c.values()) for s, c in self.counts.items()}


def split_targets(n: int, cfg: SplitConfig) -> dict[Split, int]:
    """Counts per split summing to ``n``, each within 1 of ``n · share`` (largest remainder)."""
    shares = {"train": cfg.train, "validation": cfg.validation, "test": cfg.test}
    raw = {s: n * shares[s] for s in SPLITS}
    out = {s: math.floor(raw[s] + 1e-9) for s in SPLITS}
    order = sorted(SPLITS, key=lambda s: (-(raw[s] - out[s]), SPLITS.index(s)))
    for s in order[: n - sum(out.values())]:
        out[s] += 1
    return out


@dataclass
class _Unit:
    members: list[int]
    key: str  # stable order key (hash of the first member's id and the seed)
    cls: str = ""
    sizes: dict[str, int] = field(default_factory=dict)


def _units(
    records: Sequence[Record], groups: Sequence[int], by: str | None, seed: int
) -> list[_Unit]:
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    units = []
    for idx in members.values():
        first = min(idx, key=lambda i: records[i].id)
        key = hashlib.sha256(f"{seed}\x00{records[first].id}".encode()).hexdigest()
        cls = class_of(records[first], by) if by else "all"
        units.append(_Unit(idx, key, cls))
    # Big groups first (singletons then fill the gaps exactly), then a seeded stable shuffle.
    units.sort(key=lambda u: (-len(u.members), u.key))
    return units


def make_splits(
    records: Sequence[Record],
    cfg: SplitConfig,
    *,
    dedupe: DedupeMode = "near",
    threshold: float = 0.85,
    groups: Sequence[int] | None = None,
) -> SplitResult:
    """Assign every record to a split; ``groups`` (group index per record) overrides the
    duplicate grouping computed from prompts with ``dedupe``/``threshold``."""
    if groups is None:
        groups = duplicate_groups([record_text(r) for r in records], dedupe, threshold)
        # The samples of one prompt (harvest.n > 1) share a split even with dedupe: none.
        first_of: dict[str, int] = {}
        groups = [groups[first_of.setdefault(sample_family(r), i)] for i, r in enumerate(records)]
    by = cfg.stratify_by
    units = _units(records, groups, by, cfg.seed)
    class_sizes: dict[str, int] = {}
    for u in units:
        class_sizes[u.cls] = class_sizes.get(u.cls, 0) + len(u.members)
    targets = {c: split_targets(n, cfg) for c, n in class_sizes.items()}
    counts: dict[str, dict[str, int]] = {c: dict.fromkeys(SPLITS, 0) for c in class_sizes}
    assigned: dict[int, Split] = {}
    rng = random.Random(cfg.seed)
    for u in units:
        # Splits with a share of this class; the one furthest below target wins.
        open_ = [s for s in SPLITS if targets[u.cls][s] > 0] or list(SPLITS)
        deficit = {s: targets[u.cls][s] - counts[u.cls][s] for s in open_}
        best = max(deficit.values())
        choices = [s for s in open_ if deficit[s] == best]
        split = choices[0] if len(choices) == 1 else rng.choice(choices)
        counts[u.cls][split] += len(u.members)
        for i in u.members:
            assigned[i] = split
    out = [r.model_copy(update={"split": assigned[i]}) for i, r in enumerate(records)]
    return SplitResult(
        records=out,
        counts={s: {c: counts[c][s] for c in counts} for s in SPLITS},
        targets={s: {c: targets[c][s] for c in targets} for s in SPLITS},
        groups_kept_together=sum(1 for u in units if len(u.members) > 1),
        by=by,
    )


def cross_split_duplicates(
    records: Sequence[Record], threshold: float = 0.85, *, held_out: Split = "test"
) -> list[tuple[str, str]]:
    """(train id, held-out id) pairs of near-duplicate prompts across splits: leakage in a
    dataset split elsewhere (or by hand)."""
    index = NearDupIndex(threshold)
    for r in records:
        if r.split == "train":
            index.add(r.id, record_text(r))
    pairs = []
    for r in records:
        if r.split == held_out:
            pairs.extend((k, r.id) for k in index.query(record_text(r)))
    return pairs
