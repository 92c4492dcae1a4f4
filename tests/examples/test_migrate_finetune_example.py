"""examples/migrate_finetune.yaml: its policy check states OpenAI's terms with the clause, and
the run reads the fine-tune's training file (Files API) and stored completions, re-scores them
with top-20 logprobs from the fine-tuned model, and builds the dataset — against a loopback
OpenAI server that follows the API reference (tests/importers/store_server.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from apidistill.config import load_config
from apidistill.data.store import load_records
from apidistill.pipeline.run import run_pipeline
from tests.importers.store_server import StoreServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "migrate_finetune.yaml"
FT = "ft:gpt-4.1-mini-2025-04-14:YOUR_ORG::YOUR_JOB"


def _copy(tmp_path: Path) -> Path:
    (tmp_path / "examples").mkdir()
    return Path(shutil.copy(EXAMPLE, tmp_path / "examples" / EXAMPLE.name))


def test_policy_check_states_openai_terms_with_the_clause(tmp_path: Path) -> None:
    run = _copy(tmp_path)
    env = {**os.environ, "OPENAI_API_KEY": "sk-never-used", "COLUMNS": "250"}
    proc = subprocess.run(
        [sys.executable, "-m", "apidistill", "run", str(run), "--stop-after", "policy", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = " ".join((proc.stdout + proc.stderr).split())  # the stage lines go to stderr
    assert "allow_with_obligations for use 'internal'" in out
    assert "OpenAI Services Agreement, effective 2026-01-01, §3.3(e), exception (a)" in out
    # the decision the run recorded (and the card will carry) has the clause too
    import json

    decision = json.loads((tmp_path / "runs" / "migrate-finetune" / "policy.json").read_text())
    assert decision["clause"] == "§3.3(e), exception (a)" and decision["model"] == FT


@pytest.fixture
def openai_api(monkeypatch: pytest.MonkeyPatch):
    server = StoreServer()
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", server.key)
    yield server
    server.close()


def test_example_runs_to_the_dataset_with_top20_logprobs_from_the_finetune(
    tmp_path: Path, openai_api: StoreServer
) -> None:
    import hashlib

    from apidistill.testing import provider_payloads as pp

    def ticket(kind: str, i: int) -> str:  # distinct texts: the example's near-dedupe keeps each
        words = hashlib.sha256(f"{kind}{i}".encode()).hexdigest()
        return f"{kind} ticket: " + " ".join(words[j : j + 5] for j in range(0, 60, 5))

    def answer(q: str) -> str:
        body = {"messages": [{"role": "system", "content": "Support bot."},
                             {"role": "user", "content": q}], "max_tokens": 256}  # fmt: skip
        return pp.openai_chat_completion(body)["choices"][0]["message"]["content"]

    lines = []
    for i in range(6):
        q = ticket("training", i)
        a = answer(q) if i < 4 else f"hand-written answer {i}"  # 4 the fine-tune repeats
        lines.append(
            '{"messages": [{"role": "system", "content": "Support bot."}, '
            f'{{"role": "user", "content": "{q}"}}, {{"role": "assistant", "content": "{a}"}}]}}\n'
        )
    openai_api.files["file-YOUR_TRAINING_FILE"] = "".join(lines).encode()
    for i in range(5):
        q = ticket("production", i)
        openai_api.add_stored(
            f"chatcmpl-p{i}", FT,
            [{"role": "system", "content": "Support bot."}, {"role": "user", "content": q}],
            answer(q), metadata={"app": "support-bot"},
        )  # fmt: skip
    openai_api.add_stored("chatcmpl-x", FT, [{"role": "user", "content": "q"}], "a",
                          metadata={"app": "other"})  # fmt: skip

    cfg = load_config(_copy(tmp_path))
    run_pipeline(cfg, progress=False, stop_after="dataset")
    sent = openai_api.chat_bodies
    assert len(sent) == 11  # 6 training-file turns + 5 stored completions of the support-bot app
    assert {b["model"] for b in sent} == {FT}
    assert all(b["logprobs"] is True and b["top_logprobs"] == 20 for b in sent)
    recs = load_records(cfg.run_path / "dataset")
    assert len(recs) == 11
    sources = {r.metadata["import"]["source"] for r in recs}
    assert sources == {"openai_finetune", "openai_stored"}
    with_lp = [r for r in recs if r.logprobs]
    assert len(with_lp) == 9  # all but the two hand-written answers the fine-tune does not repeat
    assert all(len(t.top) == 20 for r in with_lp for t in r.logprobs or [])
    assert all(r.provenance and r.provenance.model == FT for r in recs)


@pytest.mark.slow
def test_example_trains_evaluates_and_serves_the_student(
    tmp_path: Path, openai_api: StoreServer
) -> None:
    """The whole documented run, scaled down: imports → re-score (top-20 from the fine-tune)
    → logprob KD of SmolLM2 (3 steps) → evaluation against the fine-tune's answers → one call
    through the official openai SDK to the served student (the drop-in switch)."""
    import json

    from apidistill.testing import provider_payloads as pp

    lines = []
    for i in range(8):
        q = f"Ticket {i}: order {5000 + i} of item {chr(65 + i)} arrived {'late' if i % 2 else 'broken'}"
        body = {"messages": [{"role": "user", "content": q}], "max_tokens": 256}
        a = pp.openai_chat_completion(body)["choices"][0]["message"]["content"]
        lines.append(json.dumps({"messages": [{"role": "user", "content": q},
                                              {"role": "assistant", "content": a}]}) + "\n")  # fmt: skip
    openai_api.files["file-YOUR_TRAINING_FILE"] = "".join(lines).encode()
    cfg = load_config(_copy(tmp_path))
    cfg.training.max_steps, cfg.training.batch_size = 3, 2
    cfg.eval.max_tokens = 16
    summary = run_pipeline(cfg, progress=False)
    result = json.loads((cfg.run_path / "train" / "train_result.json").read_text())
    assert result["method"] == "logprob_kd" and result["steps"] == 3
    report = json.loads((cfg.run_path / "report" / "report.json").read_text())
    student = report["result"]["students"]["student"]
    assert "agreement" in student["metrics"] and student["kl_coverage"] > 0
    assert isinstance(summary.numbers["drop_in_answer"], str)
    assert len(openai_api.chat_bodies) == 8  # every imported answer re-scored once
