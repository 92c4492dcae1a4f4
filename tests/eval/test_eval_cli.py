"""CLI glue of the eval stage: ``apidistill report`` and the thin ``apidistill eval``."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from apidistill.cli import app
from apidistill.cli.eval import eval_cmd
from apidistill.errors import ConfigError, EvalError

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


def _finished_full_finetune(tmp_path: Path) -> tuple[Path, Path]:
    """A run folder whose training was a full fine-tune: train/model + train_result.json."""
    from apidistill.train.api import RESULT_FILE, TrainResult

    cfg = tmp_path / "run.yaml"
    cfg.write_text(RUN_FILE + "run_dir: run\ntraining: {full_finetune: true}\n")
    model_dir = tmp_path / "run" / "train" / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text("{}")
    result = TrainResult(
        out_dir=model_dir.parent,
        model_dir=model_dir,
        base_model="smollm2-135m-instruct",
        method="sequence_kd",
    )
    (model_dir.parent / RESULT_FILE).write_text(result.model_dump_json())
    return cfg, model_dir


def test_eval_cmd_of_a_full_finetune_names_the_model_folder(tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(RUN_FILE + "run_dir: run\ntraining: {full_finetune: true}\n")
    with pytest.raises(EvalError, match=r"no trained student in .*train[/\\]model"):
        eval_cmd(cfg)


def test_eval_cmd_and_sdk_evaluate_a_full_finetune_as_the_model(tmp_path, monkeypatch) -> None:
    from apidistill import Distiller
    from apidistill.pipeline import run as pipeline_run

    cfg, model_dir = _finished_full_finetune(tmp_path)
    seen: list[str] = []
    monkeypatch.setattr(
        pipeline_run, "eval_stage", lambda ctx, d: (seen.append(d), (None, None))[1]
    )
    eval_cmd(cfg)
    Distiller.from_yaml(cfg, progress=False).evaluate()
    assert seen == [str(model_dir), str(model_dir)]


@pytest.mark.parametrize("full", [True, False])
def test_eval_serves_a_full_finetune_as_the_model_and_an_adapter_on_the_base(
    tmp_path, monkeypatch, full: bool
) -> None:
    """The student server gets ``--model train/model`` after a full fine-tune (it used to get
    the folder as ``--adapter`` on the base), and held-out KL loads the same model."""
    from apidistill.config import load_config
    from apidistill.pipeline import run as pipeline_run
    from apidistill.pipeline.stages import RunContext
    from apidistill.serve import launcher

    cfg_path, model_dir = _finished_full_finetune(tmp_path)
    student_dir = model_dir
    if not full:
        student_dir = tmp_path / "run" / "train" / "adapter"
        student_dir.mkdir()
        (student_dir / "adapter_config.json").write_text("{}")

    class _Handle:
        base_url = "http://127.0.0.1:9/v1"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    specs: list[dict] = []
    monkeypatch.setattr(
        launcher, "launch_servers", lambda *s, **kw: (specs.extend(s), [_Handle(), _Handle()])[1]
    )
    ctx = RunContext.from_config(load_config(cfg_path), progress=False)
    with pipeline_run.eval_servers(ctx, str(student_dir)) as (endpoints, _):
        pass
    base, student = specs
    assert base["model"] == "smollm2-135m-instruct" and base["served_model_name"] == "base"
    # eval judges the trained weights, so its servers run the transformers backend
    assert base["backend"] == student["backend"] == "transformers"
    ep = endpoints["student"]
    if full:
        assert student["model"] == str(model_dir) and student["adapter"] is None
        assert (ep.local_model, ep.adapter) == (str(model_dir), None)
        assert ep.kind.endswith("(full fine-tune)")
    else:
        assert student["model"] == "smollm2-135m-instruct"
        assert student["adapter"] == str(student_dir) == ep.adapter
