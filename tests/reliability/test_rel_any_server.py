"""The guarantees that hold against ANY OpenAI-compatible server (``APIDISTILL_REL_TARGET``):
the fault server (default), the real llama.cpp server (``llamacpp``), or a reviewer's URL.

Each test goes through the CLI as a user runs it, with the server's own usage and answers:

- the hard budget under the server's real usage, with a cap that only a few answers fit;
- failed requests (a wrong key: 401) are sent again with ``--retry-failed`` once fixed, and
  only they: never a request that has an answer;
- ``kill -9`` at seeded random points, then a resume: every prompt answered once, re-sends
  only of the requests in flight at a kill (never an answered one);
- bad input (a broken prompts line, a misspelt run-file key) is refused before anything is
  sent, with an error naming the file and the line.

Where the target counts what it received (fault server, llama.cpp's access log) the server's
count is checked too; on a reviewer's server the journal is the record.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import pytest
from rel_helpers import cli, cli_env, integrity, journal_counts, run_cli, run_end_summaries
from rel_target import RelTarget

from apidistill import exit_codes
from apidistill.costs.ledger import Ledger
from apidistill.harvest import JournalStore

pytestmark = pytest.mark.slow  # minutes against llama.cpp; seconds against the fault server

CAP = Decimal("1.0")

_SCRIPTS = (
    "order {i} is late, where is it? ",
    "注文{i}はまだ届いていません。",
    "订单{i}还没到。",
    "🙂📦 {i} ",
)


def texts(n: int, *, chars: int = 150, seed: int = 0) -> list[str]:
    """``n`` distinct prompts of about ``chars`` characters mixing Latin, CJK and emoji."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = ""
        while len(text) < chars:
            text += rng.choice(_SCRIPTS).format(i=i)
        out.append(text[:chars])
    return out


def write_target_run(
    folder: Path,
    target: RelTarget,
    prompts: list[str],
    *,
    budget: Decimal = Decimal(100),
    concurrency: int = 2,
    key_env: str | None = None,
    extra: str = "",
) -> Path:
    """A prompts file and a run file that harvests ``prompts`` from ``target``."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "prompts.jsonl").open("w", encoding="utf-8") as fh:
        for i, text in enumerate(prompts):
            fh.write(json.dumps({"id": f"p{i}", "text": text}, ensure_ascii=False) + "\n")
    run = folder / "run.yaml"
    run.write_text(
        "name: rel-any\nrun_dir: run\n"
        f"{target.teacher_yaml(key_env=key_env)}"
        "prompts: {path: prompts.jsonl, id_field: id}\n"
        "policy: {use: internal, acknowledge_unknown: 'reliability suite: a test server'}\n"
        f"budget: {{usd: {budget}}}\n"
        f"harvest: {{concurrency: {concurrency}, max_tokens: 16, timeout_s: 120, max_retries: 2}}\n"
        f"{extra}",
        encoding="utf-8",
    )
    return run


def rows(journal: Path) -> list:
    store = JournalStore(journal, readonly=True)
    try:
        return list(store.rows())
    finally:
        store.close()


def usage_flags(journal: Path) -> list[dict]:
    store = JournalStore(journal, readonly=True)
    try:
        return store.usage_flags()
    finally:
        store.close()


def harvest(run: Path, target: RelTarget, *args: str, **env: str) -> subprocess.CompletedProcess:
    return run_cli(
        "harvest", str(run), "--no-progress", *args,
        env=cli_env(**{**target.env(), **env}), timeout=600,
    )  # fmt: skip


# --------------------------------------------------------------------------- budget


def test_budget_bound_under_the_servers_own_usage(rel_target, tmp_path):
    """A cap only a few answers fit: spend + money at risk stays within it, by the journal and
    (where it tells) by the server's count; the server's real usage is within the bound the
    reservation assumed (nothing flagged), and the run stops on the budget."""
    run = write_target_run(tmp_path, rel_target, texts(16), budget=CAP)
    proc = harvest(run, rel_target)
    journal = tmp_path / "run" / "journal.sqlite"
    total = Ledger(journal).totals()
    summary = run_end_summaries(journal)[-1]
    done = sum(1 for r in rows(journal) if r.state == "done")
    print(
        f"\n[{rel_target.kind}] budget ${CAP}: {done} answered, spent ${total.cost_usd}, "
        f"at risk ${total.total_usd - total.cost_usd}, server received {rel_target.received()}"
    )
    assert proc.returncode == exit_codes.BUDGET_STOP, proc.stderr[-3000:]
    assert summary["stopped_by"] == "budget", summary
    assert 0 < done < 16
    assert total.total_usd <= CAP  # spend + at risk within the cap
    assert usage_flags(journal) == []  # the server's usage is within what the request allows
    received = rel_target.received()
    if received is not None:  # every send the server saw is booked in the journal
        assert received == done, received


# --------------------------------------------------------------------------- retry failed


def test_retry_failed_sends_only_the_failed_requests(rel_target, tmp_path):
    """3 answered; a wrong key makes the other 3 fail (401, 'rejected'); a re-run with the key
    fixed sends nothing unasked; ``--retry-failed rejected`` sends exactly those 3."""
    if not rel_target.requires_key:
        pytest.skip(f"target {rel_target.kind} takes any key: it cannot refuse a wrong one")
    n = 6
    key_env = "REL_RETRY_KEY"
    run = write_target_run(tmp_path, rel_target, texts(n, chars=40), key_env=key_env)
    good = {key_env: rel_target.key or ""}
    first = harvest(run, rel_target, "--max-requests", "3", **good)
    assert first.returncode == exit_codes.OK, first.stderr[-3000:]
    wrong = harvest(run, rel_target, **{key_env: "wrong-key-0123456789"})
    assert wrong.returncode == exit_codes.SOME_FAILED, wrong.stderr[-3000:]
    journal = tmp_path / "run" / "journal.sqlite"
    assert (
        sorted((r.state, r.reason) for r in rows(journal))
        == [("done", None)] * 3 + [("failed", "rejected")] * 3
    )
    sent_before = rel_target.received()

    unasked = harvest(run, rel_target, **good)  # fixed, not asked: nothing is sent
    assert run_end_summaries(journal)[-1]["sends"] == 0, unasked.stdout
    retried = harvest(run, rel_target, "--retry-failed", "rejected", **good)
    assert retried.returncode == 0, retried.stderr[-3000:]
    summary = run_end_summaries(journal)[-1]
    assert summary["sends"] == 3 and summary["cached"] == 3, summary
    assert {r.state for r in rows(journal)} == {"done"}
    if sent_before is not None:  # the server saw exactly the 3 failed requests again
        assert rel_target.received() - sent_before == 3


# --------------------------------------------------------------------------- kill -9


def _done(journal: Path) -> int:
    if not journal.exists():
        return 0
    try:
        return journal_counts(journal).get("done", 0)
    except sqlite3.Error:  # the journal is being created: not readable yet
        return 0


def test_kill9_at_random_points_then_resume_pays_nothing_twice(rel_target, tmp_path):
    """Two seeded kill points; after each the journal is intact; the resume answers every
    prompt once, re-sends only requests left in flight (each counted), never an answered one."""
    n, concurrency, kills = 8, 2, 2
    run = write_target_run(tmp_path, rel_target, texts(n, chars=40), concurrency=concurrency)
    journal = tmp_path / "run" / "journal.sqlite"
    rng = random.Random(19)
    thresholds = sorted(rng.sample(range(1, n - 2), kills))
    in_flight: list[int] = []
    env = cli_env(**rel_target.env())
    for threshold in thresholds:
        proc = subprocess.Popen(
            cli("harvest", str(run), "--no-progress"),
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while proc.poll() is None and _done(journal) < threshold:
            assert time.monotonic() < deadline, "harvest made no progress"
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))
        assert proc.poll() is None, "harvest ended before its kill point"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        assert integrity(journal) == ["ok"]
        in_flight.append(journal_counts(journal).get("sent", 0))
    final = harvest(run, rel_target)
    assert final.returncode == 0, final.stderr[-3000:]
    assert integrity(journal) == ["ok"]
    final_rows = rows(journal)
    assert sorted(r.prompt_id for r in final_rows) == sorted(f"p{i}" for i in range(n))
    assert {r.state for r in final_rows} == {"done"}
    assert sum(r.unknown_sends for r in final_rows) == sum(in_flight)
    summary = run_end_summaries(journal)[-1]
    assert summary["resent"] <= in_flight[-1]
    received = rel_target.received()
    print(
        f"\n[{rel_target.kind}] kills at {thresholds}: in flight {in_flight}, received {received}"
    )
    if received is not None:  # answered requests are never sent again
        assert received <= n + sum(in_flight), (received, in_flight)


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_before_sending_with_located_errors(rel_target, tmp_path):
    """A broken prompts line and a misspelt run-file key: exit 2, the message names the file
    and the line, and the server receives nothing."""
    run = write_target_run(tmp_path, rel_target, texts(4, chars=20))
    prompts = tmp_path / "prompts.jsonl"
    lines = prompts.read_text(encoding="utf-8").splitlines()
    lines[2] = '{"id": "p2", "text": "cut short'
    prompts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = harvest(run, rel_target)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "prompts.jsonl:3:" in proc.stderr, proc.stderr  # file:line
    assert "Traceback" not in proc.stderr

    text = run.read_text(encoding="utf-8").replace("concurrency:", "concurency:")
    run.write_text(text, encoding="utf-8")
    proc = harvest(run, rel_target)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = 1 + text.splitlines().index(next(x for x in text.splitlines() if "concurency" in x))
    assert f"run.yaml:{line}: harvest.concurency" in proc.stderr, proc.stderr  # file:line: key
    assert "Traceback" not in proc.stderr
    assert rel_target.received() in (0, None)
    assert not (tmp_path / "run" / "journal.sqlite").exists()
