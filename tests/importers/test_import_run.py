"""Imported data in a run (prompts.imports): it reaches the dataset beside harvested records,
with the terms decisions in the card; harvest.rescore re-harvests logprobs for imported
answers from the same teacher (journal, budget, estimate row) and merges them by the rule of
docs/import.md#rescore."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from apidistill.config import load_config
from apidistill.data.store import iter_provenance, load_records
from apidistill.pipeline.run import run_pipeline
from apidistill.policy.provenance import dataset_terms
from apidistill.testing import provider_payloads as pp

from .store_server import StoreServer

FT = "ft:gpt-4.1-mini-2025-04-14:acme::B1x2y3"
KEY_ENV = "APIDISTILL_IMPORT_TEST_KEY"


@pytest.fixture
def teacher() -> Iterator[StoreServer]:
    s = StoreServer()
    os.environ[KEY_ENV] = s.key
    yield s
    os.environ.pop(KEY_ENV, None)
    s.close()


def _answer(text: str) -> str:
    """What the loopback teacher answers to this one user turn (a pure function of it)."""
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": 16}
    return pp.openai_chat_completion(body)["choices"][0]["message"]["content"]


def _write_run(tmp: Path, server: StoreServer, *, mismatch: str = "keep_imported") -> Path:
    rows = []
    for i in range(6):
        q = f"ticket number {i}"
        same = i % 2 == 0  # even: the fine-tune repeats its answer; odd: it answers differently
        rows.append({"id": f"r{i}", "messages": [{"role": "user", "content": q}],
                     "completion": _answer(q) if same else f"imported answer {i}"})  # fmt: skip
    rows.append({"id": "other", "messages": [{"role": "user", "content": "from gpt-4o"}],
                 "completion": "x"})  # fmt: skip
    chat = tmp / "chat.jsonl"
    chat.write_text("".join(json.dumps(r) + "\n" for r in rows[:6]), encoding="utf-8")
    other = tmp / "other.jsonl"
    other.write_text(json.dumps(rows[6]) + "\n", encoding="utf-8")
    run = tmp / "run.yaml"
    run.write_text(
        f"""
name: imp
run_dir: {tmp}/runs/{{name}}
teacher:
  provider: openai
  model: "{FT}"
  base_url: {server.base_url}
  api_key_env: {KEY_ENV}
  price: {{input_per_mtok: 0.80, output_per_mtok: 3.20, cached_input_per_mtok: 0.20}}
prompts:
  imports:
    - {{kind: chat, path: chat.jsonl, provider: openai, model: "{FT}"}}
    - {{kind: chat, path: other.jsonl, provider: openai, model: gpt-4o}}
policy: {{use: internal}}
budget: {{usd: 1.0}}
harvest:
  concurrency: 2
  max_tokens: 16
  logprobs: true
  top_logprobs: 5
  rescore: true
  rescore_on_mismatch: {mismatch}
dataset:
  dedupe: none
  splits: {{train: 0.5, validation: 0.0, test: 0.5, stratify_by: null}}
  top_k_store: 5
""",
        encoding="utf-8",
    )
    return run


def _by_id(folder: Path) -> dict[str, object]:
    return {r.id: r for r in load_records(folder)}


def test_imports_reach_the_dataset_and_rescore_merges(teacher: StoreServer, tmp_path: Path) -> None:
    cfg = load_config(_write_run(tmp_path, teacher))
    run_pipeline(cfg, progress=False, stop_after="dataset")
    # one re-score request per imported answer of the teacher's own model, none for gpt-4o's
    assert len(teacher.chat_bodies) == 6
    assert all(
        b["logprobs"] and b["top_logprobs"] == 5 and b["model"] == FT for b in teacher.chat_bodies
    )
    recs = _by_id(cfg.run_path / "dataset")
    assert set(recs) == {f"chat-r{i}" for i in range(6)} | {"chat-other"}
    for i in range(6):
        r = recs[f"chat-r{i}"]
        result = r.metadata["rescore"]["result"]  # type: ignore[attr-defined]
        if i % 2 == 0:
            assert result == "match" and r.logprobs  # type: ignore[attr-defined]
            assert "".join(t.token for t in r.logprobs) == r.completion  # type: ignore[attr-defined]
        else:
            assert result == "mismatch" and not r.logprobs  # type: ignore[attr-defined]
            assert r.completion == f"imported answer {i}"  # type: ignore[attr-defined]
        assert r.metadata["rescore"]["cost_usd"] is not None  # type: ignore[attr-defined]
    assert "rescore" not in recs["chat-other"].metadata  # type: ignore[attr-defined]
    # the card keeps the decisions of both models, so the terms resolve before training
    terms = dataset_terms(cfg.run_path / "dataset", iter_provenance(cfg.run_path / "dataset"))
    assert {d.model for d in terms.decisions} == {FT, "gpt-4o"}
    # a second run pays for nothing again: the journal answers every re-score request
    run_pipeline(load_config(cfg.source), progress=False, stop_after="dataset")
    assert len(teacher.chat_bodies) == 6


def test_rescore_regenerated_replaces_a_mismatch(teacher: StoreServer, tmp_path: Path) -> None:
    cfg = load_config(_write_run(tmp_path, teacher, mismatch="regenerated"))
    run_pipeline(cfg, progress=False, stop_after="dataset")
    r = _by_id(cfg.run_path / "dataset")["chat-r1"]
    assert r.completion == _answer("ticket number 1") and r.logprobs  # type: ignore[attr-defined]
    assert r.metadata["imported_completion"] == "imported answer 1"  # type: ignore[attr-defined]
    assert r.metadata["rescore"]["result"] == "regenerated"  # type: ignore[attr-defined]


def test_estimate_shows_the_rescore_row(teacher: StoreServer, tmp_path: Path) -> None:
    run = _write_run(tmp_path, teacher)
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "apidistill", "estimate", str(run)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "re-score imported" in proc.stdout and "6 requests" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "apidistill", "estimate", str(run), "--json"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    est = json.loads(proc.stdout)
    assert est["requests"] == est["rescore_requests"] == 6
    assert 0 < float(est["rescore_usd_max"]) <= float(est["usd_max"])
    assert teacher.chat_bodies == []  # the estimate sent nothing to the teacher


def test_sdk_and_harvest_command_import_too(teacher: StoreServer, tmp_path: Path) -> None:
    """``apidistill harvest`` and ``Distiller.harvest`` read prompts.imports and re-score them
    like ``apidistill run``: one answer per imported input of the teacher's model."""
    from apidistill.sdk import Distiller

    run = _write_run(tmp_path, teacher)
    d = Distiller.from_yaml(run, progress=False)
    outcome = d.harvest()
    assert outcome.records == 6 and len(teacher.chat_bodies) == 6
    d.build_dataset()
    assert len(load_records(d.run_dir / "dataset")) == 7
    proc = subprocess.run(
        [sys.executable, "-m", "apidistill", "harvest", str(run), "--no-progress"],
        capture_output=True, text=True, env=dict(os.environ), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "import: 7 records" in proc.stdout + proc.stderr
    assert len(teacher.chat_bodies) == 6  # answered from the journal


def test_stored_completions_gone_since_an_earlier_run_are_kept(
    teacher: StoreServer, tmp_path: Path
) -> None:
    """A stored completion deleted (or expired) after a run imported it stays in the run."""
    teacher.add_stored("chatcmpl-a", FT, [{"role": "user", "content": "stored a"}], "A")
    teacher.add_stored("chatcmpl-b", FT, [{"role": "user", "content": "stored b"}], "B")
    run = tmp_path / "run.yaml"
    run.write_text(
        f"""
name: stored
run_dir: {tmp_path}/runs/{{name}}
teacher: {{provider: openai, model: "{FT}", base_url: {teacher.base_url}, api_key_env: {KEY_ENV},
          price: {{input_per_mtok: 0.80, output_per_mtok: 3.20}}}}
prompts:
  imports:
    - {{kind: openai_stored, model: "{FT}", base_url: {teacher.base_url}, api_key_env: {KEY_ENV}}}
policy: {{use: internal}}
budget: {{usd: 1.0}}
dataset: {{dedupe: none, splits: {{train: 0.5, validation: 0.0, test: 0.5, stratify_by: null}}}}
""",
        encoding="utf-8",
    )
    run_pipeline(load_config(run), progress=False, stop_after="dataset")
    del teacher.stored[0]  # chatcmpl-a is gone from the API
    cfg = load_config(run)
    run_pipeline(cfg, progress=False, stop_after="dataset")
    ids = {r.id for r in load_records(cfg.run_path / "dataset")}
    assert ids == {"openai_stored-chatcmpl-a", "openai_stored-chatcmpl-b"}
    dataset = cfg.run_path / "dataset"
    assert dataset_terms(dataset, iter_provenance(dataset)).decisions  # their terms resolve


def test_skip_invalid_flag_reaches_the_imports(teacher: StoreServer, tmp_path: Path) -> None:
    """A bad imported line stops ``apidistill run`` with file:line; --skip-invalid skips it."""
    run = _write_run(tmp_path, teacher)
    with (tmp_path / "chat.jsonl").open("a", encoding="utf-8") as fh:
        fh.write('{"messages": "not a list"}\n')
    env = dict(os.environ)
    args = [sys.executable, "-m", "apidistill", "run", str(run), "--stop-after", "dataset",
            "--no-progress"]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert f"{tmp_path / 'chat.jsonl'}:7" in " ".join(proc.stderr.split())
    assert teacher.chat_bodies == []  # stopped before anything was sent
    proc = subprocess.run([*args, "--skip-invalid"], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "import: skipped 1 invalid row" in proc.stdout + proc.stderr
