"""CLI commands for whole runs: ``run``, ``demo``, ``bench`` (wired in apidistill/cli/__init__.py)."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import typer

from apidistill.cli.options import (
    apply_retry_failed,
    apply_skip_invalid,
    fresh_option,
    retry_failed_option,
    skip_invalid_option,
)
from apidistill.config import load_config
from apidistill.errors import ConfigError

STAGES = ("policy", "estimate", "harvest", "dataset", "train")


def run(
    config: Path = typer.Argument(..., help="YAML run file."),
    budget: float | None = typer.Option(None, help="Override budget.usd (USD) for this run."),
    max_requests: int | None = typer.Option(
        None,
        min=0,
        help="Stop after sending this many new requests (0: send none, answer from the journal).",
    ),
    stop_after: str | None = typer.Option(
        None, help=f"Last stage to run: one of {', '.join(STAGES)}."
    ),
    progress: bool = typer.Option(True, help="Show progress bars."),
    skip_invalid: bool | None = skip_invalid_option(),
    retry_failed: str | None = retry_failed_option(),
    fresh: bool = fresh_option(),
) -> None:
    from apidistill.pipeline.run import run_pipeline

    if stop_after is not None and stop_after not in STAGES:
        raise ConfigError(f"--stop-after must be one of {', '.join(STAGES)}, got {stop_after!r}")
    cfg = load_config(config)
    apply_skip_invalid(cfg, skip_invalid)
    apply_retry_failed(cfg, retry_failed)
    summary = run_pipeline(
        cfg,
        progress=progress,
        budget=Decimal(str(budget)) if budget is not None else None,
        max_requests=max_requests,
        stop_after=stop_after,
        fresh=fresh,
    )
    if summary.is_main:
        print_summary(summary.numbers, summary.report_path, summary.student_dir)
    from apidistill.cli.harvest import exit_if_failed
    from apidistill.progress import console

    exit_if_failed(console, summary.harvest_failed)


def demo(
    run_dir: Path | None = typer.Option(None, help="Where to write the run (default runs/demo)."),
    tickets: int | None = typer.Option(None, help="Use only the first N tickets (quick try)."),
    epochs: float | None = typer.Option(None, help="Override training epochs."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Offline: serve SmolLM2 with a long prototype prompt as the teacher, harvest it over HTTP
    with logprobs, build the dataset, LoRA-distill the prompt away, evaluate, serve the student."""
    from apidistill.pipeline.run import run_pipeline
    from apidistill.resources import demo_run_file

    cfg = load_config(demo_run_file())
    if run_dir is not None:
        cfg.run_dir = str(run_dir.resolve())
    else:
        cfg.run_dir = str((Path.cwd() / "runs" / cfg.name).resolve())
    if tickets is not None:
        cfg.prompts.limit = tickets
    if epochs is not None:
        cfg.training.epochs = epochs
    summary = run_pipeline(cfg, progress=progress)
    print_summary(summary.numbers, summary.report_path, summary.student_dir)


def print_summary(numbers: dict[str, Any], report: str | None, student: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console()
    if "teacher_gold" not in numbers:  # stopped before evaluation: nothing to compare yet
        if report:
            c.print(f"report: {report}")
        return

    def pct(x: Any) -> str:
        return f"{x * 100:.1f}%" if isinstance(x, float) else "–"

    def num(x: Any, fmt: str = "{:.0f}") -> str:
        return fmt.format(x) if isinstance(x, int | float) else "–"

    t = Table(title="Prompt → student migration", show_lines=False)
    t.add_column("")
    t.add_column("teacher (prototype prompt)", justify="right")
    t.add_column("base model, no prompt", justify="right")
    t.add_column("distilled student, no prompt", justify="right")
    t.add_row(
        "exact vs gold",
        pct(numbers.get("teacher_gold")),
        pct(numbers.get("base_gold")),
        pct(numbers.get("student_gold")),
    )
    t.add_row(
        "agreement with teacher",
        "–",
        pct(numbers.get("base_agreement")),
        pct(numbers.get("student_agreement")),
    )
    t.add_row(
        "held-out KL to teacher (nats/token)",
        "–",
        num(numbers.get("base_kl"), "{:.3f}"),
        num(numbers.get("student_kl"), "{:.3f}"),
    )
    t.add_row(
        "prompt tokens / request",
        num(numbers.get("teacher_prompt_tokens")),
        num(numbers.get("base_prompt_tokens")),
        num(numbers.get("student_prompt_tokens")),
    )
    t.add_row(
        "s / request (served, batched)",
        num(numbers.get("teacher_s_per_request"), "{:.2f}"),
        num(numbers.get("base_s_per_request"), "{:.2f}"),
        num(numbers.get("student_s_per_request"), "{:.2f}"),
    )
    c.print(t)
    tp, sp = numbers.get("teacher_prompt_tokens"), numbers.get("student_prompt_tokens")
    if isinstance(tp, int | float) and isinstance(sp, int | float):
        c.print(f"prompt tokens saved per request: {tp - sp:.0f} ({(tp - sp) / tp * 100:.0f}%)")
    if numbers.get("drop_in_answer") is not None:
        answer = str(numbers["drop_in_answer"])
        answer = answer if len(answer) <= 200 else answer[:200] + "…"
        c.print(f"drop-in call through the openai SDK (only the base URL changed): {answer!r}")
    payoff = numbers.get("payoff")
    if isinstance(payoff, dict) and "ratios" in payoff:
        r = payoff["ratios"]
        c.print(
            f"payoff through llama.cpp: student GGUF {payoff['student']['gguf_mb']} MB, "
            f"{payoff['student']['latency_s_median']} s/request vs the prompted teacher's "
            f"{payoff['teacher']['latency_s_median']} s ({r['teacher_vs_student_latency']}x); "
            f"requests/s at concurrency 8: {r['student_vs_teacher_rps_c8']}x"
        )
    elif isinstance(payoff, dict) and payoff.get("command"):
        c.print(f"payoff row: run [bold]{payoff['command']}[/] (builds llama.cpp: "
                f"{payoff['build_minutes']} min on 2 cores)")  # fmt: skip
    if student:
        c.print(f"student: {student}  (serve it: apidistill serve --model {student})")
    if report:
        c.print(f"report: {report}")
    if "total_s" in numbers:
        c.print(f"total time: {numbers['total_s'] / 60:.1f} min")


def bench(
    quick: bool = typer.Option(False, help="CI-sized run."),
) -> None:
    """Run the benchmark suite: ``python -m benchmarks`` from the source checkout."""
    root = Path(__file__).resolve().parents[2]  # benchmarks/ exist only in a source checkout
    if not (root / "benchmarks" / "__main__.py").is_file():
        raise ConfigError("benchmarks/ not found", hint="run from a source checkout")
    args = [sys.executable, "-m", "benchmarks"] + (["--quick"] if quick else [])
    raise typer.Exit(subprocess.call(args, cwd=root))
