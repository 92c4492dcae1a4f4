"""``apidistill run config.yaml``: every stage of a migration, in order, resumable.

policy → estimate → harvest → dataset → train → export → eval + report → drop-in check.
Each stage reads what the previous one wrote in the run folder. Re-running the same file
after a crash or Ctrl-C skips nothing it must not skip and pays for nothing twice: the
harvest journal answers every request already paid for, training resumes from its last
checkpoint, and eval keeps per-request answers already written.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apidistill.config import RunConfig
from apidistill.pipeline.preflight import check_student_model
from apidistill.pipeline.stages import (
    RunContext,
    _write_json,
    dataset_stage,
    effective_training,
    load_split,
    run_spend,
    train_stage,
)
from apidistill.pipeline.teacher_requests import load_prompts
from apidistill.pipeline.teacher_stages import run_teacher_stages, teacher_server

# teacher_server: imported from here by callers written before teacher_stages.py existed
if TYPE_CHECKING:
    from apidistill.eval.types import EvalResult

__all__ = ["RunSummary", "run_pipeline", "teacher_server", "trained_student_dir"]


@dataclass
class RunSummary:
    run_dir: str
    numbers: dict[str, Any] = field(default_factory=dict)
    harvest_failed: int = 0  # requests the harvest gave up on (exit code 3)
    report_path: str | None = None
    student_dir: str | None = None
    is_main: bool = True  # False on the other ranks under a launcher (they print nothing)


def _device_args(cfg: RunConfig) -> list[str]:
    return ["--device", cfg.eval.device, "--dtype", cfg.eval.dtype]


@contextlib.contextmanager
def eval_servers(ctx: RunContext, student_dir: str) -> Iterator[tuple[dict[str, Any], Any]]:
    """Serve the untrained base and the distilled student; yield their endpoints.

    ``student_dir`` is a LoRA adapter (served on the base model) or, after
    ``training.full_finetune``, a whole model folder (served, and scored, as the model)."""
    from apidistill.eval.types import StudentEndpoint
    from apidistill.serve.launcher import launch_servers

    cfg = ctx.cfg
    base_model = cfg.student.model
    full = not (Path(student_dir) / "adapter_config.json").is_file()
    model, adapter = (student_dir, None) if full else (base_model, student_dir)
    # the trained weights as trained (transformers), on eval's device and dtype
    where = {"backend": "transformers", "extra_args": _device_args(cfg)}
    base, student = launch_servers(  # both load at once: ready in the time of one
        {"model": base_model, "served_model_name": "base", **where},
        {"model": model, "adapter": adapter, "served_model_name": "student", **where},
    )
    with base, student:
        yield (
            {
                "base (no prompt)": StudentEndpoint(
                    base_url=base.base_url, model="base", kind="base", local_model=base_model
                ),
                "student": StudentEndpoint(
                    base_url=student.base_url,
                    model="student",
                    kind=effective_training(ctx).method + (" (full fine-tune)" if full else ""),
                    local_model=model,
                    adapter=adapter,
                ),
            },
            student,
        )


def trained_student_dir(ctx: RunContext) -> Path:
    """The folder training left for this run: the one ``train_result.json`` names (adapter or
    full model), else where the run file's ``training.full_finetune`` puts it."""
    from apidistill.train.api import RESULT_FILE, TrainResult

    if (ctx.layout.train / RESULT_FILE).is_file():
        return TrainResult.load(ctx.layout.train).final_dir
    return ctx.layout.train / ("model" if ctx.cfg.training.full_finetune else "adapter")


def run_pipeline(
    cfg: RunConfig,
    *,
    progress: bool = True,
    budget: Decimal | None = None,
    max_requests: int | None = None,
    stop_after: str | None = None,
    fresh: bool = False,
) -> RunSummary:
    """Run every stage of ``cfg``; ``stop_after`` names the last stage to run. ``fresh``:
    move the run folder's old state aside first (nothing is deleted).

    Under a launcher (``torchrun``/``accelerate launch -m apidistill run``) rank 0 alone
    runs policy → dataset (the teacher is asked and paid once), every rank trains (one
    DDP/FSDP/DeepSpeed group), and rank 0 alone exports, evaluates and reports.
    """
    from apidistill.train.distributed import StageGate

    gate = StageGate.join()
    ctx = RunContext.from_config(
        cfg, progress=progress, budget_override=budget, max_requests=max_requests, fresh=fresh
    )
    out = RunSummary(run_dir=str(ctx.layout.root), is_main=gate.is_main)
    t0 = time.perf_counter()
    if gate.is_main:
        done = True
        try:
            if stop_after in (None, "train"):  # a student that cannot load: before paying
                check_student_model(cfg)
            done = _teacher_stages(ctx, out, stop_after)
        finally:  # on an error too: the other ranks must not wait for a harvest that stopped
            go_on = gate.release(not done)
    else:
        go_on = gate.release()  # wait for rank 0's dataset
    if not go_on:
        return out
    if len(cfg.student.candidates) > 1:
        return _run_candidates(ctx, out, stop_after, is_main=gate.is_main, t0=t0)
    tr = train_stage(ctx)
    out.numbers["train_s"] = round(getattr(tr, "train_seconds", 0.0), 1)
    if stop_after == "train" or not gate.is_main:
        return out
    out.student_dir = export_stage(ctx, tr)
    result, switch = eval_stage(ctx, student_dir_of(tr))
    out.report_path = str(ctx.layout.report / "report.html")
    out.numbers.update(_headline(result))
    out.numbers["drop_in_answer"] = switch
    if cfg.export.payoff:  # the student's GGUF against the prompted teacher, via llama.cpp
        from apidistill.pipeline.payoff import payoff_stage

        out.numbers["payoff"] = payoff_stage(
            cfg, ctx.layout, student_dir_of(tr), console=ctx.console
        )
    out.numbers["total_s"] = round(time.perf_counter() - t0, 1)
    _write_json(ctx.layout.summary, {"run_dir": out.run_dir, **out.numbers})
    return out


def _run_candidates(
    ctx: RunContext, out: RunSummary, stop_after: str | None, *, is_main: bool, t0: float
) -> RunSummary:
    """Train every ``student.candidates`` entry, evaluate all on the same split, export the
    smallest that meets the thresholds (:mod:`apidistill.pipeline.candidates`)."""
    from apidistill.pipeline.candidates import evaluate_candidates, train_candidates

    trained = train_candidates(ctx)
    out.numbers["train_s"] = round(sum(c.result.train_seconds for c in trained), 1)
    if stop_after == "train" or not is_main:
        return out
    result, chosen = evaluate_candidates(ctx, trained)
    out.report_path = str(ctx.layout.report / "report.html")
    shown = {k: v for k, v in result.students.items() if chosen and k == chosen.name}
    out.numbers.update(_headline(result.model_copy(update={"students": shown})))
    out.numbers["chosen_student"] = chosen.model if chosen else None
    if chosen is not None:  # the choice is in candidates.json; the run's config stays as read
        out.student_dir = export_stage(ctx, chosen.result, base_model=chosen.model)
    else:
        ctx.console.print("[yellow]no candidate meets eval.thresholds[/]: nothing exported")
    out.numbers["total_s"] = round(time.perf_counter() - t0, 1)
    _write_json(ctx.layout.summary, {"run_dir": out.run_dir, **out.numbers})
    return out


def _teacher_stages(ctx: RunContext, out: RunSummary, stop_after: str | None) -> bool:
    """Policy → estimate → harvest → dataset (rank 0 only); True when ``stop_after`` ends
    the run here."""
    cfg = ctx.cfg
    batch = load_prompts(cfg)
    if batch.skipped:
        ctx.console.print(f"[yellow]prompts[/]: skipped {batch.skipped} invalid rows")
    until = stop_after if stop_after in ("policy", "estimate") else "harvest"
    stages = run_teacher_stages(ctx, batch, until=until)
    if until != "harvest":  # stopped at the policy or the estimate
        return True
    h = stages.harvest  # None: nothing to ask (a run built only from imports)
    if h is not None:
        out.numbers.update(_teacher_timing(ctx, h))
    out.harvest_failed = h.failed if h is not None else 0
    if stop_after == "harvest" or (
        h is not None and h.failed and not h.records and not stages.rescore
    ):
        return True  # nothing to build on
    out.numbers["dataset"] = asdict(dataset_stage(ctx, stages.decision))
    if stop_after == "dataset":
        return True
    if out.numbers.get("teacher_s_per_request") is None:
        out.numbers.pop("teacher_s_per_request", None)
    return False


def student_dir_of(tr: Any) -> str:
    """The trained student's folder: the LoRA adapter, or the full model when fine-tuned."""
    return str(getattr(tr, "adapter_dir", None) or tr.model_dir)


def export_stage(ctx: RunContext, tr: Any, *, base_model: str | None = None) -> str:
    """Export the student trained on ``base_model`` (default: the run file's student); its
    card's terms section is read from the dataset's records (the decisions they were
    harvested under), re-checked for the run's intended use."""
    from apidistill.export import export_student

    base_model = base_model or ctx.cfg.student.model
    sections = {}
    card = ctx.layout.dataset / "README.md"
    if card.is_file():
        sections["Training data"] = card.read_text(encoding="utf-8")
    path = export_student(
        tr,
        ctx.layout.student,
        base_model=base_model,
        merge=False,
        model_card_sections=sections,
        dataset=ctx.layout.dataset,
        intended_use=ctx.cfg.policy.use,
        policy_cfg=ctx.cfg.policy,
    )
    ctx.console.print(f"[bold]export[/]: student written to {path}")
    exp = ctx.cfg.export
    others = [f for f in exp.formats if f != "adapter"]
    if others:
        from apidistill.export.formats import export_formats

        written = export_formats(
            tr,
            ctx.layout.export,
            others,
            gguf_quants=exp.gguf_quants,
            ollama_quant=exp.ollama_quant,
            base_model=base_model,
            base_gguf=exp.base_gguf,
            name=exp.name or ctx.cfg.name,
            dataset=ctx.layout.dataset,
            intended_use=ctx.cfg.policy.use,
            policy_cfg=ctx.cfg.policy,
            model_card_sections=sections,
        )
        for fmt, folder in written.items():
            ctx.console.print(f"[bold]export[/]: {fmt} written to {folder}")
    return str(path)


def eval_stage(ctx: RunContext, student_dir: str) -> tuple[EvalResult, str | None]:
    """Evaluate base and distilled student (``student_dir``: adapter or full model) against
    the teacher; write the report; then make one call through the official openai SDK to
    show the drop-in switch. Works for every teacher: held-out KL is measured on teacher ids,
    on byte-aligned positions when the teacher's tokenizer differs, or is left out with its
    reason when the teacher's answers carry no logprobs."""
    from apidistill.eval.report import write_report
    from apidistill.eval.runner import run_eval

    cfg = ctx.cfg
    test = load_split(ctx, cfg.eval.split)
    latencies = {r.id: r.metadata.get("latency_ms") for r in test if r.metadata.get("latency_ms")}
    system = cfg.student.system_prompt
    switch = None
    # Teacher ids are student ids only with the student's own tokenizer; any other named
    # tokenizer (o200k_base, another model) is scored on byte-aligned positions.
    same_vocab = cfg.teacher.tokenizer in (None, cfg.student.model)
    with eval_servers(ctx, student_dir) as (students, student_handle):
        result = asyncio.run(
            run_eval(
                test,
                students,
                cfg.eval,
                system_prompts=dict.fromkeys(students, system),
                out_dir=ctx.layout.eval,
                teacher_latency_ms=latencies,
                resume=True,
                same_vocab=same_vocab,
            )
        )
        switch = drop_in_call(student_handle.base_url, test[0], system, cfg.eval.max_tokens)
    history = _training_history(ctx)
    path = write_report(
        result,
        ctx.layout.report,
        title=f"apidistill: {cfg.name}",
        training_history=history,
        spend=run_spend(ctx),
    )
    ctx.console.print(f"[bold]report[/]: {path}")
    return result, switch


def eval_from_config(cfg: RunConfig, *, progress: bool = True) -> Any:
    """``apidistill eval config.yaml``: evaluate the trained student of a finished run."""
    from apidistill.errors import EvalError

    ctx = RunContext.from_config(cfg, progress=progress)
    student = trained_student_dir(ctx)
    if not student.is_dir():
        raise EvalError(
            f"no trained student in {student}",
            hint="train first: apidistill train config.yaml (or apidistill run config.yaml)",
        )
    result, _ = eval_stage(ctx, str(student))
    return result


def drop_in_call(base_url: str, record: Any, system: str | None, max_tokens: int) -> str:
    """The prototype's code path, unchanged but for the base URL: one chat call."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="not-needed-locally")
    messages = ([{"role": "system", "content": system}] if system else []) + [
        m.model_dump() for m in record.messages
    ]
    resp = client.chat.completions.create(
        model="student", messages=messages, temperature=0, max_tokens=max_tokens
    )
    return resp.choices[0].message.content or ""


def _teacher_timing(ctx: RunContext, h: Any) -> dict[str, Any]:
    """Teacher seconds per request, from the run that actually sent the requests (a cached
    re-run takes no time and must not pass for a fast teacher)."""
    import json

    path = ctx.layout.root / "teacher_timing.json"
    sent = getattr(h.summary, "done", 0) if h.summary is not None else 0
    if sent and h.records:
        timing = {"harvest_s": round(h.wall_s, 1), "requests": sent}
        _write_json(path, timing)
    elif path.is_file():
        timing = json.loads(path.read_text(encoding="utf-8"))
    else:
        return {}
    return {
        "harvest_s": timing["harvest_s"],
        "teacher_s_per_request": round(timing["harvest_s"] / timing["requests"], 3),
    }


def _training_history(ctx: RunContext) -> list[dict[str, Any]] | None:
    import json

    p = ctx.layout.train / "train_result.json"
    if p.is_file():
        return json.loads(p.read_text(encoding="utf-8")).get("log_history")
    return None


def _headline(result: Any) -> dict[str, Any]:
    """The numbers the demo prints, from the eval result."""
    out: dict[str, Any] = {}

    def metric(me: Any, name: str) -> float | None:
        m = me.metrics.get(name)
        return round(m.value, 4) if m is not None else None

    out["teacher_gold"] = metric(result.teacher, "task_score")
    out["teacher_usd_per_1k"] = (
        float(result.teacher.usd_per_1k_requests)
        if result.teacher.usd_per_1k_requests is not None
        else None
    )
    if result.notes:
        out["eval_notes"] = list(result.notes)
    out["teacher_prompt_tokens"] = result.teacher.prompt_tokens_per_request
    for name, me in result.students.items():
        key = "base" if me.kind == "base" else "student"
        out[f"{key}_agreement"] = metric(me, "agreement")
        out[f"{key}_gold"] = metric(me, "task_score")
        out[f"{key}_kl"] = metric(me, "kl_nats_per_token")
        out[f"{key}_kl_coverage"] = me.kl_coverage
        out[f"{key}_prompt_tokens"] = me.prompt_tokens_per_request
        out[f"{key}_p50_ms"] = me.timing.p50_ms
        out[f"{key}_s_per_request"] = (
            round(me.timing.wall_s / me.timing.requests, 3)
            if me.timing.wall_s and me.timing.requests
            else None
        )
        del name
    return out
