"""kill -9 and Ctrl-C against a real harvest process, checked with the server's counters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest
from fault_teacher import fault_digest, openai_teacher
from harvest_script import PRICE, prompts

from apidistill.config import HarvestConfig
from apidistill.costs.budget import Budget
from apidistill.harvest import HarvestOptions, JournalStore, check_integrity, harvest
from apidistill.harvest.engine import claim_ahead_for
from apidistill.harvest.retry import RetryPolicy

SCRIPT = Path(__file__).with_name("harvest_script.py")
N, CONCURRENCY = 300, 16


def _start(srv, journal: Path, mode: str, out: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), srv.base_url, str(journal), str(N), str(CONCURRENCY),
         mode, str(out), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=_default_sigint,
    )  # fmt: skip


def _default_sigint() -> None:
    """A shell that starts pytest in the background (``cmd &``, no job control) makes it
    ignore SIGINT, and children inherit that; Python then keeps Ctrl-C ignored, as a
    ``nohup``-ed harvest should. The child here must behave like a terminal's."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for_done(journal: Path, proc: subprocess.Popen[str], at_least: int) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if journal.exists():
            try:
                store = JournalStore(journal, readonly=True)
                done = store.count("done")
                store.close()
            except Exception:  # the file is being created
                done = 0
            if done >= at_least:
                return done
        time.sleep(0.05)
    raise AssertionError("the harvest made no progress")


async def _resume(srv, journal: Path, *, store: bool = False, budget: Budget | None = None):
    teacher = openai_teacher(srv.base_url, store=store)
    # store: a lost answer is looked up until its send's timeout has passed (3 s here)
    extra: dict = (
        {"options": HarvestOptions(retry_policy=RetryPolicy(timeout_s=3.0))} if store else {}
    )
    if budget is not None:
        extra["budget"] = budget
    try:
        return await harvest(prompts(N), teacher=teacher, journal=journal, config=HarvestConfig(concurrency=CONCURRENCY),
                             progress=False, price=PRICE, **extra)  # fmt: skip
    finally:
        await teacher.aclose()


def _output_prompt_ids(journal: Path) -> Counter[str]:
    store = JournalStore(journal, readonly=True)
    try:
        return Counter(r.prompt_id for r in store.rows(state="done"))
    finally:
        store.close()


async def test_kill_9_mid_run_then_resume_pays_at_most_the_in_flight_again(fault, tmp_path):
    srv = fault(latency_ms=150)  # ~3 s in all: a signal lands mid-run on a fast machine
    journal, out = tmp_path / "j.sqlite", tmp_path / "summary.json"
    proc = _start(srv, journal, "sync", out)
    _wait_for_done(journal, proc, 80)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert check_integrity(journal) == []
    store = JournalStore(journal, readonly=True)
    in_flight = {r.prompt_id for r in store.rows(state="sent")}
    worst = store.conn.execute("SELECT reserved_usd FROM requests WHERE state='sent'").fetchall()
    store.close()
    # journaled 'sent': the requests in flight plus at most claim_ahead waiting for a slot
    assert 0 < len(in_flight) <= CONCURRENCY + claim_ahead_for(CONCURRENCY)
    at_risk = sum((Decimal(w) for (w,) in worst), Decimal(0))

    summary = await _resume(srv, journal)
    assert summary.crashed_found == len(in_flight)  # reported ...
    assert summary.resent == len(in_flight)  # ... and each re-sent exactly once
    assert summary.at_risk_found_usd == at_risk > 0  # the money that may have been billed
    assert any("may have been billed" in line for line in summary.lines())

    ids = _output_prompt_ids(journal)
    assert set(ids) == {f"p{i}" for i in range(N)} and set(ids.values()) == {1}
    stats = srv.stats()["digests"]
    billed = {r.prompt_id: stats[fault_digest(r)]["billed"] for r in prompts(N)}
    paid_twice = {p for p, n in billed.items() if n > 1}
    assert max(billed.values()) <= 2 and min(billed.values()) == 1
    assert paid_twice <= in_flight  # duplicates only among what was journaled 'sent' ...
    assert len(paid_twice) <= CONCURRENCY  # ... and never more than the slots in flight


async def test_kill_9_with_stored_completions_recovers_instead_of_paying_twice(fault, tmp_path):
    """HARVEST-NOTES, "never pay twice": with OpenAI ``store: true`` the resume looks up each
    outcome-unknown request by its metadata key and takes the stored answer: 0 re-sent of
    what reached the provider; only requests that never left (journaled 'sent' while they
    waited for a slot) are sent, once."""
    srv = fault(latency_ms=150)
    journal, out = tmp_path / "j.sqlite", tmp_path / "summary.json"
    proc = _start(srv, journal, "sync", out, "store")
    _wait_for_done(journal, proc, 80)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    received = set(srv.stats()["digests"])  # what reached the provider before the kill

    budget = Budget(Decimal("10"))
    summary = await _resume(srv, journal, store=True, budget=budget)
    by_id = {r.prompt_id: r for r in prompts(N)}
    store = JournalStore(journal, readonly=True)
    try:
        rows = list(store.rows())
    finally:
        store.close()
    crashed = {r.prompt_id for r in rows if r.unknown_sends}  # left 'sent' by the kill
    reached = {p for p in crashed if fault_digest(by_id[p]) in received}
    assert summary.crashed_found == len(crashed) > 0 and reached
    assert len(reached) <= CONCURRENCY
    assert summary.recovered == len(reached)  # every request the provider got: recovered
    assert summary.resent == len(crashed) - len(reached)  # the rest never left: sent once
    assert any("stored completions" in line for line in summary.lines())
    stats = srv.stats()
    assert stats["lookups"] >= len(crashed)
    billed = {p: stats["digests"][fault_digest(r)]["billed"] for p, r in by_id.items()}
    assert set(billed.values()) == {1}  # zero duplicates: nothing paid twice
    ids = _output_prompt_ids(journal)
    assert set(ids) == set(by_id) and set(ids.values()) == {1}
    # the recovered answers' worst cases are no longer at risk; their real cost is spent
    assert {r.prompt_id for r in rows if r.at_risk_usd > 0} == crashed - reached
    # the budget agrees with the journal: recovered worst cases left the at-risk money
    assert budget.reserved == 0
    assert budget.at_risk == sum((r.at_risk_usd for r in rows), Decimal(0)) > 0
    assert budget.spent == sum((r.cost_usd for r in rows), Decimal(0))
    assert all(r.cost_usd is not None and r.cost_usd > 0 for r in rows)


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_ctrl_c_drains_in_flight_and_resume_resends_nothing(fault, tmp_path, mode):
    srv = fault(latency_ms=150)  # ~3 s in all: a signal lands mid-run on a fast machine
    journal, out = tmp_path / "j.sqlite", tmp_path / "summary.json"
    proc = _start(srv, journal, mode, out)
    _wait_for_done(journal, proc, 60)
    proc.send_signal(signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    first = json.loads(out.read_text())
    assert first["stopped_by"] == "interrupt" and 0 < first["done"] < N

    store = JournalStore(journal, readonly=True)
    assert store.count("sent") == 0 and store.count("unknown") == 0
    assert store.count("done") == first["done"]
    store.close()
    summary = await _resume(srv, journal)
    assert summary.resent == 0 and summary.unknown_found == 0
    assert summary.cached == first["done"] and summary.done == N - first["done"]
    stats = srv.stats()["digests"]
    assert all(stats[fault_digest(r)]["billed"] == 1 for r in prompts(N))


async def test_sigterm_is_a_graceful_stop_too(fault, tmp_path):
    srv = fault(latency_ms=150)  # ~3 s in all: a signal lands mid-run on a fast machine
    journal, out = tmp_path / "j.sqlite", tmp_path / "summary.json"
    proc = _start(srv, journal, "sync", out)
    _wait_for_done(journal, proc, 40)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    store = JournalStore(journal, readonly=True)
    assert store.count("sent") == 0 and store.count("unknown") == 0
    received = sum(d["received"] for d in srv.stats()["digests"].values())
    assert store.count("done") == received  # every request that went out came back in
    store.close()
