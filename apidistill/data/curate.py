"""The dataset stage in one call: filter → dedupe → balance → split, as the run file says.

The order matters and lives here once: filtering first (a refusal must not be the copy a
dedupe keeps), dedupe before balancing (duplicates would inflate a class), balancing before
splitting (so every split sees the balanced shares), and the split groups near-duplicates
with the same threshold the dedupe used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from apidistill.config import DatasetConfig
from apidistill.data.balance import BalanceResult, balance
from apidistill.data.card import DatasetCard, build_card
from apidistill.data.dedupe import DedupeResult, dedupe
from apidistill.data.filters import FilterResult, Validator, apply_filters
from apidistill.data.splits import SplitResult, make_splits
from apidistill.data.store import save_splits
from apidistill.records import Record

__all__ = ["CurateResult", "curate", "keep_top_k"]


@dataclass
class CurateResult:
    records: list[Record]  # every kept record, ``split`` set
    filtered: FilterResult
    deduped: DedupeResult
    balanced: BalanceResult | None
    split: SplitResult

    def card(
        self,
        *,
        name: str = "dataset",
        cost_totals: dict[str, Decimal] | None = None,
        teachers: Sequence[dict[str, Any]] = (),
        policy: Sequence[dict[str, Any]] = (),
        policy_markdown: str | None = None,
        ledger: dict[str, Any] | None = None,
    ) -> DatasetCard:
        return build_card(
            self.records,
            name=name,
            drops_by_reason=self.filtered.dropped_by_reason,
            dedupe_stats=self.deduped.stats(),
            balance=self.balanced,
            cost_totals=cost_totals,
            teachers=teachers,
            policy=policy,
            policy_markdown=policy_markdown,
            ledger=ledger,
        )

    def save(self, folder: str | Path, *, overwrite: bool = False) -> dict[str, int]:
        """Write the split dataset (one group of shards per split)."""
        return save_splits(self.records, folder, overwrite=overwrite)


def curate(
    records: Sequence[Record],
    cfg: DatasetConfig,
    *,
    validator: Validator | None = None,
    seed: int | None = None,
) -> CurateResult:
    """Run the configured curation steps; ``seed`` defaults to ``cfg.splits.seed``.

    Records are taken in id order: a harvest stores answers as they arrive, so a live run and
    a re-run from the cache hold the same records in different orders, and the dataset (and
    the training run resumed on it) must not depend on which one built it.
    """
    seed = cfg.splits.seed if seed is None else seed
    records = sorted(records, key=lambda r: r.id)
    filtered = apply_filters(records, cfg.filters, validator)
    deduped = dedupe(filtered.kept, mode=cfg.dedupe, threshold=cfg.near_dup_threshold)
    kept = deduped.kept
    balanced = None
    if cfg.balance is not None:
        balanced = balance(kept, cfg.balance, seed=seed)
        kept = balanced.kept
    # Survivors of a near-dedupe are no longer near each other; grouping again still keeps any
    # pair that only exact-dedupe (or none) let through on one side of the split.
    split = make_splits(
        kept,
        cfg.splits.model_copy(update={"seed": seed}),
        dedupe=cfg.dedupe,
        threshold=cfg.near_dup_threshold,
    )
    split.records = [keep_top_k(r, cfg.top_k_store) for r in split.records]
    return CurateResult(split.records, filtered, deduped, balanced, split)


def keep_top_k(rec: Record, k: int) -> Record:
    """``rec`` with at most the ``k`` most likely alternatives per position
    (``dataset.top_k_store``): the dataset stores what training will read and no more.
    The sampled token's own log-probability stays whatever ``k`` is."""
    if not rec.logprobs or all(len(t.top) <= k for t in rec.logprobs):
        return rec
    kept = [
        t.model_copy(update={"top": sorted(t.top, key=lambda a: -a.logprob)[:k]})
        for t in rec.logprobs
    ]
    return rec.model_copy(update={"logprobs": kept})
