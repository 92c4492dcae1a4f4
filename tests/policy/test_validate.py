"""Malformed policy files fail with the file and the line of the problem."""

from __future__ import annotations

import textwrap

import pytest
from typer.testing import CliRunner

from apidistill.cli import app
from apidistill.errors import ConfigError
from apidistill.policy.engine import decide
from apidistill.policy.loader import builtin_policy_dir, load_policy_file, validate_dirs


def _problems(folder):
    _, problems = validate_dirs([folder])
    return problems


def test_builtin_library_is_valid():
    policies, problems = validate_dirs([builtin_policy_dir()])
    assert problems == []
    assert len(policies) >= 20


def test_bad_yaml_names_file_and_line(write_policy, make_policy):
    text = make_policy().replace("channel: api", "channel: [api")
    folder = write_policy("broken.yaml", text)
    (err,) = _problems(folder)
    assert err.file.endswith("broken.yaml") and err.line is not None
    assert "not valid YAML" in str(err)
    assert f"broken.yaml:{err.line}" in str(err)


def test_unknown_use_names_its_line(write_policy, make_policy):
    text = make_policy().replace("commercial: {decision", "hobby: {decision")
    folder = write_policy("use.yaml", text)
    (err,) = _problems(folder)
    lines = text.splitlines()
    expected = next(i for i, line in enumerate(lines, 1) if "hobby:" in line)
    assert err.line == expected
    assert "rules.hobby" in str(err) and "research_noncommercial" in str(err)


def test_unknown_decision_names_its_line(write_policy, make_policy):
    text = make_policy(decision="maybe")
    folder = write_policy("verdict.yaml", text)
    (err,) = _problems(folder)
    expected = next(i for i, line in enumerate(text.splitlines(), 1) if "maybe" in line)
    assert err.line == expected and "allow_with_obligations" in str(err)


def test_bad_date_names_its_line(write_policy, make_policy):
    text = make_policy().replace("effective_date: 2026-03-01", "effective_date: 2026-13-01")
    folder = write_policy("date.yaml", text)
    (err,) = _problems(folder)
    expected = next(i for i, line in enumerate(text.splitlines(), 1) if "2026-13-01" in line)
    assert err.line == expected and "effective_date" in str(err)


def test_unknown_key_and_duplicate_key(write_policy, make_policy):
    text = make_policy(extra="    licence: mit\n")
    (err,) = _problems(write_policy("key.yaml", text))
    assert "unknown key 'licence'" in str(err) and err.line == 9
    dup = make_policy().replace("channel: api", "channel: api\n    channel: weights")
    (err,) = _problems(write_policy("dup.yaml", dup, folder="dup"))
    assert "appears twice" in str(err) and err.line == 5


def test_overlapping_equally_specific_rules(write_policy, make_policy):
    write_policy("a.yaml", make_policy(pid="a", models='["gpt-4.1-*"]'))
    folder = write_policy("b.yaml", make_policy(pid="b", models='["gpt-4.1-*"]', decision="deny"))
    (err,) = _problems(folder)
    assert "equally specific and overlap" in str(err)
    assert "a.yaml:2" in str(err) and "b.yaml:2" in str(err)


def test_overlap_of_different_globs_with_equal_specificity(write_policy, make_policy):
    write_policy("a.yaml", make_policy(pid="a", models='["gpt-4*"]'))
    folder = write_policy("b.yaml", make_policy(pid="b", models='["gpt-?4"]'))
    assert "overlap" in str(_problems(folder)[0])


def test_more_specific_patterns_do_not_count_as_overlap(write_policy, make_policy):
    write_policy("a.yaml", make_policy(pid="a", models='["gpt-4.1-*"]'))
    folder = write_policy("b.yaml", make_policy(pid="b", models='["gpt-4.1-mini"]'))
    assert _problems(folder) == []


def test_duplicate_policy_ids(write_policy, make_policy):
    write_policy("a.yaml", make_policy(pid="same", models='["x-*"]'))
    folder = write_policy("b.yaml", make_policy(pid="same", models='["y-*"]'))
    (err,) = _problems(folder)
    assert "already used" in str(err)


def test_single_policy_file_form(tmp_path):
    text = textwrap.dedent(
        """\
        id: house
        provider: self_hosted
        channel: weights
        licenses: [acme-internal]
        document: ACME house model license
        checked_on: 2026-11-24
        rules:
          internal: {decision: allow, clause: "§2", reason: "our own model"}
        """
    )
    path = tmp_path / "house.yaml"
    path.write_text(text)
    (pol,) = load_policy_file(path)
    assert pol.id == "house" and pol.line == 1


def test_decide_raises_on_broken_user_file(write_policy, make_policy):
    folder = write_policy("broken.yaml", "policies: [\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml"):
        decide("openai", "gpt-4o", "internal", extra_dirs=[folder])


def test_validate_command_reports_file_and_line(write_policy, make_policy):
    text = make_policy().replace("effective_date: 2026-03-01", "effective_date: 03/01/2026")
    folder = write_policy("date.yaml", text)
    result = CliRunner().invoke(app, ["policy", "validate", str(folder)])
    assert result.exit_code == 1
    assert "date.yaml:7" in result.output.replace("\n", "")


def test_validate_command_accepts_builtin_library():
    result = CliRunner().invoke(app, ["policy", "validate"])
    assert result.exit_code == 0, result.output
    assert "ok" in result.output
