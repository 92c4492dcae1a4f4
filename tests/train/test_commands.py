"""`apidistill train config.yaml` on a dataset written by the store, with the tiny model."""

from __future__ import annotations

import textwrap

from typer.testing import CliRunner

from apidistill.cli import app


def test_train_command_trains_and_reports(tiny_chat_dir, tiny_teacher_records, tmp_path):
    from apidistill.data.store import save_records

    recs = [r.model_copy(update={"split": "train"}) for r in tiny_teacher_records[:8]]
    save_records(recs, tmp_path / "runs" / "t" / "dataset", by_split=True)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        textwrap.dedent(
            f"""\
            name: t
            run_dir: runs/t
            teacher:
              provider: openai_compatible
              base_url: http://127.0.0.1:9/v1
              model: tiny
            prompts:
              path: prompts.jsonl
            policy:
              use: internal
            budget:
              usd: 0
            harvest:
              logprobs: true
              top_logprobs: 5
            student:
              model: {tiny_chat_dir}
            training:
              method: logprob_kd
              epochs: 1
              batch_size: 4
              kd:
                top_k: 5
            """
        )
    )
    result = CliRunner().invoke(app, ["train", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "trained:" in result.output and "steps 2" in result.output
    assert (tmp_path / "runs" / "t" / "train" / "adapter" / "adapter_config.json").is_file()
    again = CliRunner().invoke(app, ["train", str(cfg)])  # finished: returned, not retrained
    assert again.exit_code == 0 and "steps 2" in again.output
