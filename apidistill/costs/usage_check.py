"""Judge a teacher's reported usage against what the request could have produced.

The budget reserves, before each send, the cost of an input bound
(:meth:`apidistill.costs.tokens.TokenCounter.bound`) and ``max_tokens`` out. A usage inside
both is priced as reported and can never cost more than the reservation, so spend plus money
at risk stays within the cap. Two other cases are not taken at face value:

- **missing usage** (no ``usage`` object, or zero input tokens: every request has input): the
  answer is charged at its reservation, never at $0, since the provider billed something;
- **usage out of bounds** (more output than ``max_tokens``, or more input than the bound): the
  request could not have produced it, so the teacher (or a gateway in front of it) counts
  differently from what was assumed, or misreports. It is priced as reported (that is what
  the provider will bill), flagged, and for a teacher that costs money the run stops at once:
  this is the only way the total can pass the cap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from apidistill.costs.prices import ModelPrice, cost_of
from apidistill.records import Usage

__all__ = ["USAGE_STOP_HINT", "UsageFlag", "UsageVerdict", "judge_usage", "usage_flag_message"]

USAGE_STOP_HINT = (
    "raising the budget does not fix this: find out why the teacher reports more than the "
    "request can produce (the journal's usage_flag events hold each case), then run again "
    "with the same journal; the answers already paid for are kept"
)

UsageFlag = Literal["usage_missing", "usage_out_of_bounds"]


@dataclass(frozen=True)
class UsageVerdict:
    """What to book for one answer, and whether its usage is flagged."""

    cost: Decimal | None  # None: unpriced, the cost is unknown
    flag: UsageFlag | None = None
    stop: bool = False  # the run must stop: the cap can no longer be guaranteed
    detail: dict[str, object] = field(default_factory=dict)


def judge_usage(
    usage: Usage,
    *,
    price: ModelPrice | None,
    input_bound: int,
    max_tokens: int,
    reserved: Decimal | None,
    batch: bool = False,
    reported_cost: Decimal | None = None,
) -> UsageVerdict:
    """The cost to book for ``usage`` and its flag (module docstring).

    ``reported_cost`` is the teacher's own cost, used when the run has no price."""
    detail: dict[str, object] = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "input_bound": input_bound,
        "max_tokens": max_tokens,
        "reserved_usd": None if reserved is None else str(reserved),
    }
    priced = cost_of(price, usage, batch=batch) if price is not None else reported_cost
    if usage.output_tokens > max_tokens or usage.input_tokens > input_bound:
        costs_money = price is not None and (price.input_per_mtok > 0 or price.output_per_mtok > 0)
        detail["cost_usd"] = None if priced is None else str(priced)
        return UsageVerdict(priced, "usage_out_of_bounds", costs_money, detail)
    if usage.input_tokens <= 0:
        cost = reserved if price is not None else reported_cost
        detail["cost_usd"] = None if cost is None else str(cost)
        return UsageVerdict(cost, "usage_missing", False, detail)
    return UsageVerdict(priced)


def usage_flag_message(verdict: UsageVerdict) -> str:
    """One line for the stop message and logs: what was reported against what could be."""
    d = verdict.detail
    return (
        f"the teacher reported {d['input_tokens']} input and {d['output_tokens']} output "
        f"tokens for a request that can produce at most {d['input_bound']} and "
        f"{d['max_tokens']} (reserved ${d['reserved_usd']}, booked ${d['cost_usd']}): its "
        "usage is not what the budget was reserved for, so the run stopped; check the "
        "teacher's base_url (a gateway that counts differently, or misreports) and its "
        "tokenizer (teacher.tokenizer)"
    )
