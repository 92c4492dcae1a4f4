"""``apidistill harvest run.yaml --budget X`` (issue 5): a budget hit mid-run, then the same
command with a higher ``--budget`` resumes, and no request is paid twice.

The CLI runs as a user runs it (``python -m apidistill`` in a child process) against the
fault server, whose own per-request counters say what it billed. The run file's budget
(``budget.usd: 0.01``) is below one request's worst case, so that the first run sending
anything at all shows ``--budget`` overrides it.
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
from apidistill.storage.journal import JournalStore

N = 120
IN_PER_MTOK, OUT_PER_MTOK = Decimal(100), Decimal(400)
# A request's worst case (input bound + 16 tokens out) is ≈ $0.012, its actual cost ≈ $0.0024:
# all 120 cost ≈ $0.28. Concurrency 4 (8 engine workers, each holding a reservation) leaves
# room under $0.20 for about 50 answers before a reservation fails.
FIRST_BUDGET, SECOND_BUDGET = "0.20", "5"


def _write_run(folder: Path, base_url: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "prompts.jsonl").open("w", encoding="utf-8") as fh:
        for i in range(N):
            label = ("refund", "shipping", "other")[i % 3]
            row = {"id": f"t{i}", "text": f"ticket {i}: order {1000 + i} is late", "label": label}
            fh.write(json.dumps(row) + "\n")
    run = folder / "run.yaml"
    run.write_text(
        "name: budget-flag\n"
        "run_dir: run\n"
        "teacher:\n"
        "  provider: openai_compatible\n"
        "  model: fault-model\n"
        f"  base_url: {base_url}\n"
        f"  price: {{input_per_mtok: {IN_PER_MTOK}, output_per_mtok: {OUT_PER_MTOK}}}\n"
        "prompts: {path: prompts.jsonl, id_field: id, label_field: label}\n"
        "policy: {use: internal, acknowledge_unknown: 'budget flag test: loopback fake'}\n"
        "budget: {usd: 0.01}\n"
        "harvest: {concurrency: 4, max_tokens: 16, timeout_s: 10, max_retries: 3}\n",
        encoding="utf-8",
    )
    return run


def _harvest(run: Path, budget: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "apidistill", "harvest", str(run), "--budget", budget,
         "--no-progress"],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def _run_ends(journal: Path) -> list[dict[str, Any]]:
    """The summary every finished run noted in the journal, oldest first."""
    with contextlib.closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT detail FROM events WHERE event='run_end' ORDER BY seq")
        return [json.loads(r[0]) for r in rows.fetchall()]


def _states(journal: Path) -> dict[str, int]:
    store = JournalStore(journal, readonly=True)
    try:
        out: dict[str, int] = {}
        for row in store.rows():
            out[row.state] = out.get(row.state, 0) + 1
        return out
    finally:
        store.close()


def _server_cost(log: list[dict[str, Any]]) -> Decimal:
    """What the server billed, from its own log, at the run file's prices (exact)."""
    return sum(
        (
            (
                Decimal(e["prompt_tokens"]) * IN_PER_MTOK
                + Decimal(e["completion_tokens"]) * OUT_PER_MTOK
            )
            / Decimal(1_000_000)
            for e in log
            if e["billed"]
        ),
        Decimal(0),
    )


def test_budget_flag_stops_mid_run_then_a_raised_flag_resumes_paying_each_request_once(
    fault, tmp_path
):
    srv = fault(latency_ms=5)
    run = _write_run(tmp_path, srv.base_url)
    journal = tmp_path / "run" / "journal.sqlite"

    # 1. --budget 0.20: stops at the budget, cleanly, with a message saying how to resume;
    # exit code 4 (budget stop), and the harvest summary is written all the same
    first = _harvest(run, FIRST_BUDGET)
    assert first.returncode == 4, first.stderr
    assert "budget" in first.stderr and "raise the budget" in first.stderr
    stopped = json.loads((tmp_path / "run" / "harvest_summary.json").read_text())
    assert stopped["stopped_by"] == "budget" and stopped["done"] > 0
    [end1] = _run_ends(journal)
    assert end1["stopped_by"] == "budget"
    done1 = _states(journal).get("done", 0)
    assert 0 < done1 < N  # mid-run: some answered (--budget, not the file's $0.01), not all
    stats1 = srv.stats()
    assert stats1["billed"] == stats1["answered"] == done1  # every send answered and journaled
    spent1 = Ledger(journal).totals()
    assert spent1.cost_usd == _server_cost(stats1["log"]) > 0
    assert spent1.cost_usd + spent1.at_risk_usd <= Decimal(FIRST_BUDGET)

    # 2. the same command with --budget 5: finishes, sending only what was not answered
    second = _harvest(run, SECOND_BUDGET)
    assert second.returncode == 0, second.stderr
    summary = json.loads((tmp_path / "run" / "harvest_summary.json").read_text())
    assert summary["stopped_by"] is None
    assert summary["cached"] == done1 and summary["done"] == N - done1
    assert summary["sends"] == N - done1 and summary["resent"] == 0
    assert _states(journal) == {"done": N}

    # 3. the server's own counters: every request billed exactly once over both runs
    stats = srv.stats()
    digests = stats["digests"]
    assert len(digests) == N
    assert all(d["billed"] == 1 and d["received"] == 1 for d in digests.values())
    # the ledger equals what the server billed, to the last Decimal digit
    total = Ledger(journal).totals()
    assert total.done == N and total.at_risk_usd == 0
    assert total.cost_usd == _server_cost(stats["log"]) <= Decimal(SECOND_BUDGET)
    assert Decimal(summary["total_spent_usd"]) == total.cost_usd
    print(
        f"\nbudget flag: first run {done1}/{N} answered, ${spent1.cost_usd} of ${FIRST_BUDGET}; "
        f"resumed {N - done1} more, total ${total.cost_usd} = server's ${_server_cost(stats['log'])}"
    )
