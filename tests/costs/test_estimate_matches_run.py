"""``apidistill estimate`` on an example run file, then the real harvest of the same file:
the estimate's input tokens against what the teacher billed (issue 5's acceptance line).

- OpenAI-tokenized: examples/cross_tokenizer.yaml (gpt-4o-mini, ``o200k_base``) against the
  loopback teacher of :mod:`apidistill.testing.o200k_teacher`, which counts
  ``usage.prompt_tokens`` itself from the body it received, with ``bpe_openai`` and OpenAI's
  documented chat rule, not with apidistill's counter (else the comparison would be
  circular). Within 1%.
- Self-hosted with a known tokenizer: the demo's migrate.yaml (apidistill/demo_data), whose ``serve`` block starts
  ``apidistill serve`` on the embedded SmolLM2; the server reports the length of the prompt
  ids it actually fed the model. Exactly.

Both commands run as the user runs them (``python -m apidistill …`` in a child process); the
actual tokens are read from the run's journal (the ledger), where the harvest recorded the
``usage`` of every answer. Only the run folder and absolute data paths are changed in the
example files (the self-hosted one is also cut to a few tickets and answer tokens).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from apidistill.costs.ledger import Ledger
from apidistill.resources import demo_run_file
from apidistill.storage.journal import JournalStore
from apidistill.testing.o200k_teacher import O200kTeacherProcess

ROOT = Path(__file__).resolve().parents[2]
CROSS = ROOT / "examples" / "cross_tokenizer.yaml"
DEMO = demo_run_file()
OPENAI_KEY = "sk-test-estimate-vs-run-0123456789"


def _example_copy(example: Path, folder: Path, **harvest: Any) -> tuple[Path, dict[str, Any]]:
    """The example run file, written to ``folder`` with its run folder there and its data
    paths made absolute (so they resolve as from the example's own folder)."""
    data = yaml.safe_load(example.read_text(encoding="utf-8"))
    data["run_dir"] = str(folder / "run")
    prompts = data["prompts"]
    for key in ("path", "template"):
        if prompts.get(key):
            prompts[key] = str((example.parent / prompts[key]).resolve())
    data["harvest"].update(harvest)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path, data


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
        PYTHONUNBUFFERED="1", COLUMNS="200",
    )  # fmt: skip
    env.update(extra)
    return env


def _cli(*args: str, env: dict[str, str], timeout: float = 300) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "apidistill", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"apidistill {args[0]} exited {proc.returncode}:\n{proc.stderr}"
    return proc.stdout


def _estimate(run_file: Path, env: dict[str, str]) -> dict[str, Any]:
    return json.loads(_cli("estimate", str(run_file), "--json", env=env))


def _journal_done(run_file: Path) -> list[int]:
    """Input tokens of every answered request, as the harvest journaled them."""
    store = JournalStore(run_file.parent / "run" / "journal.sqlite", readonly=True)
    try:
        return [r.input_tokens for r in store.rows(state="done")]
    finally:
        store.close()


@pytest.fixture(scope="module")
def o200k_teacher(tmp_path_factory):
    """The loopback OpenAI teacher; answers each ticket with its gold answer."""
    data = yaml.safe_load(CROSS.read_text(encoding="utf-8"))
    tickets = (CROSS.parent / data["prompts"]["path"]).read_text(encoding="utf-8")
    rows = [json.loads(line) for line in tickets.splitlines() if line.strip()]
    answers = tmp_path_factory.mktemp("o200k") / "answers.json"
    answers.write_text(json.dumps({r["text"]: r["gold"] for r in rows}), encoding="utf-8")
    with O200kTeacherProcess(answers) as server:
        yield server


def test_estimate_matches_the_billed_input_tokens_of_an_openai_run_within_1pct(
    o200k_teacher, tmp_path
):
    run_file, data = _example_copy(CROSS, tmp_path)
    assert data["teacher"]["model"] == "gpt-4o-mini" and "base_url" not in data["teacher"]
    env = _env(OPENAI_API_KEY=OPENAI_KEY, OPENAI_BASE_URL=o200k_teacher.base_url)
    before = o200k_teacher.stats()["received"]

    est = _estimate(run_file, env)
    assert o200k_teacher.stats()["received"] == before  # the estimate sends nothing
    n = data["prompts"]["limit"]
    assert est["requests"] == n == 200
    assert est["input_method"].startswith("bpe-openai o200k_base")

    t0 = time.perf_counter()
    _cli("harvest", str(run_file), "--no-progress", env=env)
    harvest_s = time.perf_counter() - t0

    stats = o200k_teacher.stats()
    billed = stats["prompt_tokens"][before:]  # the teacher's own usage.prompt_tokens
    assert len(billed) == n  # one send per request: every answer is in the journal
    journaled = _journal_done(run_file)
    assert sorted(journaled) == sorted(billed)  # the journal holds the teacher's usage
    actual = Ledger(run_file.parent / "run" / "journal.sqlite").totals().input_tokens
    assert actual == sum(billed) > 0

    error = abs(est["input_tokens"] - actual) / actual
    print(
        f"\nopenai o200k: estimate {est['input_tokens']} vs billed {actual} input tokens "
        f"({error:.4%}) over {n} requests; harvest {harvest_s:.1f} s"
    )
    assert error <= 0.01


@pytest.mark.slow
def test_estimate_equals_the_input_tokens_of_a_self_hosted_run(tmp_path):
    """The demo's teacher (SmolLM2 via ``apidistill serve``, tokenizer named in the file)."""
    tickets, answer_tokens = 6, 2  # a short run: only the prompts are being counted
    run_file, data = _example_copy(DEMO, tmp_path, max_tokens=answer_tokens)
    data["prompts"]["limit"] = tickets
    run_file.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    assert data["teacher"]["tokenizer"] == data["teacher"]["launch"]["model"]
    env = _env()

    est = _estimate(run_file, env)
    assert est["requests"] == tickets
    assert est["input_exact"] is True and "chat template" in est["input_method"]

    t0 = time.perf_counter()
    _cli("harvest", str(run_file), "--no-progress", env=env)
    harvest_s = time.perf_counter() - t0

    journaled = _journal_done(run_file)
    assert len(journaled) == tickets
    actual = Ledger(run_file.parent / "run" / "journal.sqlite").totals().input_tokens
    assert actual == sum(journaled)
    print(
        f"\nself-hosted smollm2: estimate {est['input_tokens']} vs served {actual} input tokens "
        f"over {tickets} requests; harvest {harvest_s:.1f} s"
    )
    assert est["input_tokens"] == actual
