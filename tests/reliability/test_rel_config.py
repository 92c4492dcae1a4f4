"""A run file and flags mean what they say (issue 19 item 6), checked through the CLI against
the fault server, whose counters say whether anything was sent:

- a key given twice in the run file is refused with both lines (a second ``budget:`` used to
  raise the cap silently);
- ``--max-requests 0`` sends nothing (it used to mean "no limit");
- a ``{question}`` placeholder the prompt template never fills is refused before the first
  request (it used to reach the teacher literally, in every paid request);
- a ``student.model`` that does not exist is found before the harvest pays;
- a negative ``--output-tokens`` is refused (it printed a negative cost).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rel_helpers import cli_env, run_cli, write_run

from apidistill.config import parse_config
from apidistill.errors import ConfigError
from apidistill.pipeline.template import load_template


def _received(srv) -> int:
    return srv.stats()["received"]


# --------------------------------------------------------------------------- duplicate keys


def test_a_second_budget_section_is_refused_with_both_lines(fault, tmp_path: Path) -> None:
    srv = fault()
    run = write_run(tmp_path, base_url=srv.base_url, n_prompts=3, extra="budget:\n  usd: 500\n")
    text = run.read_text(encoding="utf-8")
    first = text.splitlines().index("budget: {usd: 10}") + 1
    second = text.splitlines().index("budget:") + 1
    done = run_cli("harvest", str(run), "--no-progress")
    assert done.returncode == 2, done.stdout + done.stderr
    out = " ".join((done.stdout + done.stderr).split())
    assert f"{run}:{second}: budget: key 'budget' appears twice, on lines {first} and {second}" in (
        out
    )
    assert _received(srv) == 0


def test_a_repeated_nested_key_names_its_path_and_lines() -> None:
    text = "harvest:\n  concurrency: 2\n  rpm: 3\n  concurrency: 64\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text, file="run.yaml")
    assert err.value.key == "harvest.concurrency" and err.value.line == 4
    assert "lines 2 and 4" in err.value.message


def test_yaml_merge_keys_still_override() -> None:
    """``<<: *anchor`` then the same key is YAML's override, not a repeat."""
    text = (
        "defaults: &d {usd: 1}\n"
        "teacher: {provider: openai, model: gpt-4.1-mini}\n"
        "prompts: {path: p.jsonl}\n"
        "policy: {use: internal}\n"
        "budget:\n  <<: *d\n  usd: 2\n"
    )
    with pytest.raises(ConfigError, match="unknown key 'defaults'"):
        parse_config(text)  # the anchor's own section is still unknown: no duplicate error


def test_a_repeated_key_in_the_prompt_template_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "prompt.yaml"
    f.write_text("system: a\ntemplate: '{input}'\nsystem: b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"prompt.yaml:3: system: .*lines 1 and 3"):
        load_template(f)


# --------------------------------------------------------------------------- --max-requests 0


def test_max_requests_zero_sends_nothing(fault, tmp_path: Path) -> None:
    srv = fault()
    run = write_run(tmp_path, base_url=srv.base_url, n_prompts=4)
    done = run_cli("harvest", str(run), "--max-requests", "0", "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _received(srv) == 0
    # and the journal still answers what it holds: a run with answers, then 0, re-sends none
    assert run_cli("harvest", str(run), "--no-progress").returncode == 0
    sent = _received(srv)
    assert sent == 4
    again = run_cli("harvest", str(run), "--max-requests", "0", "--no-progress")
    assert again.returncode == 0 and _received(srv) == sent, again.stdout + again.stderr


def test_max_requests_zero_in_the_run_file_and_negative_on_the_cli(fault, tmp_path) -> None:
    srv = fault()
    run = write_run(tmp_path, base_url=srv.base_url, n_prompts=3)
    text = run.read_text(encoding="utf-8").replace(
        "max_retries: 3}", "max_retries: 3, max_requests: 0}"
    )
    run.write_text(text, encoding="utf-8")
    done = run_cli("harvest", str(run), "--no-progress")
    assert done.returncode == 0 and _received(srv) == 0, done.stdout + done.stderr
    bad = run_cli("harvest", str(run), "--max-requests", "-1", "--no-progress")
    assert bad.returncode == 2 and "--max-requests" in bad.stderr and _received(srv) == 0


# --------------------------------------------------------------------------- placeholders


_TEMPLATE = """\
system: |
  You extract the order number.
  Context: {context}
template: "{input}"
"""


def test_an_undefined_placeholder_is_refused_before_any_request(fault, tmp_path: Path) -> None:
    srv = fault()
    run = write_run(tmp_path, base_url=srv.base_url, n_prompts=3)
    (tmp_path / "prompt.yaml").write_text(_TEMPLATE, encoding="utf-8")
    text = run.read_text(encoding="utf-8").replace(
        "prompts: {path: prompts.jsonl,", "prompts: {path: prompts.jsonl, template: prompt.yaml,"
    )
    run.write_text(text, encoding="utf-8")
    done = run_cli("run", str(run), "--stop-after", "harvest", "--no-progress")
    assert done.returncode == 2, done.stdout + done.stderr
    out = " ".join((done.stdout + done.stderr).split())
    assert "prompt.yaml:3: system: placeholder {context}" in out, out
    assert _received(srv) == 0


@pytest.mark.parametrize(
    ("body", "line", "placeholder"),
    [
        ("template: 'Q: {question}\\nA: {input}'\n", 1, "{question}"),
        ("shots:\n  - user: 'about {product}'\n    assistant: ok\ntemplate: '{input}'\n", 2,
         "{product}"),
    ],
)  # fmt: skip
def test_placeholders_the_template_does_not_fill(tmp_path, body, line, placeholder) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_template(f)
    assert err.value.line == line and placeholder in err.value.message


def test_json_braces_and_the_input_placeholder_are_fine(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(
        'system: \'Answer as {"order_id": 1, "product": "x"}.\'\n'
        "shots:\n  - user: hi\n    assistant: '{\"order_id\": 2}'\n"
        "template: 'Ticket: {input}'\n",
        encoding="utf-8",
    )
    tpl = load_template(f)
    assert tpl.render("t")[-1].content == "Ticket: t"


# --------------------------------------------------------------------------- student.model


@pytest.mark.parametrize("command", ["run", "harvest"])
def test_a_missing_student_model_is_found_before_paying(fault, tmp_path, command) -> None:
    srv = fault()
    missing = tmp_path / "models" / "my-student"
    run = write_run(
        tmp_path, base_url=srv.base_url, n_prompts=3, extra=f"student: {{model: {missing}}}\n"
    )
    done = run_cli(command, str(run), "--no-progress")
    assert done.returncode == 2, done.stdout + done.stderr
    out = " ".join((done.stdout + done.stderr).split())
    assert "student.model: the student model cannot be loaded" in out and "nothing was sent" in out
    assert _received(srv) == 0


def test_a_folder_without_a_model_config_is_not_a_student(fault, tmp_path: Path) -> None:
    srv = fault()
    folder = tmp_path / "half"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hello": 1}), encoding="utf-8")
    run = write_run(
        tmp_path, base_url=srv.base_url, n_prompts=3, extra=f"student: {{model: {folder}}}\n"
    )
    done = run_cli("run", str(run), "--no-progress")
    assert done.returncode == 2 and "model_type" in done.stdout + done.stderr
    assert _received(srv) == 0


# --------------------------------------------------------------------------- --output-tokens


def test_negative_output_tokens_are_refused(fault, tmp_path: Path) -> None:
    run = write_run(tmp_path, base_url=fault().base_url, n_prompts=3)
    done = run_cli("estimate", str(run), "--output-tokens", "-50", "--json", env=cli_env())
    assert done.returncode == 2, done.stdout
    assert "--output-tokens" in done.stderr and ">= 0" in done.stderr and not done.stdout
    ok = run_cli("estimate", str(run), "--output-tokens", "0", "--json")
    assert ok.returncode == 0, ok.stderr
    est = json.loads(ok.stdout)
    assert all(not isinstance(v, int | float) or v >= 0 for v in est.values()), est
