"""run_eval against real loopback servers through the openai SDK: metrics, timing, cost,
selection, partial results and clear errors."""

from __future__ import annotations

import json
import socket
from decimal import Decimal
from pathlib import Path

import pytest
from eval_kit import answer_by_ticket, make_record

from apidistill.config import EvalConfig, EvalThresholds
from apidistill.errors import ConfigError, EvalError
from apidistill.eval.runner import run_eval
from apidistill.eval.types import StudentEndpoint

FIELDS = ["order_id", "product"]


def _line(order: str, product: str) -> str:
    return f"order_id: {order}\nproduct: {product}"


TICKETS = {
    f"ticket {i}: order #{100 + i} for the Harbor Bottle {i}": (str(100 + i), f"Harbor Bottle {i}")
    for i in range(6)
}


def _records(split: str | None = "test") -> list:
    out = []
    for i, (ticket, (order, product)) in enumerate(TICKETS.items()):
        gold = _line(order, product)
        teacher = gold if i != 5 else _line(order, "Harbor Flask")  # teacher wrong on #5
        out.append(make_record(f"r{i}", ticket, teacher, gold, split=split))
    return out


def _cfg(**kw) -> EvalConfig:
    base = {"scorer": "fields", "fields": FIELDS, "bootstrap_samples": 200, "seed": 0}
    return EvalConfig(**{**base, **kw})


def _good() -> dict[str, str]:
    return {t: _line(o, p) for t, (o, p) in TICKETS.items()}  # right on gold everywhere


def _bad() -> dict[str, str]:
    return dict.fromkeys(TICKETS, "I'm sorry, I can't help with that.")


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_two_students_metrics_timing_cost_and_selection(fake_server, tmp_path: Path) -> None:
    with (
        fake_server(answer_by_ticket(_good())) as good,
        fake_server(answer_by_ticket(_bad())) as bad,
    ):
        students = {
            "lora": StudentEndpoint(
                base_url=good.base_url, model="s", usd_per_hour=Decimal("3.6"), params=135
            ),
            "base (no prompt)": StudentEndpoint(
                base_url=bad.base_url, model="b", kind="base", params=100
            ),
        }
        result = await run_eval(
            _records(),
            students,
            _cfg(thresholds=EvalThresholds(agreement=0.8, relative_task_score=0.95)),
            system_prompts={"lora": "Extract order_id and product."},
            concurrency=3,
            out_dir=tmp_path,
            teacher_latency_ms={f"r{i}": 600.0 + i for i in range(6)},
        )
    lora, base = result.students["lora"], result.students["base (no prompt)"]
    # The teacher got 5/6 gold; the good student matches gold everywhere → agrees on 5/6.
    assert result.teacher.metrics["task_score"].value == pytest.approx(5 / 6)
    assert lora.metrics["agreement"].value == pytest.approx(5 / 6)
    assert lora.metrics["task_score"].value == 1.0
    assert lora.metrics["relative_task_score"].value == pytest.approx(6 / 5)
    assert lora.metrics["field:product"].value == 1.0
    assert lora.metrics["valid_rate"].value == 1.0
    assert base.metrics["agreement"].value == 0.0
    assert base.metrics["refusal_rate"].value == 1.0
    assert base.metrics["valid_rate"].value == 0.0
    # The system prompt reached only the student it was given for.
    assert good.seen[0][0] == {"role": "system", "content": "Extract order_id and product."}
    assert all(m[0]["role"] == "user" for m in bad.seen)
    # Timing and cost.
    assert len(lora.timing.latency_ms) == 6 and lora.timing.p50_ms > 0
    assert lora.timing.p95_ms >= lora.timing.p50_ms
    assert lora.timing.requests == 6 and lora.timing.throughput_rps > 0
    expected = Decimal("3.6") * Decimal(str(lora.timing.wall_s)) / 3600 / 6 * 1000
    assert lora.usd_per_1k_requests == pytest.approx(expected)
    assert result.teacher.usd_per_1k_requests == Decimal("2.000")  # $0.002 per request
    assert result.teacher.timing.p50_ms == pytest.approx(602.5)
    assert result.teacher.prompt_tokens_per_request == 1570
    assert lora.prompt_tokens_per_request < 30  # short prompt vs the 1,570-token prototype
    # Only the good student passes; it is the latency-budget choice.
    assert result.selected == "lora"
    rows = (tmp_path / "predictions" / "base_no_prompt.jsonl").read_text().splitlines()
    assert sum("record_id" in json.loads(r) for r in rows) == 6
    assert "segment" in json.loads(rows[-1])


async def test_missing_test_split_is_named(tmp_path: Path) -> None:
    ep = {"s": StudentEndpoint(base_url="http://127.0.0.1:9/v1", model="s")}
    with pytest.raises(
        EvalError, match=r"no records in the 'test' split \(found: train 6, validation 0, test 0\)"
    ):
        await run_eval(_records(split="train"), ep, _cfg(), out_dir=tmp_path)
    with pytest.raises(EvalError, match="the validation split is empty"):
        await run_eval([], ep, _cfg(split="validation"), out_dir=tmp_path)


async def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    ep = StudentEndpoint(base_url="http://127.0.0.1:9/v1", model="s")
    with pytest.raises(EvalError, match="no student"):
        await run_eval(_records(), {}, _cfg(), out_dir=tmp_path)
    with pytest.raises(ConfigError, match="same file name"):
        await run_eval(_records(), {"a b": ep, "a/b": ep}, _cfg(), out_dir=tmp_path)
    dup = _records()
    dup[1] = dup[0]
    with pytest.raises(EvalError, match="appears twice"):
        await run_eval(dup, {"s": ep}, _cfg(), out_dir=tmp_path)


async def test_endpoint_down_from_the_start(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_unused_port()}/v1"
    ep = {"student": StudentEndpoint(base_url=url, model="s", timeout_s=5)}
    with pytest.raises(EvalError) as info:
        await run_eval(_records(), ep, _cfg(), out_dir=tmp_path, concurrency=2)
    msg = str(info.value)
    assert f"student 'student' at {url}" in msg
    assert "after 3 attempts" in msg  # retried (max_retries=2) like any harvest request
    assert "cannot connect" in msg and "0 of 6 answers are saved" in msg
    assert "re-run with resume" in msg


async def test_endpoint_failing_midway_keeps_answers_and_resume_reuses_them(
    fake_server, tmp_path: Path
) -> None:
    with fake_server(answer_by_ticket(_good()), fail_after=3) as srv:
        ep = {"s": StudentEndpoint(base_url=srv.base_url, model="s")}
        with pytest.raises(EvalError, match=r"answered 503: overloaded; 3 of 6 answers are saved"):
            await run_eval(_records(), ep, _cfg(), out_dir=tmp_path, concurrency=1)
        saved = (tmp_path / "predictions" / "s.jsonl").read_text().splitlines()
        assert sum("record_id" in json.loads(r) for r in saved) == 3
        srv.fail_after = None  # the endpoint recovers
        result = await run_eval(
            _records(), ep, _cfg(), out_dir=tmp_path, concurrency=1, resume=True
        )
    assert srv.served == 6  # 3 before the failure + only the 3 missing ones after
    assert result.students["s"].metrics["task_score"].value == 1.0
    assert result.students["s"].timing.requests == 6


async def test_endpoint_shutting_down_midway(fake_server, tmp_path: Path) -> None:
    with fake_server(answer_by_ticket(_good()), fail_after=2, fail_mode="shutdown") as srv:
        ep = {"s": StudentEndpoint(base_url=srv.base_url, model="s", timeout_s=5)}
        with pytest.raises(EvalError, match=r"student 's' at http://127\.0\.0\.1.*2 of 6 answers"):
            await run_eval(_records(), ep, _cfg(), out_dir=tmp_path, concurrency=1)
    lines = (tmp_path / "predictions" / "s.jsonl").read_text().splitlines()
    assert [json.loads(x)["record_id"] for x in lines if "record_id" in x] == ["r0", "r1"]


async def test_without_resume_old_answers_are_not_reused(fake_server, tmp_path: Path) -> None:
    with fake_server(answer_by_ticket(_good())) as srv:
        ep = {"s": StudentEndpoint(base_url=srv.base_url, model="s")}
        await run_eval(_records(), ep, _cfg(), out_dir=tmp_path)
        await run_eval(_records(), ep, _cfg(), out_dir=tmp_path)
    assert srv.served == 12


async def test_label_task_has_calibration_and_confusion(fake_server, tmp_path: Path) -> None:
    labels = ["billing", "shipping", "billing", "returns"]
    recs = [make_record(f"r{i}", f"t{i}", lab, lab) for i, lab in enumerate(labels)]
    answers = {"t0": "Billing.", "t1": "shipping", "t2": "returns", "t3": "returns"}
    with fake_server(answer_by_ticket(answers), confidence=0.9) as srv:
        ep = {"s": StudentEndpoint(base_url=srv.base_url, model="s")}
        result = await run_eval(recs, ep, _cfg(scorer="label", fields=None), out_dir=tmp_path)
    s = result.students["s"]
    assert s.metrics["task_score"].value == 0.75
    # All answers at confidence 0.9, 3 of 4 right: ECE = |0.75 − 0.9| = 0.15.
    assert s.metrics["ece"].value == pytest.approx(0.15)
    conf = s.confusion
    assert conf is not None and conf.reference == "gold"
    assert conf.labels == ["billing", "returns", "shipping"]
    assert conf.counts == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


async def test_malformed_answer_is_an_endpoint_error(tmp_path: Path) -> None:
    from eval_kit import FakeServer, serve_fake

    class NoChoices(FakeServer):
        def app(self):
            app = super().app()

            @app.post("/v2/chat/completions")
            async def empty() -> dict:
                return {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "m",
                    "choices": [],
                }

            return app

    with serve_fake(NoChoices(answer_by_ticket(_good()))) as srv:
        ep = {"s": StudentEndpoint(base_url=srv.base_url.replace("/v1", "/v2"), model="s")}
        with pytest.raises(
            EvalError, match="a body that cannot be read: no 'choices' in the answer"
        ):
            await run_eval(_records(), ep, _cfg(), out_dir=tmp_path)


async def test_a_teacher_without_logprobs_still_gets_a_report_and_verdict(
    fake_server, tmp_path: Path
) -> None:
    """Anthropic answers (no logprobs): KL is left out with one line saying why, no model is
    loaded for it, and every other metric and the verdict are there."""
    from apidistill.eval.report import write_report
    from apidistill.eval.verdict import verdict

    records = _records()
    assert not any(r.logprobs for r in records)
    with fake_server(answer_by_ticket(_good())) as good:
        students = {
            "student": StudentEndpoint(
                base_url=good.base_url,
                model="s",
                # never loaded: there is no teacher distribution to score it against
                local_model=str(tmp_path / "no-such-model"),
            )
        }
        result = await run_eval(records, students, _cfg(), out_dir=tmp_path)
    me = result.students["student"]
    assert "kl_nats_per_token" not in me.metrics and me.kl_coverage is None
    (why,) = result.notes
    assert why.startswith("held-out KL not measured") and "no teacher distribution" in why
    assert me.metrics["agreement"].value == pytest.approx(5 / 6)
    assert me.metrics["task_score"].value == 1.0 and me.timing.p50_ms > 0
    assert result.teacher.usd_per_1k_requests == Decimal("2.000")
    # no harvest latency was given (a Batch API run has none): said, not shown as 0
    assert result.teacher.timing.p50_ms is None
    assert any(n.startswith("latency not measured") for n in result.teacher.notes)
    v = verdict(result)
    assert v.student == "student" and [c.name for c in v.checks] == [
        "agreement",
        "relative_task_score",
    ]
    html = write_report(result, tmp_path / "report", title="t").read_text()
    assert "held-out KL not measured" in html
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["result"]["notes"] == [why]


async def test_a_transient_fault_is_retried_and_the_answers_are_the_same(
    fake_server, tmp_path: Path
) -> None:
    """Students are asked through the harvest engine: a 503 is retried with backoff, and the
    result equals the one of an endpoint that never failed."""
    with fake_server(answer_by_ticket(_good())) as clean:
        ep = {"s": StudentEndpoint(base_url=clean.base_url, model="s")}
        want = await run_eval(_records(), ep, _cfg(), out_dir=tmp_path / "a", concurrency=1)
    with fake_server(answer_by_ticket(_good()), fail_first=2) as flaky:
        ep = {"s": StudentEndpoint(base_url=flaky.base_url, model="s")}
        got = await run_eval(_records(), ep, _cfg(), out_dir=tmp_path / "b", concurrency=1)
    assert flaky.served == 6 and flaky.fail_first == 0
    assert got.students["s"].metrics == want.students["s"].metrics
    assert any("sent again after a transient failure" in n for n in got.students["s"].notes)


async def test_the_students_journal_is_the_record_resume_reads(fake_server, tmp_path: Path) -> None:
    """Each answer is journaled (its own file, not the training harvest's); a resumed eval
    answers from the journal even when the readable JSONL copy is gone."""
    from apidistill.storage.journal import JournalStore

    with fake_server(answer_by_ticket(_good())) as srv:
        ep = {"s": StudentEndpoint(base_url=srv.base_url, model="s")}
        first = await run_eval(_records(), ep, _cfg(), out_dir=tmp_path)
        journal = tmp_path / "predictions" / "s.sqlite"
        store = JournalStore(journal, readonly=True)
        assert store.count("done") == 6
        store.close()
        (tmp_path / "predictions" / "s.jsonl").unlink()
        again = await run_eval(_records(), ep, _cfg(), out_dir=tmp_path, resume=True)
    assert srv.served == 6  # nothing asked twice
    assert again.students["s"].metrics == first.students["s"].metrics
