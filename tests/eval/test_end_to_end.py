"""Acceptance: the embedded SmolLM2 as a prompted teacher vs. the same model untrained and
unprompted as the student, served over HTTP, evaluated, reported and rendered in Chromium.

The student endpoint is ``apidistill.serve.launcher.launch_server`` when it is importable; until
it lands, a loopback server answering with the same model's greedy generation stands in.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from eval_kit import FakeServer, chromium_binary, render_in_chromium, serve_fake

from apidistill.config import EvalConfig
from apidistill.eval.report import write_report
from apidistill.eval.runner import run_eval
from apidistill.eval.types import StudentEndpoint
from apidistill.records import Message, Record, TokenLogprob, TopLogprob, Usage

MODEL = "smollm2-135m-instruct"
SYSTEM = (
    "Extract the order number and the product from the support ticket. Answer with exactly two "
    "lines: 'order_id: <number>' and 'product: <product name>'."
)
SHOTS = [
    (
        "My order #551204 (Cedar Cutting Board) came cracked.",
        "order_id: 551204\nproduct: Cedar Cutting Board",
    ),
    (
        "Still waiting on the Polar Fleece Jacket, order 3381-2207.",
        "order_id: 3381-2207\nproduct: Polar Fleece Jacket",
    ),
]
TICKETS = [
    (
        "Hi, order #482913 of the Harbor Steel Water Bottle arrived dented.",
        "482913",
        "Harbor Steel Water Bottle",
    ),
    (
        "Order 7734-1290: the Alpine Trail Backpack zipper broke after two days.",
        "7734-1290",
        "Alpine Trail Backpack",
    ),
    (
        "I was charged twice for order 5518820, the Nordic Wool Blanket.",
        "5518820",
        "Nordic Wool Blanket",
    ),
]
MAX_NEW = 24


@pytest.fixture(scope="module")
def smollm():
    from apidistill.model_loading import load_model, load_tokenizer

    return load_model(MODEL), load_tokenizer(MODEL)


def _generate(model, tok, messages: list[dict], *, top: int = 0):
    import torch

    ids = tok.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=MAX_NEW,
            do_sample=False,
            output_scores=bool(top),
            return_dict_in_generate=True,
            pad_token_id=tok.pad_token_id,
        )
    latency_ms = (time.perf_counter() - t0) * 1000
    new = out.sequences[0, ids.shape[1] :].tolist()
    if new and new[-1] == tok.eos_token_id:
        new = new[:-1]
    logprobs = None
    if top:
        logprobs = []
        for pos, tid in enumerate(new):
            lp = out.scores[pos][0].float().log_softmax(-1)
            vals, alt = lp.topk(top)
            alts = [
                TopLogprob(token_id=int(i), token=tok.decode([int(i)]), logprob=float(v))
                for v, i in zip(vals, alt, strict=True)
            ]
            logprobs.append(
                TokenLogprob(
                    token_id=tid, token=tok.decode([tid]), logprob=float(lp[tid]), top=alts
                )
            )
    return tok.decode(new, skip_special_tokens=True).strip(), logprobs, ids.shape[1], latency_ms


def _teacher_records(model, tok) -> tuple[list[Record], dict[str, float]]:
    prototype = [{"role": "system", "content": SYSTEM}]
    for q, a in SHOTS:
        prototype += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    records, latency = [], {}
    for i, (ticket, order, product) in enumerate(TICKETS):
        text, lps, n_prompt, ms = _generate(
            model, tok, [*prototype, {"role": "user", "content": ticket}], top=20
        )
        records.append(
            Record(
                id=f"t{i}",
                messages=[Message(role="user", content=ticket)],
                completion=text,
                logprobs=lps,
                gold=f"order_id: {order}\nproduct: {product}",
                usage=Usage(input_tokens=n_prompt, output_tokens=len(lps or [])),
                split="test",
            )
        )
        latency[f"t{i}"] = ms
    return records, latency


@contextlib.contextmanager
def _student_endpoint(model, tok) -> Iterator[str]:
    try:
        from apidistill.serve.launcher import launch_server
    except ImportError:
        launch_server = None
    if launch_server is not None:
        with launch_server(MODEL, port=0) as handle:
            yield handle.base_url
        return

    def respond(messages: list[dict]) -> str:
        return _generate(model, tok, messages)[0]

    with serve_fake(FakeServer(respond)) as srv:
        yield srv.base_url


@pytest.mark.slow
def test_smollm2_teacher_vs_untrained_student_report_renders(smollm, tmp_path: Path) -> None:
    model, tok = smollm
    records, teacher_latency = _teacher_records(model, tok)
    cfg = EvalConfig(
        scorer="fields", fields=["order_id", "product"], max_tokens=MAX_NEW, bootstrap_samples=200
    )
    with _student_endpoint(model, tok) as url:
        students = {
            "base (no prompt)": StudentEndpoint(
                base_url=url, model=MODEL, kind="base", local_model=MODEL
            )
        }
        result = asyncio.run(
            run_eval(
                records,
                students,
                cfg,
                out_dir=tmp_path / "eval",
                concurrency=2,
                teacher_latency_ms=teacher_latency,
            )
        )
    base = result.students["base (no prompt)"]
    # The few-shot teacher answers in the two-line format; the unprompted base model does not.
    assert result.teacher.metrics["valid_rate"].value == 1.0
    assert base.metrics["agreement"].value < 0.5
    kl = base.metrics["kl_nats_per_token"]
    assert kl.value > 0.1 and kl.low <= kl.value <= kl.high
    assert 0.0 <= base.metrics["top1_agreement"].value < 1.0
    assert result.teacher.prompt_tokens_per_request > base.prompt_tokens_per_request
    path = write_report(result, tmp_path / "report", title="SmolLM2 order extraction")
    html = path.read_text()
    assert "NO-GO" in html and html.count("<table>") == 3
    assert len(re.findall(r'<img src="data:image/png;base64,', html)) >= 4
    if chromium_binary() is None:
        pytest.skip("chromium is not installed: the report was checked as text only")
    shown = render_in_chromium(path, tmp_path)
    probe = re.search(r'data-img-widths="([^"]*)" data-errors="([^"]*)"', shown.dom)
    assert probe and probe.group(2) == ""
    assert all(int(w) > 100 for w in probe.group(1).split(","))
    assert "NO-GO" in shown.dom and "held-out" not in probe.group(2)
    assert shown.screenshot.stat().st_size > 20_000
