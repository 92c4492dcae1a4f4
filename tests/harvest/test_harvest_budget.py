from __future__ import annotations

import asyncio
import random
import sqlite3
from datetime import date
from decimal import Decimal

import pytest
from harvest_fakes import FakeTeacher, requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apidistill.config import HarvestConfig
from apidistill.costs.budget import Budget
from apidistill.costs.prices import ModelPrice
from apidistill.errors import BudgetExceeded, ConfigError, TeacherTimeout, TeacherUnavailable
from apidistill.harvest import HarvestOptions, harvest
from apidistill.harvest.retry import RetryPolicy

D = Decimal


def test_reserve_settle_release_accounting():
    b = Budget(D("1.00"))
    b.reserve("a", D("0.40"))
    b.reserve("b", D("0.40"))
    assert (b.reserved, b.remaining) == (D("0.80"), D("0.20"))
    with pytest.raises(BudgetExceeded, match="nothing was sent"):
        b.reserve("c", D("0.30"))
    b.settle("a", D("0.10"))
    b.release("b")
    assert (b.spent, b.reserved, b.remaining) == (D("0.10"), D(0), D("0.90"))
    b.reserve("c", D("0.90"))  # exactly the limit fits
    with pytest.raises(BudgetExceeded):
        b.reserve("d", D("0.000001"))


def test_unknown_outcome_stays_charged_and_a_resend_needs_a_new_reservation():
    b = Budget(D("1"))
    b.reserve("a", D("0.6"))
    assert b.mark_at_risk("a") == D("0.6")
    assert (b.at_risk, b.reserved, b.committed) == (D("0.6"), D(0), D("0.6"))
    with pytest.raises(BudgetExceeded):
        b.reserve("a", D("0.6"))  # the re-send does not fit next to the money at risk
    b.reserve("a", D("0.4"))
    b.settle("a", D("0.3"))
    assert (b.spent, b.at_risk, b.remaining) == (D("0.3"), D("0.6"), D("0.1"))


def test_history_from_earlier_runs_counts():
    b = Budget(D("5"), already_spent=D("3"), at_risk=D("1.5"))
    with pytest.raises(BudgetExceeded, match="at risk"):
        b.reserve("a", D("0.6"))
    b.restore(spent=D("1"), at_risk=D("0"))
    b.reserve("a", D("0.6"))
    assert b.remaining == D("3.4")


def test_unpriced_requests_are_only_counted():
    b = Budget(D("0"))
    b.reserve("a", None)
    b.settle("a", None)
    assert (b.requests_reserved, b.requests_settled, b.spent, b.unpriced) == (1, 1, D(0), True)


def test_per_day_budget_resets_at_utc_midnight():
    day = [date(2026, 1, 1)]
    b = Budget(D("100"), per_day=D("1"), today=lambda: day[0])
    b.reserve("a", D("0.8"))
    b.settle("a", D("0.8"))
    with pytest.raises(BudgetExceeded, match="per-day"):
        b.reserve("b", D("0.3"))
    day[0] = date(2026, 1, 2)
    b.reserve("b", D("0.9"))  # a new day
    assert b.spent == D("0.8")


def test_misuse_and_bad_values_are_clear():
    with pytest.raises(ConfigError, match=r"budget\.usd"):
        Budget(-1)
    with pytest.raises(ConfigError):
        Budget("lots")
    assert Budget(0.1).limit == D("0.1")  # floats go through str: no binary noise
    b = Budget(1)
    with pytest.raises(ValueError, match="no reservation"):
        b.settle("nope", D(0))
    b.reserve("x", D("0.1"))
    with pytest.raises(ValueError, match="already holds"):
        b.reserve("x", D("0.1"))


@settings(max_examples=300, deadline=None)
@given(
    limit=st.decimals(min_value=0, max_value=10, places=4),
    ops=st.lists(
        st.tuples(
            st.integers(0, 7),  # request
            st.sampled_from(["reserve", "settle", "release", "at_risk"]),
            st.decimals(min_value=0, max_value=3, places=6),  # worst case
            st.floats(0, 1),  # actual share of the worst case
        ),
        max_size=80,
    ),
)
def test_property_committed_money_never_exceeds_the_limit(limit, ops):
    b = Budget(limit)
    holding: dict[str, Decimal] = {}
    settled_total = D(0)
    for req, op, worst, share in ops:
        key = f"r{req}"
        if op == "reserve" and key not in holding:
            try:
                b.reserve(key, worst)
            except BudgetExceeded:
                continue
            holding[key] = worst
        elif op == "settle" and key in holding:
            actual = (holding.pop(key) * D(str(share))).quantize(D("0.000001"))
            b.settle(key, actual)
            settled_total += actual
        elif op == "release" and key in holding:
            holding.pop(key)
            b.release(key)
        elif op == "at_risk" and key in holding:
            holding.pop(key)
            b.mark_at_risk(key)
        assert b.committed <= limit
        assert b.reserved == sum(holding.values(), D(0))
    assert b.spent == settled_total
    assert b.spent + b.at_risk <= limit


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    n=st.integers(1, 40),
    concurrency=st.integers(1, 12),
    budget_cents=st.integers(0, 400),
    fault_seed=st.integers(0, 10_000),
    fault_rate=st.sampled_from([0.0, 0.2, 0.5]),
)
def test_property_engine_never_spends_past_the_budget(
    tmp_path_factory, n, concurrency, budget_cents, fault_seed, fault_rate
):
    """Random sizes, concurrency and failures through the real engine: settled + at-risk
    money stays within the budget and no request settles above its reservation."""
    rng = random.Random(fault_seed)
    sizes = {f"p-{i}": rng.randint(1, 64) for i in range(n)}

    def script(req, call):
        r = random.Random(f"{fault_seed}:{req.prompt_id}:{call}").random()
        if r < fault_rate / 2:
            return TeacherTimeout("lost answer", maybe_billed=True)
        if r < fault_rate:
            return TeacherUnavailable("503", status=503)
        return None

    reqs = [
        r.model_copy(
            update={"params": r.params.model_copy(update={"max_tokens": sizes[r.prompt_id]})}
        )
        for r in requests(n, prefix="p")
    ]
    price = ModelPrice(input_per_mtok=D("1000"), output_per_mtok=D("4000"))
    limit = D(budget_cents) / 100
    journal = tmp_path_factory.mktemp("budget") / "j.sqlite"
    budget = Budget(limit)
    stream = harvest(
        reqs, teacher=FakeTeacher(latency_s=0.001, script=script), journal=journal,
        budget=budget, price=price, config=HarvestConfig(concurrency=concurrency), progress=False,
        options=HarvestOptions(durable=False, retry_policy=RetryPolicy(
            max_retries=2, initial_backoff_s=0.001, max_backoff_s=0.002)),
    )  # fmt: skip
    summary = asyncio.run(_await(stream))
    assert budget.spent + budget.at_risk <= limit
    assert budget.reserved == 0
    con = sqlite3.connect(journal)
    rows = con.execute("SELECT cost_usd, reserved_usd, at_risk_usd FROM requests").fetchall()
    for cost, reserved, _ in rows:
        if cost is not None:
            assert D(cost) <= D(reserved)
    spent = sum((D(c) for c, _, _ in rows if c is not None), D(0))
    at_risk = sum((D(a) for _, _, a in rows), D(0))
    assert spent + at_risk <= limit
    assert spent == summary.total_spent_usd
    if summary.stopped_by != "budget":
        assert summary.done + summary.failed_total == n


async def _await(stream):
    return await stream
