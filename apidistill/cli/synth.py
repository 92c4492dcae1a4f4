"""``apidistill synth RUN.yaml``: the run file's ``synth:`` section writes a prompt file.

The teacher (the run's, or ``synth.teacher``) is checked against its terms first, then asked
for new inputs through the harvest engine with the run's budget, journal, retries and rate
limits: a crash or a re-run answers every request already paid for from the run's journal,
and the budget covers synthesis and harvest together (one journal, one cap).
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from apidistill.config import RunConfig, load_config
from apidistill.errors import BudgetExceeded, ConfigError, DataError

if TYPE_CHECKING:
    from apidistill.data.synth import SynthResult

__all__ = ["synth"]

_EXAMPLE = "synth: {n: 200, output: prompts/synth.jsonl, topics: [billing, shipping]}"


def synth(
    config: Path = typer.Argument(..., help="YAML run file with a synth: section."),
    budget: float | None = typer.Option(
        None, help="Override budget.usd (USD), e.g. to raise it and resume after a budget stop."
    ),
    max_requests: int | None = typer.Option(None, help="Stop after sending this many requests."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Write new task inputs with a teacher into synth.output. Safe to re-run: requests
    already answered come from the run's journal and are never paid twice."""
    from rich.console import Console

    from apidistill.pipeline.layout import RunLayout

    cfg = load_config(config)
    if cfg.synth is None:
        raise ConfigError(
            "the run file has no synth: section",
            file=str(config),
            key="synth",
            hint=f"add one, e.g. {_EXAMPLE} (docs/data.md)",
        )
    if max_requests is not None and max_requests < 1:
        raise ConfigError(f"must be >= 1, got {max_requests}", key="--max-requests")
    console = Console(stderr=False, soft_wrap=True)
    output = cfg.resolve_path(cfg.synth.output)
    _check_output(output, cfg)
    seeds, existing = _seeds(cfg, output)
    layout = RunLayout(cfg.run_path).ensure()
    _policy(cfg, layout.root, console)  # before anything is sent
    result = _generate(
        cfg,
        layout.journal,
        seeds,
        existing,
        budget=Decimal(str(budget)) if budget is not None else None,
        max_requests=max_requests,
        progress=progress,
    )
    _write_output(output, result)
    _report(result, output, layout.root, console)


def _teacher_cfg(cfg: RunConfig) -> Any:
    assert cfg.synth is not None
    return cfg.synth.teacher or cfg.teacher


def _check_output(output: Path, cfg: RunConfig) -> None:
    """Refuse to overwrite a file this command did not write (e.g. the user's real prompts)."""
    if not output.exists():
        return
    if not output.is_file():
        raise ConfigError("is not a file", file=str(output), key="synth.output")
    with output.open(encoding="utf-8", errors="replace") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict) or row.get("synthetic") is not True:
                raise ConfigError(
                    f"line {line_no} is not a synthetic prompt: this file was not written by "
                    "'apidistill synth' and is never overwritten",
                    file=str(output),
                    key="synth.output",
                    hint="point synth.output at a new file (e.g. prompts/synth.jsonl)",
                )


def _seeds(cfg: RunConfig, output: Path) -> tuple[list[str], list[str]]:
    """Examples to show (synth.seeds, plus the prompt file's text inputs) and the inputs the
    new ones must differ from (the prompt file and earlier synthetic output)."""
    from apidistill.data.prompts import load_prompt_rows

    sc = cfg.synth
    assert sc is not None
    seeds = list(sc.seeds)
    existing: list[str] = []
    prompts = cfg.resolve_path(cfg.prompts.path) if cfg.prompts.path else None
    if (
        sc.seeds_from_prompts
        and prompts is not None
        and prompts.is_file()
        and prompts.resolve() != output.resolve()
    ):
        rows = load_prompt_rows(
            prompts,
            format=cfg.prompts.format,
            input_field=cfg.prompts.input_field,
            id_field=cfg.prompts.id_field,
            skip_invalid=True,
        ).rows
        texts = [r.input for r in rows if isinstance(r.input, str)]
        seeds.extend(texts)
        existing.extend(texts)
    if not seeds and not sc.topics:
        raise ConfigError(
            "nothing to base new prompts on: no seeds, no topics, and "
            + (f"the prompt file {prompts} has no text inputs"
               if prompts.is_file() else f"the prompt file {prompts} does not exist"),
            file=cfg.source,
            key="synth",
            hint="add synth.seeds (a few real inputs) or synth.topics",
        )  # fmt: skip
    return seeds, existing


def _policy(cfg: RunConfig, root: Path, console: Any) -> None:
    from apidistill.pipeline.stages import _write_json
    from apidistill.policy.engine import decide_for_teacher, enforce

    decision = enforce(decide_for_teacher(_teacher_cfg(cfg), cfg.policy), cfg.policy)
    _write_json(root / "synth_policy.json", decision.model_dump(mode="json"))
    console.print(
        f"[bold]policy[/] (synth teacher): {decision.decision} for use '{decision.use}' "
        f"[dim](decision {decision.id}; engineering help, not legal advice)[/]"
    )


def _generate(
    cfg: RunConfig,
    journal: Path,
    seeds: list[str],
    existing: list[str],
    *,
    budget: Decimal | None,
    max_requests: int | None,
    progress: bool,
) -> SynthResult:
    from apidistill.costs.budget import Budget
    from apidistill.costs.prices import price_for_teacher
    from apidistill.costs.tokens import TokenCounter
    from apidistill.data.synth import SynthOptions, generate_prompts
    from apidistill.harvest import HarvestOptions
    from apidistill.pipeline.run import teacher_server
    from apidistill.teachers import make_teacher

    sc = cfg.synth
    assert sc is not None
    tcfg = _teacher_cfg(cfg)
    opts = SynthOptions(
        n=sc.n,
        task=sc.task,
        per_request=sc.per_request,
        examples_per_request=sc.examples_per_request,
        temperatures=tuple(sc.temperatures),
        novelty_threshold=sc.novelty_threshold,
        min_chars=sc.min_chars,
        max_chars=sc.max_chars,
        max_requests=sc.max_requests,
        concurrency=cfg.harvest.concurrency,
        max_tokens=sc.max_tokens,
        seed=sc.seed,
    )
    counter = TokenCounter(tcfg)
    options: dict[str, Any] = {
        "budget": Budget(budget if budget is not None else cfg.budget.usd,
                         per_day=cfg.budget.per_day_usd),
        "price": price_for_teacher(tcfg),
        # the run's rates, retries and timeout; synthetic prompts never go by Batch API
        "config": cfg.harvest.model_copy(update={
            "max_requests": max_requests or cfg.harvest.max_requests,
            "use_batch_api": False, "retry_failed": None,
        }),
        "options": HarvestOptions(count_input_tokens=lambda req: counter.bound(req).n),
        "progress": progress,
    }  # fmt: skip

    async def run(url: str | None) -> SynthResult:
        teacher = make_teacher(tcfg, base_url=url, timeout_s=cfg.harvest.timeout_s)
        try:
            return await generate_prompts(
                teacher, opts, seeds=seeds, topics=sc.topics, existing=existing,
                journal=journal, **options,
            )  # fmt: skip
        finally:
            await teacher.aclose()

    with teacher_server(cfg.model_copy(update={"teacher": tcfg})) as url:
        return asyncio.run(run(url))


def _write_output(output: Path, result: SynthResult) -> None:
    from apidistill.data.synth import write_prompts_jsonl

    tmp = output.with_name(output.name + ".partial")
    try:
        write_prompts_jsonl(result.prompts, tmp)
        tmp.replace(output)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"cannot write: {exc.strerror or exc}",
            file=str(output),
            hint="free disk space or make the folder writable; re-run: answers come from the "
            "journal",
        ) from None


def _report(result: SynthResult, output: Path, root: Path, console: Any) -> None:
    from apidistill.pipeline.stages import _write_json

    s = result.summary
    console.print(
        f"[bold]synth[/]: {len(result.prompts)} prompts → {output} ({result.requests} requests, "
        f"{result.duplicates} near-duplicates and {result.invalid} invalid dropped, "
        f"{result.failed} failed)",
        highlight=False,
    )
    if s is not None:
        for line in s.lines():
            console.print(f"  {line}", highlight=False)
        _write_json(
            root / "synth_summary.json",
            {"prompts": len(result.prompts), "output": str(output), "requests": result.requests,
             "duplicates": result.duplicates, "invalid": result.invalid,
             "failed": result.failed, "harvest": s.as_dict()},
        )  # fmt: skip
        if s.stopped_by == "budget":
            raise BudgetExceeded(
                f"synth stopped by the budget after {len(result.prompts)} prompts "
                f"({s.stop_message or 'budget reached'}); those are written to {output}",
                hint="raise budget.usd (or pass --budget) and run again: answered requests "
                "come from the journal and are never paid twice",
            )
