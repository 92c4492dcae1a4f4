"""HarvestEngine behaviour with an in-process teacher: caching, retries, stops, recovery."""

from __future__ import annotations

import asyncio
import sqlite3
from decimal import Decimal

import pytest
from harvest_fakes import FakeTeacher, fail_times, requests
from pydantic import ValidationError

from apidistill.config import HarvestConfig
from apidistill.costs.budget import Budget
from apidistill.costs.prices import ModelPrice, worst_case_cost
from apidistill.errors import (
    BudgetExceeded,
    ConfigError,
    DataError,
    RateLimited,
    TeacherRejected,
    TeacherTimeout,
)
from apidistill.harvest import HarvestOptions, JournalStore, harvest, harvest_sync
from apidistill.harvest.engine import claim_ahead_for, upper_bound_input_tokens
from apidistill.harvest.retry import RetryPolicy

FAST = RetryPolicy(max_retries=4, timeout_s=5, initial_backoff_s=0.001, max_backoff_s=0.005)
PRICE = ModelPrice(input_per_mtok=Decimal("2"), output_per_mtok=Decimal("8"))


def run(reqs, teacher, journal, *, options=None, **kw):
    kw.setdefault("progress", False)
    options = options or HarvestOptions(durable=False, retry_policy=FAST)
    return harvest(reqs, teacher=teacher, journal=journal, options=options, **kw)


async def collect(stream):
    return [r async for r in stream]


async def test_every_request_is_answered_once_and_rerun_sends_nothing(tmp_path):
    j = tmp_path / "j.sqlite"
    t = FakeTeacher(latency_s=0.002)
    results = await collect(
        run(requests(50), t, j, config=HarvestConfig(concurrency=8), price=PRICE)
    )
    assert len(results) == 50 and all(r.ok and not r.from_cache for r in results)
    assert sorted(r.request.prompt_id for r in results) == sorted(f"prompt-{i}" for i in range(50))
    assert set(t.calls.values()) == {1} and t.max_in_flight <= 8
    # the cost is the engine's, from the price, and the key is recorded on the completion
    r0 = results[0]
    u = r0.completion.usage
    assert r0.completion.cost_usd == (u.input_tokens * 2 + u.output_tokens * 8) / Decimal(10**6)
    assert r0.completion.request_hash == r0.key

    t2 = FakeTeacher()
    summary = await run(requests(50), t2, j)
    assert sum(t2.calls.values()) == 0
    assert (summary.cached, summary.done, summary.sends) == (50, 0, 0)


async def test_identical_requests_in_one_run_are_sent_once(tmp_path):
    reqs = requests(5) * 3
    t = FakeTeacher(latency_s=0.01)
    results = await collect(
        run(reqs, t, tmp_path / "j.sqlite", config=HarvestConfig(concurrency=4))
    )
    assert len(results) == 15
    assert sum(t.calls.values()) == 5
    assert sum(r.from_cache for r in results) == 10
    assert {r.completion.text for r in results if r.request.prompt_id == "prompt-3"} == {
        "answer to prompt 3"
    }


async def test_transient_failures_are_retried_and_rejections_are_not(tmp_path):
    def script(req, call):
        if req.prompt_id == "prompt-0":
            return TeacherRejected("bad request", status=400)
        if req.prompt_id == "prompt-1" and call <= 2:
            return RateLimited("slow down", status=429, retry_after=0.01)
        return None

    t = FakeTeacher(script=script)
    stream = run(requests(3), t, tmp_path / "j.sqlite")
    results = {r.request.prompt_id: r for r in await collect(stream)}
    assert results["prompt-0"].reason == "rejected" and "bad request" in results["prompt-0"].error
    assert t.calls["prompt-0"] == 1
    assert results["prompt-1"].ok and t.calls["prompt-1"] == 3 and results["prompt-1"].attempts == 3
    assert stream.summary.failed == {"rejected": 1}
    assert stream.summary.rate_limit_pauses == 0  # two lone 429s delay only their retries


async def test_exhausted_retries_fail_with_the_reason_and_a_rerun_tries_again(tmp_path):
    j = tmp_path / "j.sqlite"
    always = FakeTeacher(script=fail_times(100, lambda: RateLimited("429", status=429)))
    (r,) = await collect(run(requests(1), always, j))
    assert r.reason == "rate_limited" and always.calls["prompt-0"] == FAST.max_retries + 1
    healthy = FakeTeacher()
    (r2,) = await collect(run(requests(1), healthy, j))
    assert r2.ok and healthy.calls["prompt-0"] == 1


async def test_timeouts_are_maybe_billed_and_money_stays_at_risk(tmp_path):
    j = tmp_path / "j.sqlite"
    t = FakeTeacher(latency_s=0.3)
    budget = Budget(Decimal("1"))
    policy = RetryPolicy(max_retries=1, timeout_s=0.05, initial_backoff_s=0.001)
    stream = run(
        requests(2),
        t,
        j,
        budget=budget,
        price=PRICE,
        options=HarvestOptions(durable=False, retry_policy=policy),
    )
    results = await collect(stream)
    assert {r.reason for r in results} == {"timeout"}
    s = stream.summary
    assert s.unknown_this_run == 4 and s.failed == {"timeout": 2}
    assert budget.at_risk == s.at_risk_usd > 0 and budget.reserved == 0
    rows = list(JournalStore(j, readonly=True).rows())
    assert {(r.state, r.sends, r.unknown_sends) for r in rows} == {("failed", 2, 2)}


async def test_budget_stop_is_graceful_and_resume_pays_nothing_twice(tmp_path):
    j = tmp_path / "j.sqlite"
    reqs = requests(80)
    t = FakeTeacher(latency_s=0.005)
    # worst case per request ~ $0.0002 (bytes bound in + 16 out), actual ~ $0.00005: room for
    # ~12 worst cases at once but ~45 answers; requests wait for in-flight ones to settle
    small = Budget(Decimal("0.0025"))
    worst = max(worst_case_cost(PRICE, upper_bound_input_tokens(r), r.params.max_tokens)
                for r in reqs)  # fmt: skip
    stream = run(reqs, t, j, budget=small, price=PRICE, config=HarvestConfig(concurrency=4))
    with pytest.raises(BudgetExceeded, match="budget"):
        await collect(stream)
    first = stream.summary
    assert first.stopped_by == "budget" and 0 < first.done < 80
    assert small.spent + small.at_risk <= small.limit and small.reserved == 0
    # stopped only once the budget was really used: the next worst case no longer fit
    assert small.limit - small.spent - small.at_risk < worst
    assert first.done > 12  # more than the worst cases that fit at once
    store = JournalStore(j, readonly=True)
    assert store.count("sent") == 0 and store.count("unknown") == 0  # drained, journaled

    big = Budget(Decimal("1"))
    summary = await run(reqs, t, j, budget=big, price=PRICE, config=HarvestConfig(concurrency=4))
    assert summary.done + summary.cached == 80 and summary.cached == first.done
    assert max(t.calls.values()) == 1  # nobody was paid twice
    assert summary.resent == 0
    assert big.spent == summary.total_spent_usd


async def test_stop_request_drains_in_flight_without_new_sends(tmp_path):
    j = tmp_path / "j.sqlite"
    t = FakeTeacher(latency_s=0.05)
    stream = run(requests(200), t, j, config=HarvestConfig(concurrency=10))
    got = []
    with pytest.raises(KeyboardInterrupt):
        async for r in stream:
            got.append(r)
            if len(got) == 15:
                stream.stop()
    sent_total = sum(t.calls.values())
    assert sent_total == sum(t.answered.values())  # every send got its answer journaled
    assert len(got) == sent_total < 200
    store = JournalStore(j, readonly=True)
    assert store.count("done") == sent_total and store.count("sent") == 0
    t2 = FakeTeacher()
    summary = await run(requests(200), t2, j, config=HarvestConfig(concurrency=10))
    assert summary.resent == 0 and summary.unknown_found == 0
    assert summary.cached == sent_total and sum(t2.calls.values()) == 200 - sent_total


async def test_sent_is_journaled_ahead_of_the_slot_and_unclaimed_on_stop(tmp_path):
    """'sent' is committed while a request waits for a send slot (bounded by claim_ahead);
    a stop un-claims what never left, so nothing is left 'sent' and nothing counts as sent."""
    j = tmp_path / "j.sqlite"
    t = FakeTeacher(latency_s=1.0)
    stream = run(requests(40), t, j, config=HarvestConfig(concurrency=4))
    seen: dict[str, int] = {}

    async def watch_then_stop():
        while t.in_flight < 4:
            await asyncio.sleep(0.01)
        # while the first 4 are in flight, the waiting requests' claims commit: sample until
        # the bound is reached (a loaded machine may take a while), never above it
        for _ in range(60):
            store = JournalStore(j, readonly=True)
            waiting = store.count("sent") - t.in_flight
            store.close()
            seen["waiting"] = max(seen.get("waiting", 0), waiting)
            if waiting >= 2 or sum(t.calls.values()) > 4:
                break
            await asyncio.sleep(0.01)
        assert sum(t.calls.values()) == 4  # still the first sends: the sample is valid
        stream.stop()

    watcher = asyncio.ensure_future(watch_then_stop())
    with pytest.raises(KeyboardInterrupt):  # HarvestInterrupted: the graceful-stop signal
        await collect(stream)
    await watcher
    assert seen["waiting"] == claim_ahead_for(4) == 2  # exactly the bound: claimed, not sent
    store = JournalStore(j, readonly=True)
    try:
        assert store.count("sent") == 0 and store.count("done") == sum(t.calls.values()) == 4
        unsent = [r for r in store.rows() if r.state != "done"]
        assert len(unsent) == 2 and {(r.reason, r.sends, r.attempts) for r in unsent} == {
            ("stopped", 0, 0)
        }
    finally:
        store.close()
    t2 = FakeTeacher()
    summary = await run(requests(40), t2, j, config=HarvestConfig(concurrency=4))
    assert summary.resent == 0 and summary.unknown_found == 0 and sum(t2.calls.values()) == 36


async def test_consumer_breaking_out_stops_gracefully(tmp_path):
    j = tmp_path / "j.sqlite"
    t = FakeTeacher(latency_s=0.02)
    stream = run(requests(100), t, j, config=HarvestConfig(concurrency=5))
    async with stream:
        async for _ in stream:
            break
    assert stream.summary is not None and stream.summary.stopped_by == "closed"
    store = JournalStore(j, readonly=True)
    assert store.count("sent") == 0
    assert store.count("done") == sum(t.calls.values()) < 100


async def test_max_requests_caps_new_sends_only(tmp_path):
    j = tmp_path / "j.sqlite"
    t = FakeTeacher()
    s1 = await run(requests(10), t, j, config=HarvestConfig(max_requests=4))
    assert (s1.done, s1.stopped_by) == (4, "max_requests")
    s2 = await run(requests(10), t, j, config=HarvestConfig(max_requests=4))
    assert (s2.cached, s2.done) == (4, 4)
    assert max(t.calls.values()) == 1


async def test_crash_leftovers_are_reported_and_resent_once(tmp_path):
    j = tmp_path / "j.sqlite"
    await run(requests(6), FakeTeacher(), j, price=PRICE)
    con = sqlite3.connect(j)  # what a kill -9 mid-send leaves behind
    con.execute(
        "UPDATE requests SET state='sent', reserved_usd='0.001' WHERE prompt_id IN "
        "('prompt-1','prompt-4')"
    )
    con.commit()
    con.close()
    t = FakeTeacher()
    budget = Budget(Decimal("1"))
    summary = await run(requests(6), t, j, budget=budget, price=PRICE)
    assert (summary.crashed_found, summary.unknown_found) == (2, 2)
    assert summary.at_risk_found_usd == Decimal("0.002")
    assert summary.resent == 2 and dict(t.calls) == {"prompt-1": 1, "prompt-4": 1}
    assert budget.at_risk == Decimal("0.002")  # still charged after the resume
    assert any("outcome was unknown" in line for line in summary.lines())


async def test_resend_unknown_false_reports_instead_of_sending(tmp_path):
    j = tmp_path / "j.sqlite"
    t = FakeTeacher(script=fail_times(1, lambda: TeacherTimeout("lost", maybe_billed=True)))
    policy = RetryPolicy(max_retries=0, timeout_s=5)
    await collect(
        run(requests(1), t, j, options=HarvestOptions(durable=False, retry_policy=policy))
    )  # fails, outcome unknown
    t.calls.clear()
    (r,) = await collect(
        run(
            requests(1),
            t,
            j,
            options=HarvestOptions(durable=False, retry_policy=FAST, resend_unknown=False),
        )
    )
    assert r.reason == "outcome_unknown" and "may have been billed" in r.error
    assert sum(t.calls.values()) == 0


async def test_unpriced_model_records_unknown_cost_not_zero(tmp_path):
    j = tmp_path / "j.sqlite"
    budget = Budget(Decimal("0"))  # a USD cap cannot bind without prices
    summary = await run(requests(3), FakeTeacher(), j, budget=budget)
    assert summary.done == 3 and summary.unpriced and budget.requests_settled == 3
    rows = list(JournalStore(j, readonly=True).rows())
    assert {r.cost_usd for r in rows} == {None}


async def test_bad_input_item_is_a_data_error_after_the_good_ones(tmp_path):
    j = tmp_path / "j.sqlite"
    items = [*requests(3), {"messages": "oops"}]
    t = FakeTeacher()
    with pytest.raises(DataError, match="request #3 is a dict"):
        await collect(run(items, t, j))
    assert sum(t.calls.values()) == 3


async def test_input_is_read_lazily_with_a_bounded_window(tmp_path):
    produced = 0

    def gen():
        nonlocal produced
        for r in requests(5000):
            produced += 1
            yield r

    t = FakeTeacher(latency_s=0.01)
    stream = run(gen(), t, tmp_path / "j.sqlite", config=HarvestConfig(concurrency=4))
    async for _ in stream:
        break  # first result: only a window of the input may have been read
    assert produced < 1000


async def test_async_iterables_are_accepted(tmp_path):
    async def agen():
        for r in requests(7):
            await asyncio.sleep(0)
            yield r

    results = await collect(run(agen(), FakeTeacher(), tmp_path / "j.sqlite"))
    assert len(results) == 7


async def test_rate_limit_headers_slow_the_engine_down(tmp_path):
    from apidistill.teachers.base import RateLimitSnapshot

    t = FakeTeacher(snapshot=RateLimitSnapshot(remaining_requests=0, reset_requests_s=0.3))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await run(requests(3), t, tmp_path / "j.sqlite", config=HarvestConfig(concurrency=1))
    assert loop.time() - t0 >= 0.55  # two waits for the provider's reset


def test_invalid_settings_are_refused_by_the_config_model(tmp_path):
    """harvest() validates nothing by hand: HarvestConfig is the run file's model, so a bad
    value fails where it is written, naming the field."""
    for kw, field in [
        ({"concurrency": 0}, "concurrency"),
        ({"rpm": -5}, "rpm"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_requests": -1}, "max_requests"),
    ]:
        with pytest.raises(ValidationError, match=field):
            HarvestConfig(**kw)
    with pytest.raises(ConfigError, match="retry_failed"):
        harvest(requests(1), teacher=FakeTeacher(), journal=tmp_path / "j.sqlite",
                config=HarvestConfig(retry_failed=["nonsense"]))  # fmt: skip
    with pytest.raises(ConfigError, match="rate_window_s"):
        HarvestOptions(rate_window_s=0)


def test_removed_keyword_arguments_name_their_new_place(tmp_path):
    """A script written for the old signature fails at once, and the message says where each
    argument went (users' scripts)."""
    t = FakeTeacher()
    with pytest.raises(TypeError) as err:
        harvest(requests(1), teacher=t, journal=tmp_path / "j.sqlite", concurrency=4,
                retry_policy=FAST, batch=False)  # fmt: skip
    msg = str(err.value)
    assert "concurrency= moved to config=HarvestConfig(concurrency=...)" in msg
    assert "retry_policy= moved to options=HarvestOptions(retry_policy=...)" in msg
    assert "batch= moved to config=HarvestConfig(use_batch_api=True)" in msg
    with pytest.raises(TypeError, match="colour= is not an argument of harvest"):
        harvest(requests(1), teacher=t, journal=tmp_path / "j.sqlite", colour="red")
    with pytest.raises(TypeError, match="concurrency= moved"):
        harvest_sync(requests(1), teacher=t, journal=tmp_path / "j.sqlite", concurrency=2)
    assert not (tmp_path / "j.sqlite").exists()  # refused before anything was opened


def test_config_errors_for_teacher_budget_and_config_types(tmp_path):
    j = tmp_path / "j.sqlite"
    with pytest.raises(ConfigError, match="not 'provider:model'"):
        harvest(requests(1), teacher="gpt-4o", journal=j)
    with pytest.raises(ConfigError, match="HarvestConfig"):
        harvest(requests(1), teacher=FakeTeacher(), journal=j, config={"concurrency": 2})
    with pytest.raises(ConfigError, match="budget"):
        harvest(requests(1), teacher=FakeTeacher(), journal=j, budget=[1])
    with pytest.raises(ConfigError, match="batch client"):
        harvest(requests(1), teacher=FakeTeacher(), journal=j,
                config=HarvestConfig(use_batch_api=True))  # fmt: skip


async def test_a_plain_amount_is_a_budget(tmp_path):
    t = FakeTeacher()
    ample = await run(requests(6), t, tmp_path / "a.sqlite", budget="1.5", price=PRICE)
    assert ample.done == 6 and ample.stopped_by is None
    tiny = await run(requests(6), t, tmp_path / "b.sqlite", budget=0.000001, price=PRICE)
    assert tiny.done == 0 and tiny.stopped_by == "budget"


def test_harvest_sync_runs_on_its_own_loop_and_closes_the_teacher(tmp_path):
    t = FakeTeacher()
    summary = harvest_sync(requests(5), teacher=t, journal=tmp_path / "j.sqlite", progress=False)
    assert summary.done == 5 and t.closed


async def test_harvest_sync_works_inside_a_running_loop(tmp_path):
    t = FakeTeacher()
    summary = harvest_sync(requests(3), teacher=t, journal=tmp_path / "j.sqlite", progress=False)
    assert summary.done == 3


def test_second_harvest_on_the_same_journal_is_refused(tmp_path):
    j = tmp_path / "j.sqlite"
    store = JournalStore(j)  # another writer holds it
    try:
        with pytest.raises(ConfigError, match="another harvest"):
            harvest_sync(requests(1), teacher=FakeTeacher(), journal=j, progress=False)
    finally:
        store.close()


async def test_a_failing_input_iterator_is_raised_after_a_graceful_drain(tmp_path):
    def gen():
        yield from requests(3)
        raise ValueError("the prompt file went away")

    j = tmp_path / "j.sqlite"
    t = FakeTeacher(latency_s=0.01)
    with pytest.raises(ValueError, match="went away"):
        await collect(run(gen(), t, j))
    store = JournalStore(j, readonly=True)
    assert store.count("done") == 3 and store.count("sent") == 0


async def test_cancelling_the_run_abandons_in_flight_and_the_next_run_reports_them(tmp_path):
    j = tmp_path / "j.sqlite"
    t = FakeTeacher(latency_s=1.0)
    task = asyncio.ensure_future(
        collect(run(requests(20), t, j, config=HarvestConfig(concurrency=4)))
    )
    while t.in_flight < 4:
        await asyncio.sleep(0.01)
    task.cancel()  # a hard stop, as a second Ctrl-C
    with pytest.raises(asyncio.CancelledError):
        await task
    t2 = FakeTeacher()
    summary = await run(requests(20), t2, j)
    # the 4 in flight, plus up to claim_ahead journaled 'sent' while waiting for a slot
    assert 4 <= summary.crashed_found <= 4 + claim_ahead_for(4)
    assert summary.resent == summary.crashed_found
    assert summary.done == 20 and sum(t2.calls.values()) == 20
