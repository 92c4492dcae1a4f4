"""OpenAI stored completions (``teacher.store``): a lost answer is recovered, not re-paid.

HARVEST-NOTES, "never pay twice": with ``store: true`` every request carries its cache key
in ``metadata``; before re-sending a request whose earlier send may have been billed, the
harvest lists stored completions by that key (``GET /v1/chat/completions?metadata[...]``)
and uses the provider's copy. The kill -9 case is in ``test_harvest_crash.py``.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

from fault_teacher import fault_digest, openai_teacher
from harvest_fakes import requests

from apidistill.config import HarvestConfig
from apidistill.costs.budget import Budget
from apidistill.costs.prices import ModelPrice
from apidistill.harvest import HarvestOptions, JournalStore, harvest
from apidistill.teachers.openai import STORE_METADATA_KEY

# half_body: the provider generated (and billed, and stored) the answer, the client got half
BILLED_FAULT = {"half_body": 1.0}
PRICE = ModelPrice(input_per_mtok=Decimal("2"), output_per_mtok=Decimal("8"))


async def test_store_flag_sends_the_cache_key_as_metadata_and_nothing_else_changes(fault):
    srv = fault()
    plain, stored = openai_teacher(srv.base_url), openai_teacher(srv.base_url, store=True)
    try:
        (req,) = requests(1)
        _, body = plain.build(req)
        assert "store" not in body and "metadata" not in body
        _, body = stored.build(req)
        key = req.cache_key(stored.teacher_id, stored.model)
        assert body["store"] is True and body["metadata"] == {STORE_METADATA_KEY: key}
        assert await stored.recover(req) is None  # never sent: nothing stored
        answer = await stored.complete(req)
        again = await stored.recover(req)
        assert again is not None and again.completion.text == answer.completion.text
        assert again.completion.usage == answer.completion.usage
        assert await plain.recover(req) is None  # store off: never looks
        assert srv.stats()["lookups"] == 2
    finally:
        await plain.aclose()
        await stored.aclose()


async def test_a_billed_fault_after_sending_is_recovered_not_paid_twice(
    fault, tmp_path, quick_retry
):
    srv = fault(fault_rate=0.3, faults=BILLED_FAULT)
    reqs = requests(120)
    teacher = openai_teacher(srv.base_url, store=True)
    budget = Budget(Decimal("10"))
    try:
        stream = harvest(reqs, teacher=teacher, journal=tmp_path / "j.sqlite", config=HarvestConfig(concurrency=16),
                         progress=False, options=HarvestOptions(retry_policy=quick_retry), budget=budget,
                         price=PRICE)  # fmt: skip
        results = [r async for r in stream]
    finally:
        await teacher.aclose()
    s = stream.summary
    assert len(results) == 120 and all(r.ok for r in results)
    # every lost answer was found: nothing stays at risk, the spend is the answers' cost
    assert budget.reserved == 0 and budget.at_risk == 0
    assert budget.spent == sum((r.completion.cost_usd for r in results), Decimal(0)) > 0
    stats = srv.stats()
    faulted = {d for d, c in stats["digests"].items() if "half_body" in c["outcomes"]}
    assert faulted  # ~30% of the requests lost their answer after the provider billed it
    assert s.recovered == len(faulted) and s.resent == 0 and s.unknown_this_run == len(faulted)
    assert {c["billed"] for c in stats["digests"].values()} == {1}  # nobody paid twice
    assert {c["received"] for c in stats["digests"].values()} == {1}
    by_digest = {fault_digest(r.request): r for r in results}
    assert all(by_digest[d].completion.text for d in faulted)  # the stored answer, whole
    store = JournalStore(tmp_path / "j.sqlite", readonly=True)
    try:
        events = Counter(e for _, _, e, _ in store.events())
        rows = list(store.rows())
    finally:
        store.close()
    assert events["from_store"] == len(faulted)
    assert all(r.state == "done" and r.sends == 1 for r in rows)


async def test_without_store_the_same_faults_are_re_sent_and_counted(fault, tmp_path, quick_retry):
    """The control: the same billed faults without ``store`` cost a second send each."""
    srv = fault(fault_rate=0.3, faults=BILLED_FAULT)
    teacher = openai_teacher(srv.base_url)
    try:
        stream = harvest(requests(120), teacher=teacher, journal=tmp_path / "j.sqlite",
                         config=HarvestConfig(concurrency=16), progress=False,
                         options=HarvestOptions(retry_policy=quick_retry))  # fmt: skip
        results = [r async for r in stream]
    finally:
        await teacher.aclose()
    s = stream.summary
    stats = srv.stats()
    twice = [c for c in stats["digests"].values() if c["billed"] > 1]
    assert len(results) == 120 and all(r.ok for r in results)
    assert twice and s.recovered == 0 and s.resent >= len(twice) and stats["lookups"] == 0
