"""harvest(batch=True) against the loopback Batch API server: discount, resume, expiry."""

from __future__ import annotations

from decimal import Decimal

import pytest
from harvest_fakes import requests

from apidistill.config import HarvestConfig
from apidistill.costs.budget import Budget
from apidistill.costs.prices import ModelPrice, cost_of
from apidistill.errors import BudgetExceeded, ConfigError
from apidistill.harvest import HarvestOptions, JournalStore, harvest
from apidistill.teachers.openai import OpenAITeacher
from apidistill.teachers.openai_batch import OpenAIBatch
from apidistill.testing.batch_server import BatchServer

MODEL = "gpt-4o-mini"
KEY = "sk-harvestbatch-SECRET123456"
PRICE = ModelPrice(input_per_mtok=Decimal("0.15"), output_per_mtok=Decimal("0.60"))


class Crash(BaseException):
    """Stands in for kill -9: nothing after it runs in the harvest."""


@pytest.fixture
async def server():
    async with BatchServer(polls_to_finish=2) as s:
        yield s


def clients(server, **kw):
    teacher = OpenAITeacher(MODEL, provider="openai", base_url=server.openai_url, api_key=KEY)
    return teacher, OpenAIBatch(MODEL, api_key=KEY, base_url=server.openai_url, **kw)


def run(reqs, teacher, client, journal, **kw):
    return harvest(reqs, teacher=teacher, journal=journal, config=HarvestConfig(use_batch_api=True),
                   options=HarvestOptions(batch_client=client, poll_interval_s=0.01, durable=False),
                   progress=False, **kw)  # fmt: skip


def batches_created(server) -> int:
    return sum(n for k, n in server.calls.items() if k.startswith("POST /v1/batches") and
               "cancel" not in k)  # fmt: skip


async def test_batch_harvest_costs_the_discounted_price(server, tmp_path):
    teacher, client = clients(server)
    j = tmp_path / "j.sqlite"
    results = [r async for r in run(requests(25), teacher, client, j, price=PRICE)]
    assert len(results) == 25 and all(r.ok for r in results)
    for r in results:
        assert r.completion.cost_usd == cost_of(PRICE, r.completion.usage, batch=True)
    assert max(server.processed.values()) == 1 and batches_created(server) == 1
    rows = list(JournalStore(j, readonly=True).rows())
    assert {(r.state, r.batch, r.sends) for r in rows} == {("done", True, 1)}
    # a re-run is answered from the journal: nothing uploaded again
    again = await run(requests(25), teacher, client, j)
    assert again.cached == 25 and batches_created(server) == 1


async def test_crash_while_polling_resumes_the_journaled_batch(server, tmp_path):
    teacher, client = clients(server)
    j = tmp_path / "j.sqlite"

    async def crash_on_poll(batch_id):
        raise Crash

    client.poll = crash_on_poll  # dies after the batch id was journaled
    with pytest.raises(Crash):
        await run(requests(10), teacher, client, j)
    assert batches_created(server) == 1
    _, fresh = clients(server)
    summary = await run(requests(10), teacher, fresh, j)
    assert summary.done == 10 and summary.sends == 0  # collected, not re-sent
    assert batches_created(server) == 1 and max(server.processed.values()) == 1


async def test_crash_between_upload_and_journaling_finds_the_batch(server, tmp_path):
    teacher, client = clients(server)
    j = tmp_path / "j.sqlite"
    real_submit = client.submit

    async def submit_then_die(items, chunk_key):
        await real_submit(items, chunk_key)
        raise Crash  # the batch exists at the provider, its id is not journaled

    client.submit = submit_then_die
    with pytest.raises(Crash):
        await run(requests(8), teacher, client, j)
    _, fresh = clients(server)
    summary = await run(requests(8), teacher, fresh, j)
    assert summary.done == 8
    assert batches_created(server) == 1  # found by its chunk key: 0 re-sent
    assert max(server.processed.values()) == 1


async def test_expired_items_are_resubmitted_and_paid_once(server, tmp_path):
    server.expire_after = 4  # the first batch runs 4 items, then expires
    teacher, client = clients(server)
    j = tmp_path / "j.sqlite"
    results = [r async for r in run(requests(10), teacher, client, j)]
    assert len(results) == 10 and all(r.ok for r in results)
    assert batches_created(server) >= 2
    assert sorted(server.processed.values()) == [1] * 10


async def test_budget_cuts_the_chunk_before_upload(server, tmp_path):
    teacher, client = clients(server)
    j = tmp_path / "j.sqlite"
    # worst case per request ~ (bytes bound ~33 in + 16 out) tokens at the batch price
    budget = Budget(Decimal("0.0000300"))
    stream = run(requests(20), teacher, client, j, price=PRICE, budget=budget)
    with pytest.raises(BudgetExceeded):
        async for _ in stream:
            pass
    done = stream.summary.done
    assert 0 < done < 20 and sum(server.processed.values()) == done
    assert budget.spent + budget.at_risk <= budget.limit


async def test_batch_needs_a_client(tmp_path):
    teacher = OpenAITeacher(MODEL, provider="openai", api_key=KEY)
    with pytest.raises(ConfigError, match="batch client"):
        harvest(
            requests(1),
            teacher=teacher,
            journal=tmp_path / "j.sqlite",
            config=HarvestConfig(use_batch_api=True),
        )


async def test_a_passing_poll_failure_is_retried_next_sweep(server, tmp_path):
    from apidistill.errors import TeacherUnavailable

    teacher, client = clients(server)
    real_poll, failures = client.poll, [TeacherUnavailable("503", status=503)] * 2

    async def flaky_poll(batch_id):
        if failures:
            raise failures.pop()
        return await real_poll(batch_id)

    client.poll = flaky_poll
    summary = await run(requests(5), teacher, client, tmp_path / "j.sqlite")
    assert summary.done == 5 and not failures and batches_created(server) == 1
