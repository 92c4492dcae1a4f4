"""Several student sizes against a latency budget (``student.candidates`` in the run file).

Each candidate is trained with the same training settings on the same train split, then all
are served side by side and evaluated on the same test split by one ``run_eval`` call — so
agreement, task score and p95 latency are measured the same way for each. The choice is the
eval verdict's: the smallest candidate (parameters, read from the weights' headers) that
meets every ``eval.thresholds`` entry, latency included, ties going to the faster. Only that
one is exported; ``candidates.json`` in the run folder lists every candidate's numbers and
why it was or was not chosen, and the HTML report shows them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apidistill.pipeline.stages import (
    RunContext,
    _write_json,
    effective_training,
    load_split,
    run_spend,
    train_stage,
)

__all__ = ["Candidate", "evaluate_candidates", "train_candidates"]


@dataclass
class Candidate:
    name: str  # the student's name in the eval result and report
    model: str  # the model spec from the run file
    result: Any  # its TrainResult


def _slug(i: int, spec: str) -> str:
    stem = Path(spec.rstrip("/")).name or spec
    return f"{i + 1}-" + re.sub(r"[^A-Za-z0-9._-]+", "-", stem)[:60]


def train_candidates(ctx: RunContext, *, resume: bool = True) -> list[Candidate]:
    """Train every candidate into ``<run>/train/candidates/<n>-<name>/`` (resumable each)."""
    out = []
    for i, spec in enumerate(ctx.cfg.student.candidates):
        student = ctx.cfg.student.model_copy(update={"model": spec, "candidates": []})
        slug = _slug(i, spec)
        ctx.console.print(f"[bold]train[/]: candidate {slug} ({spec})")
        folder = ctx.layout.train / "candidates" / slug
        tr = train_stage(ctx, resume=resume, student=student, out_dir=folder)
        out.append(Candidate(name=f"student {slug}", model=spec, result=tr))
    return out


def evaluate_candidates(
    ctx: RunContext, candidates: list[Candidate]
) -> tuple[Any, Candidate | None]:
    """Serve and evaluate every candidate on the test split; write the report and
    ``candidates.json``; return the eval result and the chosen candidate (None if none
    meets the thresholds)."""
    from apidistill.eval.report import write_report
    from apidistill.eval.runner import run_eval
    from apidistill.eval.types import StudentEndpoint
    from apidistill.eval.verdict import student_checks
    from apidistill.model_loading import count_params
    from apidistill.serve.launcher import launch_server

    cfg = ctx.cfg
    test = load_split(ctx, cfg.eval.split)
    latencies = {r.id: r.metadata.get("latency_ms") for r in test if r.metadata.get("latency_ms")}
    with contextlib.ExitStack() as stack:
        endpoints = {}
        for c in candidates:
            folder = str(c.result.final_dir)
            full = c.result.adapter_dir is None
            handle = stack.enter_context(
                launch_server(
                    folder if full else c.model,
                    adapter=None if full else folder,
                    served_model_name="student",
                )
            )
            endpoints[c.name] = StudentEndpoint(
                base_url=handle.base_url,
                model="student",
                kind=effective_training(ctx).method,
                params=count_params(c.model),
                # held-out KL needs the teacher's logprobs (and loads the model here)
                local_model=(folder if full else c.model) if cfg.harvest.logprobs else None,
                adapter=None if full or not cfg.harvest.logprobs else folder,
            )
        result = asyncio.run(
            run_eval(
                test,
                endpoints,
                cfg.eval,
                system_prompts=dict.fromkeys(endpoints, cfg.student.system_prompt),
                out_dir=ctx.layout.eval,
                teacher_latency_ms=latencies,
                resume=True,
            )
        )
    path = write_report(
        result,
        ctx.layout.report,
        title=f"apidistill: {cfg.name} (candidates)",
        spend=run_spend(ctx),
    )
    chosen = next((c for c in candidates if c.name == result.selected), None)
    rows = []
    for c in candidates:
        me = result.students[c.name]
        checks = student_checks(me, cfg.eval.thresholds)
        rows.append(
            {
                "name": c.name,
                "model": c.model,
                "params": me.params,
                "train_dir": str(c.result.out_dir),
                "metrics": {k: round(v.value, 6) for k, v in me.metrics.items()},
                "p95_ms": me.timing.p95_ms,
                "passes": all(ch.passed is not False for ch in checks),
                "checks": [ch.detail for ch in checks],
                "chosen": c is chosen,
            }
        )
    _write_json(
        ctx.layout.root / "candidates.json", {"chosen": result.selected, "candidates": rows}
    )
    for row in rows:
        mark = "chosen" if row["chosen"] else ("passes" if row["passes"] else "fails")
        ctx.console.print(
            f"  {row['name']}: {row['params']:,} params, p95 {row['p95_ms']} ms — {mark}"
        )
    ctx.console.print(f"[bold]report[/]: {path}")
    return result, chosen
