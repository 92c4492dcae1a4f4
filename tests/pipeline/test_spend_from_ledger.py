"""The dataset card and the eval report state the run's spend as its ledger does.

A record only carries the cost of its own answer; the ledger (read from the journal) also
holds failed, outcome-unknown and re-sent sends and the money still at risk. The card and the
report must both show the ledger's total, never the sum of the answered records.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loopback_run_file import loopback_run_file

from apidistill.config import EvalThresholds, load_config
from apidistill.costs.ledger import Ledger
from apidistill.costs.prices import ModelPrice
from apidistill.costs.usage_check import judge_usage
from apidistill.data.card import build_card
from apidistill.eval.report import write_report
from apidistill.eval.types import EvalResult, ModelEval
from apidistill.pipeline.run import run_pipeline
from apidistill.pipeline.stages import RunContext, harvested_records, run_spend
from apidistill.records import Completion, Record, Usage
from apidistill.storage.journal import JournalStore
from apidistill.testing.fault_server import FaultServerProcess

PRICE = ModelPrice(input_per_mtok=Decimal(1), output_per_mtok=Decimal(2))


def _eval_result() -> EvalResult:
    teacher = ModelEval(name="teacher", role="teacher", kind="api", model="t", n_examples=1)
    student = ModelEval(name="student", role="student", kind="lora", model="s", n_examples=1)
    return EvalResult(
        scorer="label",
        split="test",
        n_records=1,
        n_with_gold=0,
        thresholds=EvalThresholds(),
        teacher=teacher,
        students={"student": student},
    )


# ------------------------------------------------------------------ property: any journal

# What happens to one send: answered (with or without usage), a failure that may have been
# billed (outcome unknown; final or retried later), a failure that was not billed, or a crash.
SEND = st.sampled_from(["answer", "answer_no_usage", "unknown", "billed_final", "unbilled"])


def _book(store: JournalStore, key: str, sends: list[str], reserve: Decimal) -> Decimal:
    """Drive one request through ``sends`` as the engine does; return what it may have cost
    (answers at their booked cost, every maybe-billed send without an answer at its worst
    case)."""
    expected = Decimal(0)
    for outcome in sends:
        claim = store.claim(
            key,
            teacher_id="t",
            model="m",
            request_json="{}",
            prompt_id=key,
            label=None,
            split=None,
            reserved_usd=reserve,
        )
        if claim.completion_json is not None:
            break  # answered already: the engine sends nothing
        if outcome.startswith("answer"):
            usage = Usage(input_tokens=0 if outcome == "answer_no_usage" else 7, output_tokens=3)
            verdict = judge_usage(
                usage, price=PRICE, input_bound=100, max_tokens=8, reserved=reserve
            )
            assert verdict.cost is not None
            store.done(
                key,
                completion_json=Completion(
                    text="ok", usage=usage, provider="p", model="m"
                ).model_dump_json(),
                cost_usd=verdict.cost,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cached_input_tokens=0,
                usage_flag=verdict.flag,
            )
            expected += verdict.cost
            break
        billed = outcome in ("unknown", "billed_final")
        store.attempt_failed(
            key, reason="timeout", error="x", maybe_billed=billed, final=outcome != "unknown"
        )
        expected += reserve if billed else 0
    return expected


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    requests=st.lists(
        st.tuples(st.lists(SEND, min_size=1, max_size=4), st.integers(1, 5000)),
        min_size=1,
        max_size=8,
    )
)
def test_card_and_report_spend_equal_the_ledger_for_any_journal(tmp_path_factory, requests):
    folder = tmp_path_factory.mktemp("j")
    journal = folder / "journal.sqlite"
    store = JournalStore(journal)
    expected = Decimal(0)
    for i, (sends, micro) in enumerate(requests):
        expected += _book(store, f"k{i}", sends, Decimal(micro) / Decimal(10**6))
    store.close()

    ledger = Ledger(journal)
    total = ledger.totals()
    assert total.total_usd == expected  # settled + every maybe-billed send without answer

    card = build_card([], name="p", ledger=ledger.card()).to_json()
    assert Decimal(card["cost"]["totals_usd"]["total_usd"]) == total.total_usd
    assert Decimal(card["cost"]["totals_usd"]["at_risk_usd"]) == total.at_risk_usd

    write_report(_eval_result(), folder / "report", title="p", spend=ledger.spend())
    report = json.loads((folder / "report" / "report.json").read_text(encoding="utf-8"))
    assert Decimal(report["spend"]["total_usd"]) == total.total_usd
    assert report["spend"]["resends"] == total.resends
    html = (folder / "report" / "report.html").read_text(encoding="utf-8")
    assert f"${total.total_usd}" in html


# ------------------------------------------------------------------ a real run


def _run_file(folder: Path, base_url: str, **harvest: Any) -> Path:
    """12 prompts, no retries: each send is one ledger line (test_dataset_from_journal too)."""
    return loopback_run_file(
        folder, base_url, name="spend", rows=12, harvest={"max_retries": 0, **harvest}
    )


def _records_cost(records: list[Record]) -> Decimal:
    return sum((r.cost_usd for r in records if r.cost_usd is not None), Decimal(0))


def test_a_run_with_failed_resent_and_missing_usage_sends_shows_the_ledger_total(
    tmp_path: Path,
) -> None:
    """First harvest: half the sends break after the provider generated (billed, outcome
    unknown) and none is retried. Second harvest: the teacher reports no usage and a share of
    sends fail with 500s; the broken ones are re-sent. The card and the report then show the
    ledger's total, which is more than the answered records cost."""
    with FaultServerProcess(fault_rate=0.5, faults={"invalid_json": 1.0}, seed=3) as srv:
        cfg = load_config(_run_file(tmp_path, srv.base_url))
        run_pipeline(cfg, progress=False, stop_after="harvest")
        srv.configure(usage="none", fault_rate=0.6, faults={"500": 1.0}, seed=5)
        run_pipeline(cfg, progress=False, stop_after="dataset")

    ctx = RunContext.from_config(cfg, progress=False)
    journal = JournalStore(ctx.layout.journal, readonly=True)
    rows = list(journal.rows())
    flags = journal.usage_flags()
    journal.close()
    assert any(r.state == "failed" for r in rows)  # a failed send
    assert any(r.sends > 1 for r in rows)  # a re-sent one
    assert any(f.get("flag") == "usage_missing" for f in flags)  # an answer without usage

    total = Ledger(ctx.layout.journal).totals()
    assert total.at_risk_usd > 0
    card = json.loads((ctx.layout.dataset / "card.json").read_text(encoding="utf-8"))
    assert Decimal(card["cost"]["totals_usd"]["total_usd"]) == total.total_usd
    assert card["cost"]["ledger"]["total"]["resends"] == total.resends
    assert "re-sent" in (ctx.layout.dataset / "README.md").read_text(encoding="utf-8")
    # what the records alone would have said (the card's old figure) leaves money out
    assert _records_cost(harvested_records(ctx)) < total.total_usd

    spend = run_spend(ctx)
    assert spend is not None
    write_report(_eval_result(), ctx.layout.report, title="spend", spend=spend)
    report = json.loads((ctx.layout.report / "report.json").read_text(encoding="utf-8"))
    assert Decimal(report["spend"]["total_usd"]) == total.total_usd


def test_run_spend_is_none_before_a_harvest(tmp_path: Path) -> None:
    cfg = load_config(_run_file(tmp_path, "http://127.0.0.1:9"))
    assert run_spend(RunContext.from_config(cfg, progress=False)) is None


@pytest.mark.parametrize("bad", ["not json\n", '{"key": "k"}\n'])
def test_a_damaged_answer_index_names_its_line(tmp_path: Path, bad: str) -> None:
    from apidistill.errors import DataError

    cfg = load_config(_run_file(tmp_path, "http://127.0.0.1:9"))
    ctx = RunContext.from_config(cfg, progress=False)
    ctx.layout.answers.write_text('{"key":"a","sample_index":0,"metadata":{}}\n' + bad)
    with pytest.raises(DataError) as err:
        harvested_records(ctx)
    assert err.value.line == 2 and err.value.file == str(ctx.layout.answers)
