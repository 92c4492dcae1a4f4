"""examples/cross_tokenizer.yaml runs: an "OpenAI" teacher with real o200k_base tokens (a
loopback server) is harvested with top-20 logprobs, and SmolLM2 is trained on them with
logprob KD aligned by bytes. The run file itself is loaded; only the teacher's URL, the run
folder and the size are changed for the test."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest

from apidistill.config import RunConfig, load_config
from apidistill.testing.o200k_teacher import O200kTeacherProcess, o200k_tokens

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "cross_tokenizer.yaml"
PROMPTS = 12


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """The loopback teacher, answering each ticket with its gold answer in o200k tokens."""
    cfg = load_config(EXAMPLE)
    rows = [
        json.loads(line)
        for line in cfg.resolve_path(cfg.prompts.path).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ][:PROMPTS]
    answers = tmp_path_factory.mktemp("teacher") / "answers.json"
    answers.write_text(json.dumps({r["text"]: r["gold"] for r in rows}), encoding="utf-8")
    with O200kTeacherProcess(answers) as server:
        yield server


def _config(tmp_path: Path, base_url: str, monkeypatch) -> RunConfig:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-cross-tokenizer-0123456789")
    monkeypatch.setenv("OPENAI_BASE_URL", base_url)  # as with the openai SDK: no file edit
    cfg = load_config(EXAMPLE)
    assert cfg.teacher.base_url is None
    cfg.run_dir = str(tmp_path / "run")
    cfg.prompts.limit = PROMPTS
    cfg.training.max_steps = 3
    cfg.training.batch_size = 2
    return cfg


def test_the_example_is_a_cross_tokenizer_logprob_kd_run():
    cfg = load_config(EXAMPLE)
    assert (cfg.teacher.provider, cfg.teacher.model) == ("openai", "gpt-4o-mini")
    assert cfg.teacher.tokenizer is None  # provider openai: the model name means o200k_base
    assert cfg.harvest.logprobs and cfg.harvest.top_logprobs == 20
    assert cfg.training.method == "logprob_kd" and cfg.training.kd.top_k == 20
    assert cfg.student.model == "smollm2-135m-instruct"
    assert cfg.resolve_path(cfg.prompts.path).is_file()
    assert cfg.resolve_path(cfg.prompts.template).is_file()
    from apidistill.costs.tokens import openai_encoding_name

    assert openai_encoding_name(cfg.teacher.model) == "o200k_base"


def test_the_loopback_teacher_answers_in_openais_shape_with_o200k_tokens():
    from apidistill.testing import provider_payloads as pp
    from apidistill.testing.o200k_teacher import chat_completion

    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "ticket"}],
        "max_completion_tokens": 4,
        "logprobs": True,
        "top_logprobs": 20,
    }
    out = chat_completion(body, {"ticket": "order_id: 5041-6582\nproduct: Café Kettle"})
    documented = pp.openai_chat_completion(body)
    assert out.keys() == documented.keys()
    assert out["choices"][0].keys() == documented["choices"][0].keys()
    choice = out["choices"][0]
    entries = choice["logprobs"]["content"]
    assert [bytes(e["bytes"]) for e in entries] == [b"order", b"_id", b":", b" "]
    assert choice["finish_reason"] == "length" and choice["message"]["content"] == "order_id: "
    assert out["usage"]["completion_tokens"] == 4
    for e in entries:
        assert e.keys() == {"token", "logprob", "bytes", "top_logprobs"}
        top = e["top_logprobs"]
        assert len(top) == 20 and all(t.keys() == {"token", "logprob", "bytes"} for t in top)
        assert top[0]["bytes"] == e["bytes"] and len({bytes(t["bytes"]) for t in top}) == 20
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert sum(math.exp(t["logprob"]) for t in top) < 1.0  # a tail is left


def test_harvest_keeps_the_teachers_o200k_tokens(teacher, tmp_path, monkeypatch):
    from apidistill.model_loading import load_tokenizer
    from apidistill.pipeline.run import run_pipeline
    from apidistill.train.align import StudentVocab, student_spans

    before = teacher.stats()["received"]
    cfg = _config(tmp_path, teacher.base_url, monkeypatch)
    summary = run_pipeline(cfg, progress=False, stop_after="dataset")

    sent = teacher.stats()["requests"][before:]
    assert len(sent) == PROMPTS
    assert all(
        r == {"model": "gpt-4o-mini", "logprobs": True, "top_logprobs": 20,
              "max_completion_tokens": cfg.harvest.max_tokens}
        for r in sent
    )  # fmt: skip
    policy = json.loads((cfg.run_path / "policy.json").read_text())
    assert policy["decision"] == "allow_with_obligations"  # OpenAI's terms, through a gateway

    from apidistill.pipeline.stages import RunContext, harvested_records

    records = harvested_records(RunContext.from_config(cfg, progress=False))
    assert len(records) == PROMPTS
    tok = load_tokenizer("smollm2-135m-instruct")
    vocab = StudentVocab.build(tok)
    for rec in records:
        assert rec.provenance.provider == "openai" and rec.cost_usd and rec.cost_usd > 0
        assert rec.completion == rec.gold  # the loopback teacher answers with the gold
        teacher_bytes = [bytes(t.bytes) for t in rec.logprobs]
        assert teacher_bytes == o200k_tokens(rec.completion)  # o200k tokens, as sent
        assert all(t.token_id is None for t in rec.logprobs)  # no ids from an API teacher
        assert all(len(t.top) == 20 and t.top[0].token == t.token for t in rec.logprobs)
        ids, _ = student_spans(tok, rec.completion, vocab)
        assert [vocab.token_bytes[i] for i in ids] != teacher_bytes  # not SmolLM2's tokens
    dataset = summary.numbers["dataset"]
    assert dataset["harvested"] == PROMPTS and dataset["splits"]["train"] > 0


@pytest.mark.slow
def test_the_example_trains_by_byte_alignment_and_reaches_a_report(teacher, tmp_path, monkeypatch):
    """The documented `apidistill run examples/cross_tokenizer.yaml`, end to end: logprob KD
    on o200k logprobs aligned by bytes, then a report whose held-out KL is measured on the
    byte-aligned positions, with their coverage."""
    from apidistill.data.store import load_records
    from apidistill.model_loading import load_tokenizer
    from apidistill.pipeline.run import run_pipeline
    from apidistill.train.align import StudentVocab, align_completion

    cfg = _config(tmp_path, teacher.base_url, monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = run_pipeline(cfg, progress=False)
    assert not [w for w in caught if "not loadable" in str(w.message)]

    result = json.loads((cfg.run_path / "train" / "train_result.json").read_text())
    train = load_records(cfg.run_path / "dataset", split="train")
    assert result["method"] == "logprob_kd" and result["steps"] == 3
    assert result["train_examples"] == len(train) > 0
    # every record's logprobs were aligned by bytes; about half the positions kept a target
    assert result["byte_aligned_records"] == len(train)
    share = result["supervised_share"]
    assert 0.2 < share < 0.9
    tok = load_tokenizer(cfg.student.model)
    vocab = StudentVocab.build(tok)
    aligned = [align_completion(r.completion, r.logprobs, tok, vocab) for r in train]
    assert all(a.teacher_text_ok for a in aligned)
    expected = sum(a.supervised for a in aligned) / sum(len(a.student_ids) for a in aligned)
    assert share == pytest.approx(expected, abs=1e-6)
    assert any("split numbers differently" in w for w in result["warnings"])

    steps = [h for h in result["log_history"] if "loss" in h]
    assert len(steps) == 3
    assert all(math.isfinite(h["loss"]) and math.isfinite(h["kd"]) for h in steps)
    adapter = cfg.run_path / "train" / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()

    # ... and evaluation, which used to stop at "none of the test records has teacher token
    # ids", writes the report with every metric, KL on the byte-aligned positions included.
    report = json.loads((cfg.run_path / "report" / "report.json").read_text())
    assert summary.report_path and (cfg.run_path / "report" / "report.html").is_file()
    res = report["result"]
    test = load_records(cfg.run_path / "dataset", split="test")
    assert res["n_records"] == len(test) > 0 and not res["notes"]
    assert res["teacher"]["metrics"]["task_score"]["value"] == 1.0  # gold answers
    assert res["teacher"]["usd_per_1k_requests"] is not None
    for name in ("student", "base (no prompt)"):
        me = res["students"][name]
        assert {"agreement", "task_score", "kl_nats_per_token", "top1_agreement"} <= set(
            me["metrics"]
        )
        assert "byte-aligned" in me["kl_basis"] and 0.2 < me["kl_coverage"] < 0.9
        assert me["timing"]["p50_ms"] > 0
    v = report["verdict"]
    assert v["student"] in res["students"] and len(v["checks"]) == 2
    assert all(c["measured"] is not None for c in v["checks"])
    assert summary.numbers["student_kl_coverage"] == res["students"]["student"]["kl_coverage"]
