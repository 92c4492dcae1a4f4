"""``apidistill train config.yaml``: distill the run's dataset into the student.

The pipeline's ``train_stage`` does the work when present (the same code ``apidistill run``
uses); otherwise this reads the dataset splits itself and calls :func:`train_student`.
Heavy imports stay inside the command so ``apidistill --help`` is fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from apidistill.config import load_config


def _train_direct(cfg, resume: bool):  # type: ignore[no-untyped-def]
    from apidistill.data.store import load_records
    from apidistill.errors import DataError
    from apidistill.train.api import train_student

    dataset = cfg.run_path / "dataset"
    train_recs = load_records(dataset, split="train")
    try:
        val = load_records(dataset, split="validation") or None
    except DataError:
        val = None
    return train_student(
        train_recs,
        val,
        student=cfg.student,
        training=cfg.training,
        out_dir=cfg.run_path / "train",
        teacher_tokenizer=cfg.teacher.tokenizer,
        resume=resume,
    )


def train(
    config: Path = typer.Argument(..., help="YAML run file."),
    resume: bool = typer.Option(
        True,
        "--resume/--no-resume",
        help="Continue an interrupted run from its last checkpoint (default), or start over.",
    ),
) -> None:
    cfg = load_config(config)
    try:
        from apidistill.pipeline.stages import RunContext, train_stage
    except ImportError:
        result = _train_direct(cfg, resume)
    else:
        if len(cfg.student.candidates) > 1:  # several sizes: train each, as `run` does
            from apidistill.pipeline.candidates import train_candidates

            for cand in train_candidates(RunContext.from_config(cfg), resume=resume):
                _report(cand.result)
            return
        result = train_stage(RunContext.from_config(cfg), resume=resume)
    _report(result)


def _report(result) -> None:  # type: ignore[no-untyped-def]
    typer.echo(f"trained: {result.final_dir}")
    typer.echo(
        f"steps {result.steps}, {result.train_seconds:.0f} s, {result.train_examples} examples"
        + (
            f", teacher top-k on {result.supervised_share:.1%} of answer tokens"
            if result.method == "logprob_kd"
            else ""
        )
    )
    for key in ("eval_loss", "eval_kd", "eval_top1_agreement"):
        if key in result.eval_metrics:
            typer.echo(f"{key} {result.eval_metrics[key]:.4f}")
