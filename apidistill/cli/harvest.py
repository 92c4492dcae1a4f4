"""``apidistill harvest``: policy check, then pull teacher answers into the run folder."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from apidistill.cli.options import (
    apply_retry_failed,
    apply_skip_invalid,
    fresh_option,
    retry_failed_option,
    skip_invalid_option,
)
from apidistill.config import load_config

if TYPE_CHECKING:
    from rich.console import Console


def harvest(
    config: Path = typer.Argument(..., help="YAML run file."),
    budget: float | None = typer.Option(
        None, help="Override budget.usd (USD), e.g. to raise it and resume after a budget stop."
    ),
    max_requests: int | None = typer.Option(
        None,
        min=0,
        help="Stop after sending this many new requests (0: send none, answer from the journal).",
    ),
    progress: bool = typer.Option(True, help="Show progress bars."),
    skip_invalid: bool | None = skip_invalid_option(),
    retry_failed: str | None = retry_failed_option(),
    fresh: bool = fresh_option(),
) -> None:
    """Check the teacher's terms, then send every request not already answered in the run's
    journal. Safe to re-run: answered requests come from the cache and are never paid twice."""
    from apidistill.data.prompts import skipped_report
    from apidistill.pipeline.stages import RunContext
    from apidistill.pipeline.teacher_requests import load_prompts
    from apidistill.pipeline.teacher_stages import run_teacher_stages
    from apidistill.train.distributed import launcher_rank

    cfg = load_config(config)
    rank, world = launcher_rank()
    if rank != 0:  # under a launcher: one harvest (rank 0's), not one paid per process
        typer.echo(f"rank {rank} of {world}: the harvest runs on rank 0 only")
        return
    apply_skip_invalid(cfg, skip_invalid)
    apply_retry_failed(cfg, retry_failed)
    if "model" in cfg.student.model_fields_set:  # named in the run file: it must exist
        from apidistill.pipeline.preflight import check_student_model

        check_student_model(cfg)
    ctx = RunContext.from_config(
        cfg,
        progress=progress,
        budget_override=Decimal(str(budget)) if budget is not None else None,
        max_requests=max_requests,
        fresh=fresh,
    )
    batch = load_prompts(cfg)
    if batch.skipped:
        ctx.console.print(skipped_report(batch.skipped, batch.problems), highlight=False)
    stages = run_teacher_stages(ctx, batch, estimate=False)
    exit_if_failed(ctx.console, stages.harvest.failed if stages.harvest is not None else 0)


def exit_if_failed(console: Console, failed: int) -> None:
    """Exit with :data:`~apidistill.exit_codes.SOME_FAILED` when requests failed: a script
    must not read a run where nothing was answered as a success."""
    if failed:
        from apidistill import exit_codes

        console.print(
            f"[yellow]{failed} request(s) failed[/]: the first errors of each kind are listed "
            f"above (exit code {exit_codes.SOME_FAILED})",
            highlight=False,
        )
        raise typer.Exit(exit_codes.SOME_FAILED)


journal_app = typer.Typer(no_args_is_help=True)


@journal_app.command("salvage")
def salvage(
    journal: Path = typer.Argument(..., help="The damaged journal (e.g. runs/x/journal.sqlite)."),
    out: Path | None = typer.Option(
        None, help="Write the recovered journal here and leave the damaged one in place."
    ),
) -> None:
    """Recover every intact answer (and the spend history) of a damaged journal into a new
    one. The damaged file is kept, renamed; a re-run then sends only what was lost."""
    from rich.console import Console

    from apidistill.harvest.salvage import salvage_journal

    report = salvage_journal(journal, out=out)
    console = Console()
    for line in report.lines():
        console.print(line, highlight=False)
