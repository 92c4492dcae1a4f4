from __future__ import annotations

import textwrap

import pytest

from apidistill.config import load_config, parse_config
from apidistill.errors import ConfigError

GOOD = textwrap.dedent(
    """\
    name: demo
    teacher:
      provider: openai_compatible
      base_url: http://127.0.0.1:9/v1
      model: smollm2-135m-instruct
    prompts:
      path: tickets.jsonl
    policy:
      use: internal
    budget:
      usd: 1.5
    harvest:
      logprobs: true
      top_logprobs: 20
    training:
      method: logprob_kd
    """
)


def test_good_config_parses_and_resolves_paths(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text(GOOD)
    cfg = load_config(f)
    assert cfg.harvest.top_logprobs == 20
    assert cfg.resolve_path(cfg.prompts.path) == (tmp_path / "tickets.jsonl").resolve()
    assert cfg.run_path == (tmp_path / "runs" / "demo").resolve()
    assert str(cfg.budget.usd) == "1.5"


def test_unknown_key_names_file_line_and_key():
    bad = GOOD.replace("  top_logprobs: 20", "  top_logprob: 20")
    with pytest.raises(ConfigError) as ei:
        parse_config(bad, file="run.yaml")
    msg = str(ei.value)
    assert "run.yaml:14" in msg
    assert "harvest.top_logprob" in msg
    assert "unknown key" in msg


def test_bad_enum_lists_allowed_values():
    bad = GOOD.replace("use: internal", "use: everything")
    with pytest.raises(ConfigError) as ei:
        parse_config(bad, file="run.yaml")
    msg = str(ei.value)
    assert "policy.use" in msg and "run.yaml:9" in msg
    assert "'internal'" in msg and "'commercial'" in msg and "everything" in msg


def test_logprob_kd_without_logprobs_is_rejected():
    bad = GOOD.replace("  logprobs: true\n  top_logprobs: 20\n", "  logprobs: false\n")
    with pytest.raises(ConfigError, match=r"logprob_kd needs harvest\.logprobs"):
        parse_config(bad, file="run.yaml")


def test_invalid_yaml_reports_line():
    with pytest.raises(ConfigError) as ei:
        parse_config("name: x\nteacher: [unclosed\n", file="r.yaml")
    assert "r.yaml:" in str(ei.value) and "not valid YAML" in str(ei.value)


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


def test_the_old_teacher_serve_key_is_refused_with_its_new_name():
    """``teacher.serve`` (start ``apidistill serve`` as the teacher) is ``teacher.launch`` now:
    the old name read like the top-level ``serve:`` section, the student server's."""
    old = GOOD.replace(
        "  model: smollm2-135m-instruct\n",
        "  model: smollm2-135m-instruct\n  serve:\n    model: smollm2-135m-instruct\n",
        1,
    )
    with pytest.raises(ConfigError) as ei:
        parse_config(old, file="run.yaml")
    msg = str(ei.value)
    assert "run.yaml:6" in msg and "teacher.serve" in msg and "teacher.launch" in msg
    new = old.replace("  serve:\n", "  launch:\n")
    cfg = parse_config(new, file="run.yaml")
    assert cfg.teacher.launch is not None and cfg.teacher.launch.model == "smollm2-135m-instruct"
    assert not hasattr(cfg.teacher, "serve")  # code that reads the old name fails loudly
    assert cfg.serve.port == parse_config(GOOD, file="run.yaml").serve.port  # student server
