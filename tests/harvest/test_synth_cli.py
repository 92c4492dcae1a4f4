"""``apidistill synth run.yaml`` (issue 18, item 5): synthetic prompts go through the harvest
engine — policy before the first request, the run's budget, journal, retries — and a
re-run never pays twice for a generated prompt.

The CLI runs as a user runs it (``python -m apidistill`` in a child process) against the
fault server, whose own counters say what it received and billed. Its answers are a few
words each, which the generator reads as one candidate prompt per answer.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

from apidistill.costs.ledger import Ledger

N = 12
SYNTH = (
    "synth:\n"
    f"  n: {N}\n"
    "  output: synth/prompts.jsonl\n"
    "  task: support tickets of an online shop\n"
    "  topics: [refunds, shipping, accounts, invoices, returns, discounts, warranty]\n"
    "  per_request: 1\n"
    "  novelty_threshold: 0.95\n"
    "  max_tokens: 16\n"
)


def _write_run(
    folder: Path, base_url: str, *, synth: str = SYNTH, use: str = "internal",
    provider: str = "openai_compatible", budget: str = "5", faults: bool = False,
) -> Path:  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "prompts.jsonl").open("w", encoding="utf-8") as fh:
        for i in range(6):
            fh.write(json.dumps({"id": f"t{i}", "text": f"ticket {i}: order {1000 + i} late"}))
            fh.write("\n")
    run = folder / "run.yaml"
    run.write_text(
        "name: synth-cli\n"
        "run_dir: run\n"
        "teacher:\n"
        f"  provider: {provider}\n"
        "  model: fault-model\n"
        f"  base_url: {base_url}\n"
        "  price: {input_per_mtok: 100, output_per_mtok: 400}\n"
        "prompts: {path: prompts.jsonl, id_field: id}\n"
        f"policy: {{use: {use}, acknowledge_unknown: 'synth test: loopback fake'}}\n"
        f"budget: {{usd: {budget}}}\n"
        "harvest: {concurrency: 4, timeout_s: 10, max_retries: 6}\n" + synth,
        encoding="utf-8",
    )
    return run


def _synth(run: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "apidistill", "synth", str(run), "--no-progress", *args],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def _run_ends(journal: Path) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT detail FROM events WHERE event='run_end' ORDER BY seq")
        return [json.loads(r[0]) for r in rows.fetchall()]


def _prompts(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_synth_stops_midway_then_resumes_without_sending_anything_twice(fault, tmp_path):
    # a fifth of the requests fail once in transit (429/5xx/reset): the engine's retries
    srv = fault(fault_rate=0.2, faults={"429": 1, "500": 1, "503": 1, "reset": 1})
    run = _write_run(tmp_path, srv.base_url)
    journal = tmp_path / "run" / "journal.sqlite"
    out = tmp_path / "synth" / "prompts.jsonl"

    first = _synth(run, "--max-requests", "3")
    assert first.returncode == 0, first.stderr
    [end1] = _run_ends(journal)
    assert end1["stopped_by"] == "max_requests" and end1["done"] == 3
    assert len(_prompts(out)) <= 3
    billed1 = srv.stats()["billed"]
    assert billed1 == 3

    second = _synth(run)
    assert second.returncode == 0, second.stderr
    end2 = _run_ends(journal)[-1]
    assert end2["cached"] == 3 and end2["resent"] == 0 and end2["stopped_by"] is None
    rows = _prompts(out)
    assert len(rows) == N and all(r["synthetic"] is True for r in rows)
    assert len({r["text"] for r in rows}) == N
    stats = srv.stats()
    assert stats["billed"] == stats["answered"] == 3 + end2["done"]
    # faults happened and were retried by the engine; nothing was billed twice
    assert stats["received"] > stats["billed"]
    assert all(d["billed"] <= 1 for d in stats["digests"].values())
    policy = json.loads((tmp_path / "run" / "synth_policy.json").read_text())
    assert policy["use"] == "internal"
    summary = json.loads((tmp_path / "run" / "synth_summary.json").read_text())
    assert summary["prompts"] == N and summary["harvest"]["cached"] == 3

    # a third run sends nothing at all and writes the same file
    before = srv.stats()["received"]
    third = _synth(run)
    assert third.returncode == 0, third.stderr
    assert srv.stats()["received"] == before
    assert _prompts(out) == rows
    assert _run_ends(journal)[-1]["done"] == 0
    assert "synth" in third.stdout and f"{N} prompts" in third.stdout


def test_synth_budget_stop_keeps_what_was_paid_for(fault, tmp_path):
    srv = fault()
    # one request reserves ≈ $0.04 (its input bound + 16 tokens out); $0.1 allows two or so
    run = _write_run(tmp_path, srv.base_url, budget="0.1")
    journal = tmp_path / "run" / "journal.sqlite"
    res = _synth(run)
    assert res.returncode == 4, res.stderr  # exit_codes.BUDGET_STOP
    assert "budget" in res.stderr and "never paid twice" in res.stderr
    [end] = _run_ends(journal)
    assert end["stopped_by"] == "budget"
    assert 0 < end["done"] < N
    total = Ledger(journal).totals()
    assert total.cost_usd + total.at_risk_usd <= Decimal("0.1")
    assert srv.stats()["billed"] == end["done"]
    # what was paid for is in the output file
    rows = _prompts(tmp_path / "synth" / "prompts.jsonl")
    assert 0 < len(rows) <= end["done"]


def test_policy_refusal_comes_before_the_first_request(fault, tmp_path):
    srv = fault()
    run = _write_run(tmp_path, srv.base_url, provider="openai", use="competing")
    res = _synth(run)
    assert res.returncode == 2
    assert "competing" in res.stderr or "denied" in res.stderr.lower()
    assert srv.stats()["received"] == 0
    assert not (tmp_path / "synth" / "prompts.jsonl").exists()


def test_a_synth_teacher_override_is_the_one_checked_and_asked(fault, tmp_path):
    srv = fault()
    override = (
        SYNTH + "  teacher:\n    provider: openai\n    model: gpt-4.1-mini\n"
        f"    base_url: {srv.base_url}\n"
    )
    run = _write_run(tmp_path, srv.base_url, synth=override, use="competing")
    res = _synth(run)  # the run's own teacher (a loopback server) would be allowed
    assert res.returncode == 2 and srv.stats()["received"] == 0
    assert "openai" in res.stderr.lower()


def test_bad_synth_config_is_located(fault, tmp_path):
    srv = fault()
    run = _write_run(tmp_path, srv.base_url, synth=SYNTH + "  topicz: [x]\n")
    res = _synth(run)
    assert res.returncode == 2
    assert "topicz" in res.stderr and "synth" in res.stderr
    line = run.read_text().splitlines().index("  topicz: [x]") + 1
    assert f"line {line}" in res.stderr or f":{line}" in res.stderr

    run = _write_run(tmp_path, srv.base_url, synth="")
    res = _synth(run)
    assert res.returncode == 2 and "no synth: section" in res.stderr

    bad = SYNTH.replace("synth/prompts.jsonl", "prompts.jsonl")  # the user's real prompts
    run = _write_run(tmp_path, srv.base_url, synth=bad)
    res = _synth(run)
    assert res.returncode == 2 and "never overwritten" in res.stderr
    assert "prompts.jsonl" in res.stderr
    assert srv.stats()["received"] == 0
