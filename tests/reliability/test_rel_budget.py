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

from rel_helpers import cli_env, run_cli, run_end_summaries

from apidistill.costs.ledger import Ledger
from apidistill.harvest.journal import JournalStore

KEY = "sk-test-budget-bound-0123456789"
# genai-prices' gpt-4.1-mini: $0.40 in, $1.60 out per million tokens.
IN_PER_MTOK, OUT_PER_MTOK = Decimal("0.4"), Decimal("1.6")


def chinese(n_chars: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(n_chars))


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
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "prompts.jsonl").open("w", encoding="utf-8") as fh:
        for i, text in enumerate(texts):
            fh.write(json.dumps({"id": f"p{i}", "text": text}, ensure_ascii=False) + "\n")
    run = folder / "run.yaml"
    run.write_text(
        "name: budget-bound\n"
        "run_dir: run\n"
        "teacher:\n"
        "  provider: openai\n"
        "  model: gpt-4.1-mini\n"
        f"  base_url: {base_url}\n"
        "prompts: {path: prompts.jsonl, id_field: id}\n"
        "policy: {use: internal}\n"
        f"budget: {budget}\n"
        f"harvest: {{concurrency: {concurrency}, max_tokens: {max_tokens}, timeout_s: 10, "
        "max_retries: 2}\n",
        encoding="utf-8",
    )
    return run


def server_billed_usd(log: list[dict]) -> Decimal:
    """What the server billed, from its own log, at gpt-4.1-mini's prices."""
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
    billed = server_billed_usd(stats["log"])
    total = Ledger(journal).totals()
    print(f"\nsent {stats['received']}, billed ${billed}, journal ${total.total_usd}")
    assert stats["received"] > 0, proc.stderr
    assert total.cost_usd == billed  # the journal holds what the server billed
    assert billed <= Decimal("0.004")  # the cap holds (was $0.0104 with chars/4)
    assert total.total_usd <= Decimal("0.004")
    assert run_end_summaries(journal)[-1]["stopped_by"] == "budget"
    assert usage_flags(journal) == []  # ~1 token per character is within the byte bound
