"""The conformance matrix (issue 18, item 2): for each kind of teacher and each training
method, ``apidistill run`` goes from prompts to a written report and verdict, and the report
holds the metrics that kind of teacher allows (held-out KL where it can be measured honestly,
a one-line reason where it cannot). Shared scaffolding: ``tests/e2e/matrix_kit.py`` (helpers) and ``conftest.py`` (teachers).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from matrix_kit import (
    N_TICKETS,
    assert_always_measured,
    assert_kl_measured,
    assert_kl_not_measured,
    run_cli,
    run_file,
)

pytestmark = pytest.mark.slow

_KEEP_ALL = {"drop_truncated": False, "refusal_patterns": []}


def _openai(base_url: str, model: str = "gpt-4o-mini") -> dict:
    return {"provider": "openai", "model": model, "base_url": base_url}


def test_openai_teacher_ids_less_top20_logprob_kd_across_tokenizers(
    answers_teacher, tickets: Path, tmp_path: Path
) -> None:
    run = run_cli(run_file("openai-o200k", tickets, _openai(answers_teacher.base_url)), tmp_path)
    assert run.train["method"] == "logprob_kd"
    assert run.train["byte_aligned_records"] == N_TICKETS // 2
    assert_always_measured(run)
    assert_kl_measured(run, aligned=True)
    assert run.metric(run.result["teacher"], "task_score") == 1.0  # it answers with the gold


def test_openai_reasoning_model_falls_back_to_sequence_kd(
    answers_teacher, tickets: Path, tmp_path: Path
) -> None:
    before = answers_teacher.stats()
    cfg = run_file(
        "openai-reasoning",
        tickets,
        _openai(answers_teacher.base_url, "o3-mini"),
        harvest={"temperature": 1.0, "on_missing_logprobs": "sequence_kd"},
    )
    run = run_cli(cfg, tmp_path)
    stats = answers_teacher.stats()
    sent = stats["requests"][before["received"] :]
    assert len(sent) == N_TICKETS and all(r["model"] == "o3-mini" for r in sent)
    assert not any(r["logprobs"] or r["top_logprobs"] for r in sent)  # never asked
    assert stats["refused"] == before["refused"]  # so never refused with the 400
    assert "training with sequence KD" in run.output
    assert run.train["method"] == "sequence_kd"
    assert_always_measured(run)
    assert_kl_not_measured(run)


def test_anthropic_teacher_without_logprobs_trains_sequence_kd(
    answers_teacher, tickets: Path, tmp_path: Path
) -> None:
    before = answers_teacher.stats()["received"]
    teacher = {
        "provider": "anthropic",
        "model": "claude-haiku-4-5",
        "base_url": answers_teacher.root,  # the SDK adds /v1/messages
    }
    cfg = run_file(
        "anthropic",
        tickets,
        teacher,
        policy={"authorization_reference": "test double: no Anthropic data is used"},
        harvest={"logprobs": False, "top_logprobs": 0},
        training={"method": "sequence_kd"},
    )
    run = run_cli(cfg, tmp_path)
    sent = answers_teacher.stats()["requests"][before:]
    assert len(sent) == N_TICKETS and all(r["api"] == "messages" for r in sent)
    assert run.train["method"] == "sequence_kd"
    assert_always_measured(run)
    assert_kl_not_measured(run)
    assert run.metric(run.result["teacher"], "task_score") == 1.0
    assert "anthropic:claude-haiku-4-5" in run.result["notes"][0]


def test_vllm_profile_teacher_with_token_ids(tickets: Path, tmp_path: Path) -> None:
    teacher = {
        "provider": "openai_compatible",
        "profile": "vllm",
        "model": "smollm2-135m-instruct",
        "tokenizer": "smollm2-135m-instruct",
        "launch": {"model": "smollm2-135m-instruct", "max_batch_size": 8},
        "price": {"input_per_mtok": 0, "output_per_mtok": 0},
    }
    # SmolLM2 without the prototype prompt rambles past max_tokens (and may apologise):
    # keep every answer, the row is about token ids
    run = run_cli(
        run_file("vllm", tickets, teacher, dataset={"filters": _KEEP_ALL}),
        tmp_path,
    )
    assert run.train["method"] == "logprob_kd" and run.train["byte_aligned_records"] == 0
    assert_always_measured(run)
    assert_kl_measured(run, aligned=False)


def test_full_finetune_is_served_and_scored_as_a_whole_model(
    answers_teacher, tickets: Path, tmp_path: Path
) -> None:
    cfg = run_file(
        "full-finetune",
        tickets,
        _openai(answers_teacher.base_url),
        training={"full_finetune": True, "learning_rate": 1e-5},
    )
    run = run_cli(cfg, tmp_path)
    model_dir = run.run_dir / "train" / "model"
    assert run.train["model_dir"] == str(model_dir) and run.train["adapter_dir"] is None
    assert not (model_dir / "adapter_config.json").is_file()
    assert "full fine-tune" in run.student()["kind"]
    assert_always_measured(run)
    assert_kl_measured(run, aligned=True)


def test_batch_api_run(batch_server, tickets: Path, tmp_path: Path) -> None:
    cfg = run_file(
        "batch",
        tickets,
        {"provider": "openai", "model": "gpt-4o-mini", "base_url": batch_server.openai_url},
        harvest={"use_batch_api": True, "top_logprobs": 5},
    )
    run = run_cli(cfg, tmp_path)
    assert sum(batch_server.processed.values()) == N_TICKETS
    assert batch_server.calls  # submitted, polled and downloaded through the batch endpoints
    assert_always_measured(run, teacher_latency=False)
    assert any(n.startswith("latency not measured") for n in run.result["teacher"]["notes"])
    assert_kl_measured(run, aligned=True)
