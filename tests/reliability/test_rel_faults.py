"""Harvest through the fault server at 30% faults: nothing lost, nothing paid twice unseen.

The server counts, per request digest, every arrival, every clean 200 it delivered
("answered") and every response a real provider would have billed ("billed": clean answers
plus timeouts, half-written bodies, invalid JSON and wrong content types). The journal counts
what the client knows. The guarantees, checked from both sides:

- every prompt ends exactly once, done or failed with a reason; zero lost;
- a clean 200 is never delivered twice for one request unless the client saw a maybe-billed
  fault on that request first (and then the re-send is in the summary and the ledger);
- every billed response is covered by a send the journal counts, and every billed response
  that never became an answer is journaled as an outcome-unknown send kept at risk;
- no request gets more attempts than the retry policy allows, and a 429's Retry-After is
  waited out before that request arrives again;
- a re-run of the same journal re-sends nothing that was answered.
"""

from __future__ import annotations

import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from rel_helpers import FAULT_MODEL, digest_of, make_requests

from apidistill.costs.budget import Budget
from apidistill.costs.prices import ModelPrice
from apidistill.harvest import JournalStore, RetryPolicy, harvest
from apidistill.teachers.openai import OpenAITeacher
from apidistill.testing.fault_server import BILLED_FAULTS, BODY_FAULTS, HTTP_FAULTS

MAX_RETRIES = 3
RETRY_AFTER_MS = 30
REASONS = {"rate_limited", "timeout", "unavailable", "teacher_error"}


def _policy() -> RetryPolicy:
    return RetryPolicy(
        max_retries=MAX_RETRIES, timeout_s=3.0, initial_backoff_s=0.01, max_backoff_s=0.05
    )


async def _harvest(
    srv: Any, requests: list, journal: Path, budget: Budget, transport: str = "auto"
) -> tuple[list, Any]:
    teacher = OpenAITeacher(FAULT_MODEL, base_url=srv.base_url, timeout_s=3.0, transport=transport)
    stream = harvest(
        requests,
        teacher=teacher,
        journal=journal,
        budget=budget,
        price=ModelPrice(Decimal(1), Decimal(2)),
        concurrency=64,
        progress=False,
        durable=False,
        retry_policy=_policy(),
    )
    results = []
    try:
        async for r in stream:
            results.append(r)
    finally:
        await teacher.aclose()
    return results, stream.summary


async def _check_fault_run(
    fault: Any, tmp_path: Path, n: int, seed: int, transport: str = "auto"
) -> dict[str, Any]:
    srv = fault(
        latency_ms=2,
        jitter_ms=3,
        error_latency_ms=1,
        fault_rate=0.3,
        seed=seed,
        retry_after_ms=RETRY_AFTER_MS,
        hang_s=6.0,  # the 'timeout' fault: past the client's 3 s
        faults={k: 1.0 for k in HTTP_FAULTS + BODY_FAULTS},
    )
    requests = make_requests(n, tag=f"s{seed}-")
    journal = tmp_path / "journal.sqlite"
    budget = Budget(100)
    t0 = time.perf_counter()
    results, summary = await _harvest(srv, requests, journal, budget, transport)
    wall = time.perf_counter() - t0
    stats = srv.stats()
    probe = OpenAITeacher(FAULT_MODEL, base_url=srv.base_url)
    keys = [r.cache_key(probe.teacher_id, probe.model) for r in requests]
    digests = {k: digest_of(probe, r) for k, r in zip(keys, requests, strict=True)}
    await probe.aclose()

    # -- every prompt ends exactly once, done or failed with a reason
    assert len(results) == n
    assert sorted(r.key for r in results) == sorted(keys)
    ok = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    for r in failed:
        assert r.reason in REASONS and r.error, (r.reason, r.error)
    store = JournalStore(journal, readonly=True)
    try:
        rows = {row.key: row for row in store.rows()}
        assert store.integrity_errors() == []
    finally:
        store.close()
    assert set(rows) == set(keys)
    assert Counter(r.state for r in rows.values()) == {"done": len(ok), "failed": len(failed)}
    assert all(rows[r.key].reason for r in failed)
    assert summary.done == len(ok) and summary.failed_total == len(failed)

    # -- the fault mix really happened
    outcomes = Counter(o for c in stats["digests"].values() for o in c["outcomes"])
    for kind in HTTP_FAULTS + BODY_FAULTS:
        assert outcomes[kind] > 0, f"fault {kind} never drawn: {outcomes}"
    share = 1 - outcomes["ok"] / sum(outcomes.values())
    assert 0.2 < share < 0.4, share

    # -- zero double-paid, every possibly billed send in the ledger
    double_answers = 0
    billed_resends = 0
    for key, d in digests.items():
        c = stats["digests"].get(d)
        row = rows[key]
        if c is None:  # never reached the server (e.g. failed before sending)
            assert row.state == "failed" and row.sends == 0, row
            continue
        assert c["received"] <= MAX_RETRIES + 1, (key, c["outcomes"])
        assert c["answered"] <= 1 + row.unknown_sends, (key, c["outcomes"], row)
        double_answers += max(0, c["answered"] - 1)
        assert c["billed"] <= row.sends, (key, c["outcomes"], row.sends)
        lost_billed = sum(o in BILLED_FAULTS for o in c["outcomes"])
        assert lost_billed <= row.unknown_sends, (key, c["outcomes"], row.unknown_sends)
        billed_resends += max(0, c["billed"] - 1)
        if row.state == "done":
            assert c["answered"] >= 1
        if row.unknown_sends:
            assert row.at_risk_usd > 0
        # Retry-After: the next arrival of this request waits out the 429's ask
        times = c["times"]
        for i, outcome in enumerate(c["outcomes"][:-1]):
            if outcome == "429":
                assert times[i + 1] - times[i] >= 0.9 * RETRY_AFTER_MS / 1000, (key, times)
    assert billed_resends <= summary.resent
    assert summary.unknown_this_run == sum(r.unknown_sends for r in rows.values())
    assert summary.sends >= stats["received"]
    assert summary.total_at_risk_usd == sum((r.at_risk_usd for r in rows.values()), Decimal(0))
    assert summary.total_at_risk_usd > 0
    assert budget.committed <= budget.limit

    # -- a re-run on the same journal (faults off) re-sends nothing answered
    srv.configure(fault_rate=0.0)
    srv.reset()
    again, summary2 = await _harvest(srv, requests, journal, Budget(100), transport)
    stats2 = srv.stats()
    retryable = [r for r in failed]  # every failure reason above is a retryable one
    assert summary2.cached == len(ok)
    assert summary2.done == len(retryable)
    assert stats2["received"] == len(retryable)
    for r in ok:
        assert digests[r.key] not in stats2["digests"]
    assert sorted(r.key for r in again) == sorted(keys) and all(r.ok for r in again)
    return {
        "n": n,
        "wall_s": round(wall, 1),
        "sends": summary.sends,
        "failed": len(failed),
        "resent": summary.resent,
        "double_answers": double_answers,
    }


@pytest.mark.parametrize("transport", ["httpx2", "aiohttp"])
async def test_thousand_requests_at_30_percent_faults(
    fault, tmp_path: Path, transport: str
) -> None:
    """On both SDK transports (``teacher.transport``): the fault mapping differs per
    transport underneath, the guarantees must not."""
    info = await _check_fault_run(fault, tmp_path, 1000, seed=11, transport=transport)
    print(info)


@pytest.mark.slow
async def test_five_thousand_requests_at_30_percent_faults(fault, tmp_path: Path) -> None:
    info = await _check_fault_run(fault, tmp_path, 5000, seed=23)
    print(info)
