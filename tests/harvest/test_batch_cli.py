"""``apidistill batch list|status|cancel RUN.yaml`` and Ctrl-C on a Batch-API harvest
(issue 18, item 5).

A user runs ``apidistill harvest`` with ``harvest.use_batch_api: true`` against the loopback
batch server (OpenAI Batch and Anthropic Message Batches shapes), presses Ctrl-C while the
batch runs, is told that it keeps running and billing and the exact cancel command, then
lists, polls and cancels it from the CLI. Every CLI call is a child process, as a user runs
it; the server runs in the test's event loop, so the children are awaited, never blocked on.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from apidistill.errors import ConfigError
from apidistill.harvest.batch_journal import journaled_batches
from apidistill.testing.batch_server import BatchServer

N = 5
TEACHERS = {
    "openai": ("gpt-4.1-mini", "openai_url", "POST /v1/batches/{id}/cancel"),
    "anthropic": ("claude-haiku-4-5", "anthropic_url", "POST /v1/messages/batches/{id}/cancel"),
}


def _write_run(folder: Path, provider: str, base_url: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "prompts.jsonl").open("w", encoding="utf-8") as fh:
        for i in range(N):
            fh.write(json.dumps({"id": f"t{i}", "text": f"ticket {i}: order {1000 + i}"}) + "\n")
    run = folder / "run.yaml"
    run.write_text(
        "name: batch-cli\n"
        "run_dir: run\n"
        "teacher:\n"
        f"  provider: {provider}\n"
        f"  model: {TEACHERS[provider][0]}\n"
        f"  base_url: {base_url}\n"
        "  price: {input_per_mtok: 1, output_per_mtok: 4}\n"
        "prompts: {path: prompts.jsonl, id_field: id}\n"
        "policy: {use: internal, authorization_reference: 'batch CLI test: loopback fake'}\n"
        "budget: {usd: 5}\n"
        "harvest: {use_batch_api: true, max_tokens: 16, timeout_s: 10}\n",
        encoding="utf-8",
    )
    return run


def _env() -> dict[str, str]:
    return {
        **os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "250", "HF_HUB_OFFLINE": "1",
        "OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "sk-ant-test",
    }  # fmt: skip


async def _cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "apidistill", *args, env=_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _submitted(journal: Path) -> bool:
    """The harvest journaled a batch id (the journal may still be being created)."""
    try:
        return any(b.open for b in journaled_batches(journal))
    except ConfigError:
        return False


async def _wait_for(proc, cond, what: str, timeout_s: float = 90.0) -> None:
    for _ in range(int(timeout_s / 0.1)):
        if cond():
            return
        if proc.returncode is not None:  # it ended on its own: show why
            out, err = await proc.communicate()
            raise AssertionError(f"exited {proc.returncode} before {what}: {out!r} {err!r}")
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("provider", sorted(TEACHERS))
async def test_ctrl_c_says_the_batch_keeps_running_then_the_cli_lists_polls_and_cancels(
    provider, tmp_path
):
    async with BatchServer(polls_to_finish=10**6) as server:  # runs until cancelled
        run = _write_run(tmp_path, provider, getattr(server, TEACHERS[provider][1]))
        journal = tmp_path / "run" / "journal.sqlite"

        # 1. the harvest submits one batch and polls it; Ctrl-C while it runs
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "apidistill", "harvest", str(run), "--no-progress",
            env=_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await _wait_for(proc, lambda: _submitted(journal), "the batch id")
        [journaled] = journaled_batches(journal)
        batch_id = journaled.batch_id
        assert batch_id in server.jobs and journaled.n_items == N
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        text = out.decode() + err.decode()
        assert proc.returncode == 130, text
        assert "keep running — and billing — at " + provider in text
        assert batch_id in text
        assert f"apidistill batch cancel {run}" in text  # the exact command
        assert server.calls[TEACHERS[provider][2]] == 0  # nothing cancelled yet

        # 2. list: from the journal only (no call to the provider)
        calls_before = sum(server.calls.values())
        rc, out, err = await _cli("batch", "list", str(run))
        assert rc == 0, err
        assert batch_id in out and "submitted" in out and f"{N} requests" in out
        assert "1 batch(es), 1 not collected yet" in out
        assert sum(server.calls.values()) == calls_before

        # 3. status: asks the provider
        rc, out, err = await _cli("batch", "status", str(run))
        assert rc == 0, err
        assert batch_id in out and "in_progress" in out and f"total {N}" in out

        # 4. cancel: an id the run did not journal is refused, nothing is sent
        rc, out, err = await _cli("batch", "cancel", str(run), "--id", "batch_not_ours")
        assert rc == 2 and "batch_not_ours" in err and "batch list" in err
        assert server.calls[TEACHERS[provider][2]] == 0

        rc, out, err = await _cli("batch", "cancel", str(run))
        assert rc == 0, err
        assert server.calls[TEACHERS[provider][2]] == 1
        assert server.jobs[batch_id].cancel_requested
        expected = "cancelling" if provider == "openai" else "canceling"
        assert f"{batch_id}: cancelling ({expected})" in out
        assert "billed and kept" in out and f"apidistill harvest {run}" in out

        # 5. status after the cancel: the provider ended it, and says so
        rc, out, err = await _cli("batch", "status", str(run), "--id", batch_id)
        assert rc == 0, err
        assert ("cancelled" if provider == "openai" else "ended") in out
        assert "processing 0" in out


async def test_batch_commands_on_a_run_without_batches_say_so(tmp_path):
    async with BatchServer() as server:
        run = _write_run(tmp_path, "openai", server.openai_url)
        rc, _, err = await _cli("batch", "list", str(run))
        assert rc == 2 and "has no journal yet" in err and "use_batch_api" in err
        rc, _, err = await _cli("batch", "cancel", str(run))
        assert rc == 2 and "has no journal yet" in err
        assert not server.calls
