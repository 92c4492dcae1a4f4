"""Rejected requests, exit codes and messages through the CLI (issue 19, items 2 and 3).

A loopback OpenAI-compatible server answers 401 (OpenAI's envelope) to a wrong key and a
chat completion to the right one, counting what it received. The CLI runs as a user runs
it (``python -m apidistill`` in a child process): a bad key fails every request with exit
code 3 and the provider's message and hint on screen; fixing the key alone sends nothing
(the failures are final); ``--retry-failed rejected`` sends exactly the failed requests once;
after that nothing is ever sent again. ``run`` honours ``harvest.retry_failed`` in the run
file the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from apidistill.storage.journal import JournalStore
from apidistill.testing.provider_payloads import input_text, openai_chat_completion, openai_error
from apidistill.testing.threaded_chat import ThreadedChatServer

N = 6
GOOD, BAD = "good-key-0123456789", "stale-key-0123456789"
KEY_ENV = "EXIT_TEST_CREDENTIAL"


class KeyServer(ThreadedChatServer):
    """Answers with the right bearer token, 401 with any other; counts by input text."""

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        super().__init__()

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        text = input_text(body)
        self.received[text] += 1
        if request.headers.get("authorization") != f"Bearer {GOOD}":
            message = "Incorrect API key provided. You can find your API key in your account."
            return web.json_response(openai_error(message, code="invalid_api_key"), status=401)
        self.answered[text] += 1
        return web.json_response(openai_chat_completion(body))


@pytest.fixture
def server() -> Iterator[KeyServer]:
    srv = KeyServer()
    yield srv
    srv.close()


def write_run(folder: Path, base_url: str, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "prompts.jsonl").open("w", encoding="utf-8") as fh:
        for i in range(N):
            fh.write(json.dumps({"id": f"t{i}", "text": f"ticket {i}: where is it?"}) + "\n")
    run = folder / "run.yaml"
    run.write_text(
        "name: exit-codes\n"
        "run_dir: run\n"
        "teacher:\n"
        "  provider: openai_compatible\n"
        "  model: key-model\n"
        f"  base_url: {base_url}\n"
        f"  api_key_env: {KEY_ENV}\n"
        "  price: {input_per_mtok: 1, output_per_mtok: 2}\n"
        "prompts: {path: prompts.jsonl, id_field: id}\n"
        "policy: {use: internal, acknowledge_unknown: 'exit code test: loopback fake'}\n"
        "budget: {usd: 5}\n"
        f"harvest: {{concurrency: 2, max_tokens: 8, timeout_s: 10, max_retries: 2{extra}}}\n",
        encoding="utf-8",
    )
    return run


def cli(*args: str, key: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, KEY_ENV: key, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "apidistill", *args, "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def states(journal: Path) -> Counter[str]:
    store = JournalStore(journal, readonly=True)
    try:
        return Counter(r.state for r in store.rows())
    finally:
        store.close()


def test_bad_key_exits_3_with_the_message_then_retry_failed_sends_each_once(server, tmp_path):
    run = write_run(tmp_path, server.base_url)
    journal = tmp_path / "run" / "journal.sqlite"

    # 1. a stale key: every request fails; exit 3, the provider's message and the fix shown
    first = cli("harvest", str(run), key=BAD)
    out = first.stdout + first.stderr
    assert first.returncode == 3, out[-3000:]
    assert "failed 6 (rejected 6)" in out
    assert "answered 401" in out and "Incorrect API key provided" in out  # provider's text
    assert "check the API key in the env var" in out  # the hint
    assert "--retry-failed rejected" in out
    assert sum(server.received.values()) == N and not server.answered
    summary = json.loads((tmp_path / "run" / "harvest_summary.json").read_text())
    assert summary["failed"] == {"rejected": N}
    assert "Incorrect API key" in summary["first_errors"]["rejected"][0]

    # 2. the key fixed, nothing asked: the failures are final, nothing is sent, still exit 3
    second = cli("harvest", str(run), key=GOOD)
    assert second.returncode == 3, second.stderr[-2000:]
    assert sum(server.received.values()) == N

    # 3. asked: exactly the failed requests go out once; exit 0
    third = cli("harvest", str(run), "--retry-failed", "rejected", key=GOOD)
    assert third.returncode == 0, (third.stdout + third.stderr)[-3000:]
    assert "sent again 6 request(s) that had failed before" in third.stdout + third.stderr
    assert states(journal) == {"done": N}
    assert len(server.answered) == N and set(server.answered.values()) == {1}

    # 4. nothing failed any more: even "all" sends nothing (answers are never re-bought)
    fourth = cli("harvest", str(run), "--retry-failed", "all,at_risk", key=GOOD)
    assert fourth.returncode == 0, fourth.stderr[-2000:]
    assert set(server.received.values()) == {2} and set(server.answered.values()) == {1}


def test_unknown_reason_is_refused_before_anything_is_sent(server, tmp_path):
    run = write_run(tmp_path, server.base_url)
    done = cli("harvest", str(run), "--retry-failed", "rejectd", key=GOOD)
    assert done.returncode == 2
    assert "--retry-failed" in done.stderr and "unknown failure reason" in done.stderr
    assert not server.received


def test_run_file_retry_failed_setting_and_run_exit_code(server, tmp_path):
    run = write_run(tmp_path, server.base_url)
    first = cli("run", str(run), "--stop-after", "harvest", key=BAD)
    assert first.returncode == 3, (first.stdout + first.stderr)[-3000:]
    assert "Incorrect API key provided" in first.stdout + first.stderr
    again = write_run(tmp_path, server.base_url, extra=", retry_failed: [rejected]")
    second = cli("run", str(again), "--stop-after", "harvest", key=GOOD)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    assert states(tmp_path / "run" / "journal.sqlite") == {"done": N}
    assert set(server.answered.values()) == {1} and len(server.answered) == N
