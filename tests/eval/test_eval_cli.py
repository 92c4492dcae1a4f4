"""CLI glue of the eval stage: ``apidistill report`` and the thin ``apidistill eval``."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from apidistill.cli import app
from apidistill.errors import ConfigError, EvalError
from apidistill.eval.commands import eval_cmd

RUN_FILE = """
teacher: {provider: openai_compatible, model: m, base_url: "http://127.0.0.1:9/v1"}
prompts: {path: prompts.jsonl}
policy: {use: internal}
budget: {usd: 1}
"""


def test_report_cli_prints_the_path(tmp_path: Path) -> None:
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.html").write_text("<html></html>")
    out = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert out.exit_code == 0
    assert out.stdout.strip() == str((tmp_path / "report" / "report.html").resolve())


def test_report_cli_without_a_report_is_an_eval_error(tmp_path: Path) -> None:
    out = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert isinstance(out.exception, EvalError)
    assert "no report in this run directory yet" in str(out.exception)


def test_eval_cmd_validates_the_run_file_first(tmp_path: Path) -> None:
    bad = tmp_path / "run.yaml"
    bad.write_text(RUN_FILE + "eval: {scorer: bleu}\n")
    with pytest.raises(ConfigError, match=r"eval\.scorer"):
        eval_cmd(bad)


def test_eval_cmd_without_a_trained_student_says_what_to_run(tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(RUN_FILE)
    with pytest.raises(EvalError, match="no trained student") as ei:
        eval_cmd(cfg)
    assert "apidistill train" in str(ei.value)
