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

Stream faults (slow SSE, duplicated and reordered chunks) are a separate test: the harvest
never asks for a stream (SSE chunks carry no sequence numbers, so a duplicated or reordered
chunk could not be detected; a whole JSON body is validated instead), so with every stream
fault at rate 1.0 each request is answered once, cleanly, and billed once.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from rel_helpers import FAULT_MODEL, digest_of, make_requests

from apidistill.config import HarvestConfig
from apidistill.costs.budget import Budget
from apidistill.costs.prices import ModelPrice
from apidistill.harvest import HarvestOptions, JournalStore, RetryPolicy, harvest
from apidistill.records import GenerationParams, Message, TeacherRequest
from apidistill.teachers.openai import OpenAITeacher
from apidistill.testing import provider_payloads as pp
from apidistill.testing.fault_server import (
    BILLED_FAULTS,
    BODY_FAULTS,
    HTTP_FAULTS,
    STREAM_FAULTS,
    request_digest,
)

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
        config=HarvestConfig(concurrency=64),
        progress=False,
        options=HarvestOptions(durable=False, retry_policy=_policy()),
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


# --------------------------------------------------------------------------- stream faults

STREAM_N = 200
TOP_K = 5


async def _streamed_text(srv: Any, body: dict[str, Any]) -> str:
    """What a client that asked for a stream would assemble from the SSE chunks."""
    out = []
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{srv.base_url}/chat/completions", json={**body, "stream": True}) as resp,
    ):
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        async for raw in resp.content:
            line = raw.decode().strip()
            if line.startswith("data: {"):
                for choice in json.loads(line[6:]).get("choices", []):
                    out.append(choice["delta"].get("content") or "")
    return "".join(out)


@pytest.mark.parametrize("transport", ["httpx2", "aiohttp"])
async def test_stream_faults_cannot_reach_the_harvest(
    fault, tmp_path: Path, transport: str
) -> None:
    """Every request drawn faulty, every fault a stream fault: the harvest is untouched."""
    srv = fault(
        latency_ms=1,
        fault_rate=1.0,
        seed=17,
        stream_delay_ms=20,
        faults=dict.fromkeys(STREAM_FAULTS, 1.0),
    )
    params = GenerationParams(max_tokens=16, logprobs=True, top_logprobs=TOP_K)
    requests = [
        TeacherRequest(
            messages=[Message(role="user", content=f"stream {transport} ticket {i}: refund?")],
            params=params,
            prompt_id=f"q{i}",
        )
        for i in range(STREAM_N)
    ]
    results, summary = await _harvest(
        srv, requests, tmp_path / "journal.sqlite", Budget(100), transport
    )
    stats = srv.stats()

    probe = OpenAITeacher(FAULT_MODEL, base_url=srv.base_url)
    bodies = {r.cache_key(probe.teacher_id, probe.model): probe.build(r)[1] for r in requests}
    await probe.aclose()
    assert not any(b.get("stream") for b in bodies.values())  # what the harvest sends

    # every request done, from this run, with exactly the server's clean answer
    assert len(results) == STREAM_N and {r.key for r in results} == set(bodies)
    assert summary.done == STREAM_N and summary.failed_total == 0
    assert summary.sends == STREAM_N and summary.resent == 0
    for r in results:
        assert r.ok and not r.from_cache, (r.reason, r.error)
        clean = pp.openai_chat_completion(bodies[r.key])["choices"][0]
        c = r.completion
        assert c.text == clean["message"]["content"], (c.text, clean["message"]["content"])
        assert c.finish_reason == clean["finish_reason"]
        entries = clean["logprobs"]["content"]
        assert [t.token for t in c.logprobs] == [e["token"] for e in entries]
        assert [t.logprob for t in c.logprobs] == [e["logprob"] for e in entries]
        for got, want in zip(c.logprobs, entries, strict=True):
            assert [t.token for t in got.top] == [a["token"] for a in want["top_logprobs"]]
    # server side: one arrival per request, delivered clean, billed once
    assert stats["received"] == stats["answered"] == stats["billed"] == STREAM_N
    for body in bodies.values():
        counter = stats["digests"][request_digest(body)]
        assert counter["outcomes"] == ["ok"], counter["outcomes"]
        assert counter["received"] == counter["answered"] == counter["billed"] == 1

    # control: the same server, same settings, does corrupt a client that asks for a stream
    srv.reset()
    garbled = 0
    for i in range(12):
        body = {
            "model": FAULT_MODEL,
            "messages": [{"role": "user", "content": f"control {i}: where is it?"}],
            "max_tokens": 8,
        }
        clean = pp.openai_chat_completion(body)["choices"][0]["message"]["content"]
        garbled += await _streamed_text(srv, body) != clean
    outcomes = Counter(o for c in srv.stats()["digests"].values() for o in c["outcomes"])
    assert set(outcomes) <= set(STREAM_FAULTS) and sum(outcomes.values()) == 12, outcomes
    assert len(outcomes) >= 2 and garbled > 0, (outcomes, garbled)
