"""The run file's ``serve:`` section takes effect: ``apidistill serve --config run.yaml``.

Before, the section was validated and then read by nothing. Now ``--config`` serves the run's
exported student with the section's host, port, API key and caps; an option given on the
command line wins over the file.
"""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from apidistill.cli.serve import resolve_serve_options
from apidistill.config import ServeConfig
from apidistill.errors import ConfigError

KEY_ENV = "APIDISTILL_TEST_SERVE_CONFIG_KEY"
KEY = "sk-test-serve-config-0123456789"
MSGS = [{"role": "user", "content": "hi"}]

SERVE_SECTION = f"""\
serve:
  api_key_env: {KEY_ENV}
  max_n: 2
  max_tokens_cap: 16
  max_body_bytes: 2048
  max_queue: 7
  port: 0
"""


def _run_file(folder: Path, serve: str = SERVE_SECTION) -> Path:
    path = folder / "run.yaml"
    path.write_text(
        "name: served\n"
        "run_dir: runs/{name}\n"
        "teacher: {provider: openai, model: gpt-4.1-mini}\n"
        "prompts: {path: prompts.jsonl}\n"
        "policy: {use: internal}\n"
        "budget: {usd: 1}\n" + serve,
        encoding="utf-8",
    )
    return path


NOTHING_GIVEN = dict.fromkeys(
    (
        "host",
        "port",
        "api_key_env",
        "max_batch_size",
        "max_queue",
        "max_tokens_cap",
        "max_n",
        "max_body_bytes",
    )
)


def test_without_a_run_file_the_defaults_are_serve_configs() -> None:
    opts, model, name = resolve_serve_options(None, None, None, NOTHING_GIVEN)
    assert opts == ServeConfig() and model == name == "smollm2-135m-instruct"


def test_the_run_file_section_applies_and_options_win(tmp_path) -> None:
    run = _run_file(tmp_path)
    student = tmp_path / "runs" / "served" / "student"
    student.mkdir(parents=True)
    opts, model, name = resolve_serve_options(run, None, None, NOTHING_GIVEN)
    assert (opts.max_n, opts.max_tokens_cap, opts.max_queue, opts.api_key_env) == (
        2,
        16,
        7,
        KEY_ENV,
    )
    assert model == str(student) and name == "student"  # the run's exported student
    given = {**NOTHING_GIVEN, "max_n": 5, "port": 9123}
    opts, model, name = resolve_serve_options(run, "other-model", "x", given)
    assert (opts.max_n, opts.port, opts.max_tokens_cap) == (5, 9123, 16)
    assert (model, name) == ("other-model", "x")


def test_a_run_without_an_exported_student_is_a_located_error(tmp_path) -> None:
    run = _run_file(tmp_path)
    with pytest.raises(ConfigError) as exc:
        resolve_serve_options(run, None, None, NOTHING_GIVEN)
    msg = str(exc.value)
    assert "no exported student" in msg and str(run) in msg and "--model" in msg


@pytest.fixture(scope="module")
def configured(tiny_model_dir, tmp_path_factory):
    """A tiny-model server whose key and caps come only from the run file."""
    from apidistill.serve.launcher import launch_server

    run = _run_file(tmp_path_factory.mktemp("serve-config"))
    with launch_server(
        str(tiny_model_dir),
        served_model_name="tiny",
        extra_args=["--config", str(run)],
        env={KEY_ENV: KEY},
        startup_timeout=240,
    ) as srv:
        yield srv


def test_the_served_student_enforces_the_run_files_settings(configured) -> None:
    url = configured.base_url + "/chat/completions"
    auth = {"authorization": f"Bearer {KEY}"}
    body = {"model": "tiny", "messages": MSGS, "max_tokens": 2}
    assert httpx2.post(url, json=body, timeout=60).status_code == 401  # serve.api_key_env
    ok = httpx2.post(url, json={**body, "n": 2}, headers=auth, timeout=120)
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 2
    too_many = httpx2.post(url, json={**body, "n": 3}, headers=auth, timeout=60)
    assert too_many.status_code == 400 and "n" in too_many.json()["error"]["message"]
    too_long = httpx2.post(url, json={**body, "max_tokens": 17}, headers=auth, timeout=60)
    assert too_long.status_code == 400 and "max_tokens" in too_long.json()["error"]["message"]
    big = {**body, "messages": [{"role": "user", "content": "x" * 4000}]}
    assert httpx2.post(url, json=big, headers=auth, timeout=60).status_code == 413
