"""API keys never reach an artifact: journal, dataset, card, logs, exceptions, reports.

A fake key ``sk-test-<random>`` is given the way users give it (an env var named in the run
file, here one whose name does not say KEY, so name-based redaction cannot help). A run goes
policy → estimate → harvest (through 20% faults) → dataset; a second run meets a server that
answers 401 and echoes the key it was sent, as some providers do. Then every byte of both run
folders, the captured stdout/stderr and the full traceback of a raised error are searched.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from rel_helpers import cli_env, run_cli, write_run

from apidistill.data.schema import Message, TeacherRequest
from apidistill.errors import TeacherRejected
from apidistill.teachers.openai import OpenAITeacher

KEY_ENV = "REL_TEACHER_CREDENTIAL"


def _needles(key: str) -> list[bytes]:
    """The key, and its random part alone (a masked or re-encoded leak still shows it)."""
    return [key.encode(), key.removeprefix("sk-test-").encode()]


def _scan(folder: Path, key: str) -> list[str]:
    hits = []
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files, folder
    for p in files:
        data = p.read_bytes()
        hits += [f"{p}: {n!r}" for n in _needles(key) if n in data]
    return hits


class EchoAuthServer:
    """Answers 401 to every completion, quoting the bearer token it received."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(30)

    async def _deny(self, request: web.Request) -> web.Response:
        token = request.headers.get("authorization", "")[7:]
        body = {
            "error": {
                "message": f"Incorrect API key provided: {token}. You can find your API key "
                "at https://platform.example/account/api-keys.",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        }
        return web.json_response(body, status=401)

    def _main(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._deny)
        self.runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = self.runner.addresses[0][1]
        ready.set()
        self.loop.run_forever()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def echo_401() -> Iterator[EchoAuthServer]:
    srv = EchoAuthServer()
    yield srv
    srv.close()


@pytest.fixture
def key() -> str:
    return f"sk-test-{secrets.token_hex(16)}"


def test_run_folder_and_output_never_hold_the_key(fault, tmp_path: Path, key: str) -> None:
    srv = fault(latency_ms=2, fault_rate=0.2, seed=5, hang_s=3.0)
    run = write_run(
        tmp_path / "ok",
        base_url=srv.base_url,
        n_prompts=60,
        key_env=KEY_ENV,
        extra="dataset: {dedupe: exact, splits: {train: 0.8, validation: 0.0, test: 0.2}}\n",
    )
    env = cli_env(**{KEY_ENV: key})
    done = run_cli("run", str(run), "--stop-after", "dataset", "--no-progress", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    root = tmp_path / "ok" / "runs" / "rel"
    assert (root / "journal.sqlite").is_file() and (root / "dataset").is_dir()
    assert any((root / "dataset").rglob("*.parquet")) and any((root / "dataset").rglob("card*"))
    assert _scan(tmp_path / "ok", key) == []
    for stream in (done.stdout, done.stderr):
        assert not any(n.decode() in stream for n in _needles(key))


def test_401_echoing_the_key_leaks_nowhere(echo_401, tmp_path: Path, key: str) -> None:
    run = write_run(tmp_path / "denied", base_url=echo_401.base_url, n_prompts=5, key_env=KEY_ENV)
    done = run_cli("harvest", str(run), "--no-progress", env=cli_env(**{KEY_ENV: key}))
    output = done.stdout + done.stderr
    assert "401" in output or "failed" in output, output[-2000:]
    assert not any(n.decode() in output for n in _needles(key)), output[-2000:]
    root = tmp_path / "denied" / "runs" / "rel"
    assert (root / "journal.sqlite").is_file()
    assert _scan(tmp_path / "denied", key) == []


async def test_401_exception_and_its_traceback_hold_no_key(echo_401, key: str) -> None:
    teacher = OpenAITeacher("m", base_url=echo_401.base_url, api_key=key)
    req = TeacherRequest(messages=[Message(role="user", content="hi")])
    try:
        with pytest.raises(TeacherRejected) as err:
            await teacher.complete(req)
    finally:
        await teacher.aclose()
    exc = err.value
    assert exc.status == 401 and "Incorrect API key" in str(exc)
    shown = [str(exc), repr(exc), "".join(traceback.format_exception(exc)), repr(teacher)]
    for text in shown:  # the traceback prints the SDK error kept as __cause__ too
        assert not any(n.decode() in text for n in _needles(key)), text[-1500:]
