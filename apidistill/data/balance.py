"""Balance a dataset by label, length bucket or any metadata field.

A student distilled from 90 % one class learns to answer that class. Balancing caps the
majority classes (``max_per_class``) or downsamples every class to target shares (``target``;
equal shares when neither is given), keeping a seeded random subset of each class in input
order. Classes too small for the target are reported with how many more examples they need,
which :func:`apidistill.data.synth.generate_for_classes` can turn into new prompts.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from apidistill.config import BalanceConfig
from apidistill.errors import ConfigError
from apidistill.records import Record

__all__ = ["BalanceResult", "balance", "class_of", "histogram_text", "length_bucket"]

NONE = "(none)"


def length_bucket(rec: Record) -> str:
    """Power-of-two bucket of the output length in tokens (words when usage is unknown)."""
    n = rec.usage.output_tokens or len(rec.completion.split())
    if n < 16:
        return "0-15"
    lo = 1 << (n.bit_length() - 1)
    return f"{lo}-{2 * lo - 1}"


def class_of(rec: Record, by: str) -> str:
    """The class a record balances under: its label, its length bucket or ``metadata[by]``."""
    if by == "label":
        return rec.label if rec.label is not None else NONE
    if by == "length":
        return length_bucket(rec)
    value = rec.metadata.get(by)
    return NONE if value is None else str(value)


@dataclass
class BalanceResult:
    kept: list[Record]
    by: str
    before: dict[str, int]
    after: dict[str, int]
    target: dict[str, float]
    # Class → examples still missing to meet its target share at the original dataset size
    # (or the cap). Feed it to synth.generate_for_classes to request more prompts.
    under_represented: dict[str, int] = field(default_factory=dict)

    def histogram(self) -> dict[str, dict[str, int]]:
        """Plot-ready data: class → {"before": n, "after": n}."""
        return {c: {"before": n, "after": self.after.get(c, 0)} for c, n in self.before.items()}

    def histogram_text(self, width: int = 30) -> str:
        return histogram_text(self.before, self.after, width=width)


def histogram_text(before: dict[str, int], after: dict[str, int], *, width: int = 30) -> str:
    """Side-by-side bars of class counts before and after balancing."""
    top = max([*before.values(), *after.values(), 1])
    name_w = max([len(c) for c in before] + [5])
    lines = [f"{'class':<{name_w}}  {'before':>7} {'':<{width}}  {'after':>7}"]
    for c in sorted(before, key=lambda k: (-before[k], k)):
        b, a = before[c], after.get(c, 0)
        bar_b = "█" * max(1 if b else 0, round(width * b / top))
        bar_a = "█" * max(1 if a else 0, round(width * a / top))
        lines.append(f"{c:<{name_w}}  {b:>7} {bar_b:<{width}}  {a:>7} {bar_a}")
    return "\n".join(lines)


def _shares(cfg: BalanceConfig, counts: Counter[str]) -> dict[str, float]:
    if cfg.target is None:
        if cfg.max_per_class is not None:
            return {}
        return {c: 1 / len(counts) for c in counts}
    bad = {c: s for c, s in cfg.target.items() if s < 0}
    if bad:
        raise ConfigError(f"target shares must be ≥ 0, got {bad}", key="dataset.balance.target")
    total = sum(cfg.target.values())
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(
            f"target shares must sum to 1.0, got {total:g}",
            key="dataset.balance.target",
            hint="e.g. {positive: 0.5, negative: 0.5}",
        )
    return dict(cfg.target)


def _quotas(cfg: BalanceConfig, counts: Counter[str], shares: dict[str, float]) -> dict[str, int]:
    cap = cfg.max_per_class
    if not shares:  # cap only
        return {c: min(n, cap) if cap else n for c, n in counts.items()}
    # The largest total N with every class able to fill round(share · N) (and under the cap).
    limits = [counts.get(c, 0) / s for c, s in shares.items() if s > 0]
    if cap is not None:
        limits += [cap / s for s in shares.values() if s > 0]
    n_total = math.floor(min(limits) + 1e-9)
    return {
        c: min(counts.get(c, 0), math.floor(shares.get(c, 0.0) * n_total + 0.5 + 1e-9))
        for c in set(counts) | set(shares)
    }


def _needs(
    cfg: BalanceConfig, counts: Counter[str], shares: dict[str, float], total: int
) -> dict[str, int]:
    if shares:
        want = {c: math.ceil(s * total - 1e-9) for c, s in shares.items()}
        if cfg.max_per_class is not None:
            want = {c: min(w, cfg.max_per_class) for c, w in want.items()}
    else:
        want = dict.fromkeys(counts, cfg.max_per_class or 0)
    return {c: w - counts.get(c, 0) for c, w in want.items() if w > counts.get(c, 0)}


def balance(records: Sequence[Record], cfg: BalanceConfig, *, seed: int = 0) -> BalanceResult:
    """Downsample classes to the configured shares/cap; deterministic for a seed."""
    keys = [class_of(r, cfg.by) for r in records]
    counts = Counter(keys)
    shares = _shares(cfg, counts)
    quotas = _quotas(cfg, counts, shares)
    rng = random.Random(seed)
    chosen: set[int] = set()
    members: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        members.setdefault(k, []).append(i)
    for c in sorted(members):
        idx = members[c]
        chosen.update(rng.sample(idx, quotas.get(c, 0)) if quotas.get(c, 0) < len(idx) else idx)
    kept = [r for i, r in enumerate(records) if i in chosen]
    after = Counter(keys[i] for i in chosen)
    return BalanceResult(
        kept=kept,
        by=cfg.by,
        before=dict(counts),
        after={c: after.get(c, 0) for c in counts},
        target=shares,
        under_represented=_needs(cfg, counts, shares, len(records)),
    )
