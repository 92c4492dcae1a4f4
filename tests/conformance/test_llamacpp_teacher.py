"""A real llama.cpp server as the teacher: llama-cpp-python's OpenAI-compatible server on the
embedded GGUF, started here on 127.0.0.1, harvested through the ``llamacpp`` profile.

Nothing in this file is a fake: the server, its sampling and its logprob payloads are
llama-cpp-python's (pinned in the dev extra). The truth the recovered token ids are checked
against is llama.cpp itself: the same GGUF loaded in this process generates the same greedy
answer, and its evaluated token ids are compared position by position.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest

from apidistill.config import HarvestConfig, TeacherConfig
from apidistill.costs.budget import Budget
from apidistill.harvest import harvest
from apidistill.records import GenerationParams, Message, TeacherRequest
from apidistill.resources import demo_data_dir
from apidistill.teachers import make_teacher
from apidistill.teachers.profiles import LLAMACPP_NEUTRAL_SAMPLING
from apidistill.testing.llamacpp_server import EMBEDDED_GGUF_MODEL, LlamaCppServer, embedded_gguf

pytestmark = pytest.mark.slow

MODEL = EMBEDDED_GGUF_MODEL  # the server's alias: the permissive policy file names it
SYSTEM = "Repeat the user's text exactly. Answer with the text only."
TEXTS = ["Sakura 抹茶", "Über", "🙂🙂🙂", "東京タワー", "Café Crème Brûlée"]
MAX_TOKENS = 16  # llama-cpp-python sorts the whole vocabulary per token for logprobs: slow


@pytest.fixture(scope="module")
def server():
    with LlamaCppServer(alias=MODEL) as srv:
        yield srv


def _teacher(base_url: str, **kw):
    cfg = TeacherConfig(
        provider="openai_compatible",
        profile="llamacpp",
        model=MODEL,
        base_url=base_url,
        tokenizer=MODEL,  # the GGUF's vocabulary: what turns the server's texts into ids
        **kw,
    )
    return make_teacher(cfg)


def _requests(texts: list[str], **extra) -> list[TeacherRequest]:
    return [
        TeacherRequest(
            messages=[Message(role="system", content=SYSTEM), Message(role="user", content=t)],
            params=GenerationParams(
                max_tokens=MAX_TOKENS,
                temperature=0.0,
                logprobs=True,
                top_logprobs=20,
                extra_body=extra,
            ),
            prompt_id=f"t{i}",
        )
        for i, t in enumerate(texts)
    ]


async def _harvest(teacher, requests, journal: Path):
    out = []
    async for r in harvest(
        requests, teacher=teacher, journal=journal, budget=Budget("0"),
        config=HarvestConfig(concurrency=1),
        progress=False,
    ):  # fmt: skip
        assert r.ok, r.error
        out.append(r)
    return sorted(out, key=lambda r: r.request.prompt_id)


def _not_argmax(completion) -> int:
    return sum(
        1 for p in completion.logprobs if p.top and p.logprob < max(t.logprob for t in p.top) - 1e-6
    )


async def test_neutral_sampling_makes_every_sampled_token_the_argmax(server, tmp_path):
    """At temperature 0 the answer is the argmax of the logprobs the server returns, as KD
    assumes; with the server's own defaults (repeat_penalty 1.1) it is not."""
    texts = ["1111 2222 1111 2222 1111 2222", "abab abab abab abab", TEXTS[0]]
    neutral = await _harvest(_teacher(server.base_url), _requests(texts), tmp_path / "a.sqlite")
    for r in neutral:
        assert r.completion.sampling == {"temperature": 0.0, **LLAMACPP_NEUTRAL_SAMPLING}
        assert r.completion.logprobs and _not_argmax(r.completion) == 0, r.completion.text
    server_defaults = {"repeat_penalty": 1.1, "top_k": 40, "min_p": 0.05}
    shaped = await _harvest(
        _teacher(server.base_url), _requests(texts, **server_defaults), tmp_path / "b.sqlite"
    )
    assert sum(_not_argmax(r.completion) for r in shaped) > 0  # what the profile now prevents
    assert shaped[0].completion.sampling["repeat_penalty"] == 1.1  # and the record says so


def _llama_cpp_ids(texts: list[str]) -> list[list[int]]:
    """The token ids llama.cpp itself generates for each request (same GGUF, same greedy
    decoding, in this process): the tokens it evaluated (``Llama.input_ids[:n_tokens]``) after
    a completion that ended on the end-of-turn token are the prompt and every answer token;
    after one cut by ``max_tokens`` the last answer token was never evaluated (-1 marks it)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(embedded_gguf()), n_ctx=2048, n_threads=2, verbose=False)
    out = []
    for t in texts:
        llm.reset()
        resp = llm.create_chat_completion(
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": t}],
            temperature=0.0,
            max_tokens=MAX_TOKENS,
            **LLAMACPP_NEUTRAL_SAMPLING,
        )
        n_prompt = resp["usage"]["prompt_tokens"]
        ids = [int(i) for i in llm.input_ids[n_prompt : llm.n_tokens]]
        finished = resp["choices"][0]["finish_reason"] == "stop"
        out.append(ids if finished else [*ids, -1])  # -1: the last token was never evaluated
    return out


async def test_cjk_accented_and_emoji_answers_keep_every_token(server, tmp_path):
    """llama-cpp-python sends partial UTF-8 tokens as "" (or shortened) with bytes null; the
    harvest recovers each position's bytes and id from the text and the GGUF vocabulary."""
    raw = httpx2.post(
        f"{server.base_url}/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Über"}],
            "temperature": 0.0, "max_tokens": MAX_TOKENS, "logprobs": True, "top_logprobs": 5,
            **LLAMACPP_NEUTRAL_SAMPLING,
        },
        timeout=120,
    ).json()  # fmt: skip
    entries = raw["choices"][0]["logprobs"]["content"]
    assert all(e["bytes"] is None for e in entries)  # the quirk, as the server sends it
    spelled = "".join(e["token"] for e in entries)
    assert spelled != raw["choices"][0]["message"]["content"]  # lossy: "" / shortened tokens

    results = await _harvest(_teacher(server.base_url), _requests(TEXTS), tmp_path / "j.sqlite")
    truth = _llama_cpp_ids(TEXTS)
    non_ascii = 0
    for r, ids in zip(results, truth, strict=True):
        c = r.completion
        lps = c.logprobs
        non_ascii += not c.text.isascii()
        assert all(p.token_id is not None and p.bytes is not None for p in lps), c.text
        assert b"".join(bytes(p.bytes) for p in lps) == c.text.encode("utf-8")
        got = [p.token_id for p in lps]
        assert got[: len(ids) - (ids[-1:] == [-1])] == [i for i in ids if i != -1], c.text
        for p in lps:  # the sampled token is in its top list under its own id, finite
            assert any(t.token_id == p.token_id for t in p.top)
            assert all(math.isfinite(t.logprob) for t in p.top)
    assert non_ascii >= 4  # the answers really exercise CJK, accents and emoji


# --------------------------------------------------------------------------- conformance row


def _run_file(tmp_path: Path, base_url: str) -> Path:
    demo = demo_data_dir()  # the demo's tickets and 1,580-token prototype prompt
    run = {
        "name": "llamacpp-teacher",
        "run_dir": str(tmp_path / "run"),
        "teacher": {
            "provider": "openai_compatible",
            "profile": "llamacpp",
            "model": MODEL,
            "base_url": base_url,
            "tokenizer": MODEL,
            "price": {"input_per_mtok": 0, "output_per_mtok": 0},
        },
        "prompts": {
            "path": str(demo / "tickets.jsonl"),
            "input_field": "text",
            "id_field": "id",
            "label_field": "label",
            "gold_field": "gold",
            "template": str(demo / "prototype_prompt.yaml"),
            "limit": 6,
        },
        "policy": {"use": "internal"},
        "budget": {"usd": 0},
        "harvest": {
            "concurrency": 2,
            "max_tokens": 32,
            "temperature": 0.0,
            "logprobs": True,
            "top_logprobs": 20,
        },
        "dataset": {
            "dedupe": "none",
            "splits": {
                "train": 0.5,
                "validation": 0.0,
                "test": 0.5,
                "seed": 0,
                "stratify_by": None,
            },
        },
        "student": {
            "model": MODEL,
            "system_prompt": "Extract the order number and product from the support ticket.",
        },
        "training": {
            "method": "logprob_kd",
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
            "kd": {"loss": "forward_kl", "temperature": 1.0, "alpha": 0.5, "top_k": 20},
            "max_steps": 2,
            "batch_size": 2,
        },
        "eval": {
            "split": "test",
            "scorer": "fields",
            "fields": ["order_id", "product"],
            "max_tokens": 48,
            "bootstrap_samples": 100,
        },
    }
    path = tmp_path / "llamacpp_run.yaml"
    path.write_text(json.dumps(run, indent=2), encoding="utf-8")  # JSON is YAML
    return path


def test_apidistill_run_with_a_real_llamacpp_teacher_reaches_a_report(server, tmp_path):
    cfg_path = _run_file(tmp_path, server.base_url)
    proc = subprocess.run(
        [sys.executable, "-m", "apidistill", "run", str(cfg_path), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=1500,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_run_reached_its_report(tmp_path / "run", cfg_path)


def assert_run_reached_its_report(run: Path, run_file: Path) -> None:
    """What the run wrote: records with every token's id and bytes, and a report whose
    metrics exist for teacher and students (measured on a 2-core machine: teacher task score
    1.0 on 3 test tickets; held-out KL 1.24 for the base model, 1.05 after 2 KD steps)."""
    from apidistill.config import load_config
    from apidistill.data.store import load_records
    from apidistill.pipeline.stages import RunContext, harvested_records

    records = harvested_records(RunContext.from_config(load_config(run_file), progress=False))
    assert len(records) == 6
    for rec in records:  # every position kept its id and bytes; the tokens spell the answer
        assert rec.metadata["sampling"] == {"temperature": 0.0, **LLAMACPP_NEUTRAL_SAMPLING}
        assert all(p.token_id is not None for p in rec.logprobs)
        assert b"".join(bytes(p.bytes) for p in rec.logprobs) == rec.completion.encode()

    report = json.loads((run / "report" / "report.json").read_text(encoding="utf-8"))
    assert isinstance(report["verdict"]["go"], bool) and report["verdict"]["checks"]
    students = report["result"]["students"]
    assert set(students) == {"base (no prompt)", "student"}, report
    n_test = len(load_records(run / "dataset", split="test"))
    assert n_test > 0 and report["result"]["n_records"] == n_test
    teacher = report["result"]["teacher"]["metrics"]
    assert teacher["task_score"]["n"] == n_test and teacher["valid_rate"]["value"] == 1.0
    kls = {}
    for name, student in students.items():
        m = student["metrics"]
        assert 0.0 <= m["agreement"]["value"] <= 1.0 and m["agreement"]["n"] == n_test, name
        kl = m["kl_nats_per_token"]  # teacher ids on every record: held-out KL is computable
        assert math.isfinite(kl["value"]) and kl["value"] >= 0.0 and kl["n"] == n_test, name
        kls[name] = kl["value"]
        assert student["usd_per_1k_requests"] is not None and student["timing"]["p50_ms"] > 0
    assert kls["student"] < kls["base (no prompt)"]  # the recovered logprobs taught it
    assert (run / "report" / "report.html").is_file()
