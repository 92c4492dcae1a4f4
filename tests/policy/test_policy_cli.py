"""``apidistill policy check / list`` output and exit codes."""

from __future__ import annotations

from typer.testing import CliRunner

from apidistill.cli import app

runner = CliRunner()


def _check(*args: str):
    return runner.invoke(app, ["policy", "check", *args], env={"COLUMNS": "200"})


def test_check_allowed_exits_zero_with_citation():
    r = _check("--teacher", "deepseek", "--model", "deepseek-chat", "--use", "commercial")
    assert r.exit_code == 0, r.output
    assert "allow" in r.output and "DeepSeek Open Platform Terms" in r.output
    assert "not legal advice" in r.output


def test_check_not_allowed_exits_one():
    r = _check("--teacher", "openai", "--model", "gpt-4.1-mini", "--use", "commercial")
    assert r.exit_code == 1
    assert "requires_authorization" in r.output and "§3.3(e)" in r.output
    assert "authorization_reference" in r.output


def test_check_obligations_and_channel_option():
    r = _check(
        "--teacher",
        "meta",
        "--model",
        "Llama-3.1-8B-Instruct",
        "--use",
        "redistribute",
        "--channel",
        "weights",
    )
    assert r.exit_code == 0
    assert 'begin with "Llama"' in r.output and "Built with Llama" in r.output


def test_check_unknown_exits_one_and_bad_use_is_an_error():
    r = _check("--teacher", "acme", "--model", "x", "--use", "internal")
    assert r.exit_code == 1 and "acknowledge_unknown" in r.output
    r = _check("--teacher", "openai", "--model", "gpt-4o", "--use", "hobby")
    assert r.exit_code != 0 and isinstance(r.exception, Exception)


def test_list_shows_every_builtin_policy():
    r = runner.invoke(app, ["policy", "list"], env={"COLUMNS": "250"})
    assert r.exit_code == 0
    for pid in ("openai-api", "anthropic-api", "meta-llama31-weights", "apache-2.0-weights"):
        assert pid in r.output
