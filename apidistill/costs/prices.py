"""Prices per model: a user override first, then the genai-prices database.

Costs are :class:`~decimal.Decimal` USD end to end so ledger totals equal a provider's
statement to the cent. An unpriced model is an error unless the user allows it, and then its
costs are ``None`` (unknown), never a silent 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from apidistill.data.schema import Usage

__all__ = ["MTOK", "ModelPrice", "cost_of", "worst_case_cost"]

MTOK = Decimal(1_000_000)


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens. ``batch_discount`` is the share taken off by Batch APIs."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None
    batch_discount: Decimal = Decimal("0.5")
    source: str = "override"  # "override", "genai-prices", "self-hosted"


def cost_of(price: ModelPrice | None, usage: Usage, *, batch: bool = False) -> Decimal | None:
    """Exact cost of one answered request; ``None`` when the model is unpriced."""
    if price is None:
        return None
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    cached_rate = (
        price.cached_input_per_mtok
        if price.cached_input_per_mtok is not None
        else price.input_per_mtok
    )
    total = (
        Decimal(usage.input_tokens - cached) * price.input_per_mtok
        + Decimal(cached) * cached_rate
        + Decimal(usage.output_tokens) * price.output_per_mtok
    ) / MTOK
    if batch:
        total *= Decimal(1) - price.batch_discount
    return total


def worst_case_cost(
    price: ModelPrice | None, input_tokens: int, max_tokens: int, *, batch: bool = False
) -> Decimal | None:
    """What a request can cost at most: every input token uncached, ``max_tokens`` out."""
    return cost_of(price, Usage(input_tokens=input_tokens, output_tokens=max_tokens), batch=batch)
