"""The hard budget against teachers whose usage the client cannot predict (issue 19 item 1,
issue 18 item 5): the run goes through the CLI, as a user runs it, against the fault server,
which reports usage as a teacher with another tokenizer (or a faulty gateway) would.

- The issue's case: 40 prompts of 1,500 Chinese characters, ``provider: openai``,
  ``model: gpt-4.1-mini`` behind a ``base_url`` that is not api.openai.com, usage of about one
  token per character, ``budget.usd: 0.004``, concurrency 8. Spend must stay under the cap
  (it was 2.6 times the cap when the reservation counted characters / 4).
- ``budget.per_day_usd`` holds (a $0.0001 daily cap let $0.000133 through), and the stop
  message prints the real amounts (it printed ``$0.0000``).
- Usage beyond what the request could produce stops the run at once and is flagged; missing
  usage is charged at the reservation.
"""

from __future__ import annotations

import json
import random
from decimal import Decimal
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rel_helpers import cli_env, run_cli, run_end_summaries

from apidistill.config import HarvestConfig, TeacherConfig
from apidistill.costs.budget import Budget
from apidistill.costs.ledger import Ledger
from apidistill.costs.prices import price_for_teacher
from apidistill.costs.tokens import TokenCounter
from apidistill.harvest import HarvestOptions, harvest_sync
from apidistill.harvest.retry import RetryPolicy
from apidistill.records import GenerationParams, Message, TeacherRequest
from apidistill.storage.journal import JournalStore
from apidistill.teachers import make_teacher

KEY = "sk-test-budget-bound-0123456789"


def chinese(n_chars: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(n_chars))


def write_run_file(
    folder: Path, teacher: str, texts: list[str], *, budget: str, harvest: str
) -> Path:
    """A prompts file of ``texts`` and a run file with these teacher/budget/harvest lines."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "prompts.jsonl").open("w", encoding="utf-8") as fh:
        for i, text in enumerate(texts):
            fh.write(json.dumps({"id": f"p{i}", "text": text}, ensure_ascii=False) + "\n")
    run = folder / "run.yaml"
    run.write_text(
        f"name: budget-bound\nrun_dir: run\nteacher:\n{teacher}"
        "prompts: {path: prompts.jsonl, id_field: id}\n"
        "policy: {use: internal, acknowledge_unknown: 'budget tests: loopback fake'}\n"
        f"budget: {budget}\nharvest: {harvest}\n",
        encoding="utf-8",
    )
    return run


def write_openai_run(
    folder: Path,
    base_url: str,
    texts: list[str],
    *,
    budget: str,
    concurrency: int = 8,
    max_tokens: int = 64,
) -> Path:
    """A run file for ``provider: openai`` / gpt-4.1-mini through a gateway at ``base_url``."""
    teacher = f"  provider: openai\n  model: gpt-4.1-mini\n  base_url: {base_url}\n"
    harvest = (
        f"{{concurrency: {concurrency}, max_tokens: {max_tokens}, timeout_s: 10, max_retries: 2}}"
    )
    return write_run_file(folder, teacher, texts, budget=budget, harvest=harvest)


def server_billed(log: list[dict], in_per_mtok: str = "0.4", out_per_mtok: str = "1.6") -> Decimal:
    """What the server billed, from its own log, at these prices (gpt-4.1-mini's default)."""
    rate_in, rate_out = Decimal(in_per_mtok), Decimal(out_per_mtok)
    return sum(
        (
            (Decimal(e["prompt_tokens"]) * rate_in + Decimal(e["completion_tokens"]) * rate_out)
            / Decimal(1_000_000)
            for e in log
            if e["billed"]
        ),
        Decimal(0),
    )


def usage_flags(journal: Path) -> list[dict]:
    store = JournalStore(journal, readonly=True)
    try:
        return store.usage_flags()
    finally:
        store.close()


def test_issue_case_cjk_prompts_through_a_gateway_never_pass_the_cap(fault, tmp_path):
    srv = fault(latency_ms=20, usage="chars")
    texts = [chinese(1500, i) for i in range(40)]
    run = write_openai_run(tmp_path, srv.base_url, texts, budget="{usd: 0.004}")
    proc = run_cli("harvest", str(run), "--no-progress", env=cli_env(OPENAI_API_KEY=KEY))
    journal = tmp_path / "run" / "journal.sqlite"
    stats = srv.stats()
    billed = server_billed(stats["log"])
    total = Ledger(journal).totals()
    print(f"\nsent {stats['received']}, billed ${billed}, journal ${total.total_usd}")
    assert stats["received"] > 0, proc.stderr
    assert total.cost_usd == billed  # the journal holds what the server billed
    assert billed <= Decimal("0.004")  # the cap holds (was $0.0104 with chars/4)
    assert total.total_usd <= Decimal("0.004")
    assert run_end_summaries(journal)[-1]["stopped_by"] == "budget"
    assert usage_flags(journal) == []  # ~1 token per character is within the byte bound


def test_per_day_cap_holds_across_runs_and_the_stop_prints_real_amounts(fault, tmp_path):
    """A $0.0001 daily cap (it let $0.000133 through when the setting was not wired), with
    answers of ≈ $0.000002: the run stops at the cap, says so with the real amounts, and a
    second run the same day adds nothing past it."""
    srv = fault(latency_ms=5)
    teacher = (
        "  provider: openai_compatible\n  model: fault-model\n"
        f"  base_url: {srv.base_url}\n  price: {{input_per_mtok: 0.1, output_per_mtok: 0.2}}\n"
    )
    texts = [f"ticket {i}: order {1000 + i} is late" for i in range(120)]
    run = write_run_file(
        tmp_path, teacher, texts, budget="{usd: 1, per_day_usd: 0.0001}",
        harvest="{concurrency: 4, max_tokens: 16, timeout_s: 10, max_retries: 2}",
    )  # fmt: skip
    journal = tmp_path / "run" / "journal.sqlite"
    cap = Decimal("0.0001")

    first = run_cli("harvest", str(run), "--no-progress")
    total = Ledger(journal).totals()
    assert 0 < total.done < len(texts), first.stderr  # stopped mid-run by the daily cap
    assert total.total_usd <= cap
    assert server_billed(srv.stats()["log"], "0.1", "0.2") == total.cost_usd
    assert run_end_summaries(journal)[-1]["stopped_by"] == "budget"
    out = first.stdout + first.stderr
    assert "per-day budget of $0.0001" in out
    assert "run again tomorrow (UTC)" in out  # the per-day hint, not "raise the budget"
    assert "$0.0000 " not in out and "$0.0000)" not in out  # amounts are not rounded away

    second = run_cli("harvest", str(run), "--no-progress")
    again = Ledger(journal).totals()
    assert again.total_usd <= cap, second.stderr
    assert server_billed(srv.stats()["log"], "0.1", "0.2") == again.cost_usd


# --------------------------------------------------------------------- through the SDK

GATEWAY_MODEL = "gpt-4.1-mini"


def _gateway(base_url: str) -> TeacherConfig:
    return TeacherConfig(provider="openai", model=GATEWAY_MODEL, base_url=base_url)


def _requests(texts: list[str], max_tokens: int = 16) -> list[TeacherRequest]:
    return [
        TeacherRequest(
            messages=[Message(role="user", content=t)],
            params=GenerationParams(max_tokens=max_tokens),
            prompt_id=f"p{i}",
        )
        for i, t in enumerate(texts)
    ]


def _harvest(cfg: TeacherConfig, reqs, journal: Path, cap: str, concurrency: int):
    counter = TokenCounter(cfg)
    budget = Budget(Decimal(cap))
    summary = harvest_sync(
        reqs,
        teacher=make_teacher(cfg, api_key=KEY, timeout_s=10),
        journal=journal,
        budget=budget,
        price=price_for_teacher(cfg),
        config=HarvestConfig(concurrency=concurrency),
        progress=False,
        options=HarvestOptions(
            count_input_tokens=lambda r: counter.bound(r).n,
            durable=False,
            retry_policy=RetryPolicy(max_retries=2, timeout_s=10, initial_backoff_s=0.01),
        ),
    )
    return summary, budget


def test_usage_beyond_the_request_stops_the_run_at_once_and_is_flagged(fault, tmp_path):
    """A gateway reporting 50M input tokens per answer: booked as reported (the provider
    bills it), flagged, and no request starts after the first such answer."""
    srv = fault(latency_ms=50, extra_prompt_tokens=50_000_000)
    concurrency = 4
    journal = tmp_path / "j.sqlite"
    summary, _ = _harvest(
        _gateway(srv.base_url), _requests([f"q {i}" for i in range(40)]), journal, "1", concurrency
    )
    stats = srv.stats()
    assert summary.stopped_by == "budget"
    assert "reported 50000" in (summary.stop_message or "")
    assert stats["received"] <= 2 * concurrency < 40  # in flight when it stopped, no more
    flags = usage_flags(journal)
    assert len(flags) == summary.done == stats["answered"]
    assert {f["flag"] for f in flags} == {"usage_out_of_bounds"}
    total = Ledger(journal).totals()
    assert total.cost_usd == server_billed(stats["log"]) > Decimal(1)  # past the cap: flagged
    assert summary.usage_flags["usage_out_of_bounds"] == summary.done
    assert any("more tokens than the request could produce" in line for line in summary.lines())


def test_output_beyond_max_tokens_is_flagged(fault, tmp_path):
    srv = fault(latency_ms=5, extra_completion_tokens=100)
    journal = tmp_path / "j.sqlite"
    summary, _ = _harvest(
        _gateway(srv.base_url), _requests(["one question"], max_tokens=16), journal, "1", 1
    )
    [flag] = usage_flags(journal)
    assert flag["flag"] == "usage_out_of_bounds" and flag["output_tokens"] > flag["max_tokens"]
    assert summary.stopped_by == "budget"


def test_missing_usage_is_charged_at_the_reservation(fault, tmp_path):
    srv = fault(latency_ms=5, usage="none")
    journal = tmp_path / "j.sqlite"
    summary, budget = _harvest(
        _gateway(srv.base_url), _requests([f"q {i}" for i in range(6)]), journal, "1", 2
    )
    assert summary.done == 6 and summary.stopped_by is None
    store = JournalStore(journal, readonly=True)
    try:
        rows = list(store.rows(state="done"))
        reserved = dict(store.conn.execute("SELECT key, reserved_usd FROM requests"))
    finally:
        store.close()
    for row in rows:
        assert row.cost_usd == Decimal(reserved[row.key]) > 0  # never $0
    assert [f["flag"] for f in usage_flags(journal)] == ["usage_missing"] * 6
    assert budget.spent == sum(r.cost_usd for r in rows)
    assert any("without usage" in line for line in summary.lines())


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    texts=st.lists(
        st.lists(
            st.one_of(
                st.characters(exclude_categories=("Cs",)),
                st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),
                st.sampled_from(["😀", "👩‍👩‍👧", "é", "\u0301", "\u200d"]),
            ),
            min_size=1,
            max_size=600,
        ).map("".join),
        min_size=1,
        max_size=24,
    ),
    usage=st.sampled_from(["words", "chars", "bytes", "none"]),
    concurrency=st.integers(1, 8),
    cap_micro=st.integers(0, 8_000),
)
def test_property_end_to_end_spend_stays_within_the_cap(
    fault, tmp_path_factory, texts, usage, concurrency, cap_micro
):
    """Any prompts, any concurrency, any honest way of counting usage (or none): what the
    server billed, and what the journal holds, stay within the cap."""
    srv = fault(latency_ms=5, usage=usage)
    cap = Decimal(cap_micro) / Decimal(1_000_000)
    journal = tmp_path_factory.mktemp("bound") / "j.sqlite"
    summary, budget = _harvest(
        _gateway(srv.base_url), _requests(texts, max_tokens=16), journal, str(cap), concurrency
    )
    total = Ledger(journal).totals()
    assert total.total_usd <= cap and budget.spent + budget.at_risk <= cap
    billed = server_billed(srv.stats()["log"])
    assert billed <= cap  # without usage the journal charges the bound, above the words billed
    flags = {f["flag"] for f in usage_flags(journal)}
    assert "usage_out_of_bounds" not in flags
    if summary.stopped_by != "budget":
        assert summary.done + summary.cached + summary.failed_total == len(texts)


def test_cli_stop_on_out_of_bounds_usage_says_why_and_not_to_raise_the_budget(fault, tmp_path):
    srv = fault(latency_ms=5, extra_prompt_tokens=50_000_000)
    run = write_openai_run(tmp_path, srv.base_url, [f"q {i}" for i in range(20)], budget="{usd: 1}")
    proc = run_cli("harvest", str(run), "--no-progress", env=cli_env(OPENAI_API_KEY=KEY))
    out = proc.stdout + proc.stderr
    assert "the teacher reported 50000" in out and "raising the budget does not fix this" in out
    assert usage_flags(tmp_path / "run" / "journal.sqlite")
