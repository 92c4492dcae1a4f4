"""API keys never reach an artifact: journal, dataset, card, logs, exceptions, reports.

A fake key ``sk-test-<random>`` is given the way users give it (an env var named in the run
file, here one whose name does not say KEY, so name-based redaction cannot help). A run goes
policy → estimate → harvest (through 20% faults) → dataset; a second run meets a server that
answers 401 and echoes the key it was sent, as some providers do. Then every byte of both run
folders, the captured stdout/stderr and the full traceback of a raised error are searched.
A third run goes through every stage (harvest → dataset → train → export → eval → report)
against a real ``apidistill serve`` teacher that demands the key, scaled down like the demo
test (``tests/examples/test_demo_rerun.py``), and every file it wrote is searched too.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from rel_helpers import cli_env, journal_errors, run_cli, write_run

from apidistill.errors import TeacherRejected
from apidistill.records import GenerationParams, Message, TeacherRequest
from apidistill.resources import demo_data_dir
from apidistill.teachers.openai import OpenAITeacher
from apidistill.testing.threaded_chat import ThreadedChatServer

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


class EchoAuthServer(ThreadedChatServer):
    """Answers 401 to every completion, quoting the bearer token it received."""

    async def chat(self, request: web.Request) -> web.Response:
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
    # 20% faults with 3 retries: a request may fail for good, and then the run exits 3
    # (issue 19); what this test checks is that no byte of the key leaks either way
    assert done.returncode in (0, 3), done.stderr[-3000:]
    assert (done.returncode == 3) == ("request(s) failed" in done.stdout + done.stderr)
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


# A key that looks like no known key format, in an env var whose name says neither KEY, TOKEN
# nor SECRET: only redaction by the configured value can keep it out of the artifacts.
PLAIN_ENV = "MY_PROVIDER_CRED"


@pytest.fixture
def plain_key() -> str:
    return f"abc123{secrets.token_hex(12)}"


def test_401_echoing_a_key_of_any_shape_leaks_nowhere(echo_401, tmp_path, plain_key) -> None:
    run = write_run(tmp_path / "plain", base_url=echo_401.base_url, n_prompts=4, key_env=PLAIN_ENV)
    done = run_cli("harvest", str(run), "--no-progress", env=cli_env(**{PLAIN_ENV: plain_key}))
    output = done.stdout + done.stderr
    root = tmp_path / "plain" / "runs" / "rel"
    errors = journal_errors(root / "journal.sqlite")
    # the server's message is kept (it says what is wrong), with the key taken out
    assert errors and all("Incorrect API key provided: [REDACTED]" in e for e in errors), errors
    assert plain_key not in output, output[-2000:]
    hits = [p for p in (tmp_path / "plain").rglob("*") if p.is_file() and plain_key.encode()
            in p.read_bytes()]  # fmt: skip
    assert hits == []


async def test_an_explicit_key_of_any_shape_is_redacted_too(echo_401, plain_key) -> None:
    """The SDK path: a key handed to the teacher directly, in no env var at all."""
    teacher = OpenAITeacher("m", base_url=echo_401.base_url, api_key=plain_key)
    req = TeacherRequest(messages=[Message(role="user", content="hi")])
    try:
        with pytest.raises(TeacherRejected) as err:
            await teacher.complete(req)
    finally:
        await teacher.aclose()
    text = "".join(traceback.format_exception(err.value))
    assert "Incorrect API key provided" in text and plain_key not in text
    body = getattr(err.value.__cause__, "body", None)  # the SDK's parsed error, kept as cause
    assert body is not None and plain_key not in json.dumps(body)
    assert "Incorrect API key provided: [REDACTED]" in json.dumps(body)


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


# --------------------------------------------------------------------------- every stage

DEMO = demo_data_dir()
TICKETS = 4
TEACHER = "smollm2-135m-instruct"

# The demo's run file (apidistill/demo_data/migrate.yaml), scaled down like
# tests/examples/test_demo_rerun.py, with the teacher reached by URL and key instead of the
# pipeline starting it: the key travels only in the env var the run file names.
_FULL_RUN = """\
name: full
run_dir: runs/{{name}}
teacher:
  provider: openai_compatible
  profile: apidistill
  model: {teacher}
  tokenizer: {teacher}
  base_url: {base_url}
  api_key_env: {key_env}
  price: {{input_per_mtok: 0, output_per_mtok: 0}}
prompts:
  path: tickets.jsonl
  input_field: text
  id_field: id
  label_field: label
  gold_field: gold
  template: prototype_prompt.yaml
policy: {{use: internal}}
budget: {{usd: 1.00}}
harvest: {{concurrency: 4, max_tokens: 24, temperature: 0.0, logprobs: true, top_logprobs: 20}}
dataset:
  dedupe: exact
  splits: {{train: 0.5, validation: 0.0, test: 0.5, seed: 0, stratify_by: null}}
student:
  model: {teacher}
  system_prompt: "Extract the order number and product from the support ticket."
training:
  method: logprob_kd
  lora: {{r: 4, alpha: 8, dropout: 0.0, target_modules: all-linear}}
  kd: {{loss: forward_kl, temperature: 1.0, alpha: 0.5, top_k: 20}}
  max_steps: 2
  save_steps: 1
  batch_size: 2
eval:
  split: test
  scorer: fields
  fields: [order_id, product]
  max_tokens: 24
  bootstrap_samples: 100
"""


def _write_full_run(folder: Path, base_url: str) -> Path:
    folder.mkdir(parents=True)
    lines = (DEMO / "tickets.jsonl").read_text(encoding="utf-8").splitlines()
    (folder / "tickets.jsonl").write_text("\n".join(lines[:TICKETS]) + "\n", encoding="utf-8")
    shutil.copy(DEMO / "prototype_prompt.yaml", folder / "prototype_prompt.yaml")
    text = _FULL_RUN.format(teacher=TEACHER, base_url=base_url, key_env=KEY_ENV)
    (folder / "run.yaml").write_text(text, encoding="utf-8")
    return folder / "run.yaml"


@pytest.mark.slow
async def test_every_artifact_of_a_full_run_is_free_of_the_key(tmp_path: Path, key: str) -> None:
    """policy → estimate → harvest → dataset → train (checkpoints) → export (model card) →
    eval → report, through the CLI, the teacher a real ``apidistill serve`` that refuses any
    other key; then every file under the folder, the CLI's output, the teacher's log and the
    error of a request the teacher refuses (400) are searched for the key."""
    from apidistill.serve.launcher import launch_server

    with launch_server(TEACHER, api_key=key, served_model_name=TEACHER) as teacher:
        run = _write_full_run(tmp_path / "full", teacher.base_url)
        done = await asyncio.to_thread(
            run_cli, "run", str(run), "--no-progress", env=cli_env(**{KEY_ENV: key}), timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]
        # a request the teacher refuses: its exception (and cause) must not carry the key
        client = OpenAITeacher(TEACHER, base_url=teacher.base_url, api_key=key)
        huge = TeacherRequest(
            messages=[Message(role="user", content="hi")],
            params=GenerationParams(max_tokens=10**6),
        )
        try:
            with pytest.raises(TeacherRejected) as err:
                await client.complete(huge)
        finally:
            await client.aclose()
        server_log = teacher.stderr_tail()

    root = tmp_path / "full" / "runs" / "full"
    summary = json.loads((root / "harvest_summary.json").read_text())
    assert summary["done"] == TICKETS and summary["failed"] == {}, summary  # the key was used
    # every stage really wrote its part
    assert (root / "journal.sqlite").is_file() and any((root / "dataset").rglob("*.parquet"))
    checkpoints = sorted((root / "train").rglob("checkpoint-*"))
    assert checkpoints and any(p.suffix == ".json" for c in checkpoints for p in c.iterdir())
    assert (root / "student" / "README.md").is_file()  # the model card
    assert (root / "report" / "report.html").is_file()
    assert any((root / "report").glob("*.json")) and any((root / "eval").rglob("*"))
    assert (root / "summary.json").is_file()

    assert _scan(tmp_path / "full", key) == []
    exc = err.value
    assert exc.status == 400, exc
    shown = [
        done.stdout,
        done.stderr,
        server_log,
        str(exc),
        repr(exc),
        "".join(traceback.format_exception(exc)),
    ]
    for text in shown:
        assert not any(n.decode() in text for n in _needles(key)), text[-1500:]


def test_redact_removes_registered_values_of_any_shape() -> None:
    from apidistill.errors import MIN_SECRET_CHARS, redact, register_secret

    key = f"Zq9/{secrets.token_hex(8)}+="  # no known prefix, URL-unsafe characters
    register_secret(key)
    register_secret("abc")  # too short to redact by value: it would garble every message
    register_secret("unused")  # a no-key placeholder, not a secret
    text = f"bad key {key}; in a URL: ?k=Zq9%2F{key[4:-2]}%2B%3D; abc stays unused"
    assert redact(text) == "bad key [REDACTED]; in a URL: ?k=[REDACTED]; abc stays unused"
    assert len("abc") < MIN_SECRET_CHARS


def test_the_writers_of_journal_summaries_and_reports_redact_configured_keys(tmp_path) -> None:
    """Redaction where the artifacts are written, not only where errors are built: a journal
    error or event, a run folder's JSON file and an eval report never hold a configured key,
    whoever composed the text."""
    from apidistill.errors import register_secret
    from apidistill.eval.report import _atomic_write
    from apidistill.pipeline.stages import _write_json
    from apidistill.storage.journal import JournalStore

    key = f"q7{secrets.token_hex(10)}"
    register_secret(key)
    store = JournalStore(tmp_path / "journal.sqlite")
    try:
        store.note("run_end", {"first_error": f"401: bad key {key}"})
    finally:
        store.close()
    _write_json(tmp_path / "summary.json", {"message": f"echoed {key}"})
    _atomic_write(tmp_path / "report.json", json.dumps({"note": key}))
    for p in tmp_path.iterdir():
        assert key.encode() not in p.read_bytes(), p
    assert "[REDACTED]" in (tmp_path / "summary.json").read_text(encoding="utf-8")
