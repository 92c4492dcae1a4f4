"""The stages of one run, each a plain function over a :class:`RunContext`.

Stages talk only through files in the run folder (see :mod:`apidistill.pipeline.layout`) and
the record schema, so any stage can be re-run alone (``apidistill train config.yaml``) and a
run interrupted anywhere resumes: harvest answers come from the journal, training from its
last checkpoint.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from apidistill.config import RunConfig, TrainingConfig
from apidistill.errors import (
    BudgetExceeded,
    CapabilityError,
    ConfigError,
    DataError,
    EvalError,
    redact,
)
from apidistill.pipeline.layout import RunLayout
from apidistill.pipeline.teacher_requests import PromptBatch
from apidistill.progress import console as progress_console
from apidistill.records import Message, Provenance, Record

if TYPE_CHECKING:
    from apidistill.costs.estimate import Estimate
    from apidistill.harvest.results import HarvestSummary
    from apidistill.policy.schema import Decision
    from apidistill.train.api import TrainResult

__all__ = [
    "DatasetOutcome",
    "HarvestOutcome",
    "RunContext",
    "check_run_state",
    "dataset_stage",
    "effective_training",
    "estimate_stage",
    "harvest_stage",
    "harvested_records",
    "policy_stage",
    "record_from_result",
    "run_ledger",
    "run_spend",
    "train_stage",
]


@dataclass
class RunContext:
    cfg: RunConfig
    layout: RunLayout
    console: Console = field(default_factory=lambda: progress_console)
    progress: bool = True
    budget_override: Decimal | None = None
    max_requests: int | None = None
    fresh: bool = False  # --fresh: move the old state aside before harvesting
    state_checked: bool = False

    @classmethod
    def from_config(cls, cfg: RunConfig, **kw: Any) -> RunContext:
        return cls(cfg=cfg, layout=RunLayout(cfg.run_path).ensure(), **kw)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        text = redact(json.dumps(data, indent=2, default=str, ensure_ascii=False))
        tmp.write_text(text, "utf-8")
        tmp.replace(path)
    except OSError as exc:  # disk full, read-only run folder: name it; the old file stays
        tmp.unlink(missing_ok=True)
        raise ConfigError(
            f"cannot write: {exc.strerror or exc}",
            file=str(path),
            hint="free disk space or make the run folder writable, then re-run to resume",
        ) from None


def check_run_state(ctx: RunContext) -> None:
    """Before anything is sent: refuse to lose, mix or re-buy the run folder's state
    (:mod:`apidistill.pipeline.state`); with ``--fresh``, move the old state aside first."""
    from apidistill.pipeline.state import guard_run_state, move_aside

    if ctx.state_checked:
        return
    if ctx.fresh:
        moved = move_aside(ctx.layout)
        if moved is not None:
            ctx.console.print(f"[bold]fresh start[/]: the earlier state was moved to {moved}")
    guard_run_state(ctx.layout, ctx.cfg)
    ctx.state_checked = True


# --------------------------------------------------------------------------- policy


def policy_stage(ctx: RunContext) -> Decision:
    """Decide and enforce the teacher's terms before anything is sent; record the decision."""
    from apidistill.policy.engine import decide_for_teacher, enforce

    cfg = ctx.cfg
    decision = enforce(decide_for_teacher(cfg.teacher, cfg.policy), cfg.policy)
    _write_json(ctx.layout.policy, decision.model_dump(mode="json"))
    cite = f" — {decision.citation()}" if decision.document else ""  # document, date, clause
    ctx.console.print(
        f"[bold]policy[/]: {decision.decision} for use '{decision.use}'{cite} "
        f"[dim](decision {decision.id}; engineering help, not legal advice)[/]"
    )
    return decision


def load_decision(ctx: RunContext) -> Decision | None:
    from apidistill.policy.schema import Decision

    if not ctx.layout.policy.is_file():
        return None
    return Decision.model_validate_json(ctx.layout.policy.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- estimate


def estimate_stage(ctx: RunContext, batch: PromptBatch, rescore: Any = ()) -> Estimate:
    """``rescore``: the part of ``batch.requests`` that re-scores imported answers
    (``harvest.rescore``), shown as its own row."""
    from apidistill.costs.estimate import estimate, render_estimate

    est = estimate(ctx.cfg, batch.requests, rescore=rescore)
    _write_json(ctx.layout.estimate, est.model_dump(mode="json"))
    ctx.console.print(render_estimate(est))
    return est


# --------------------------------------------------------------------------- harvest


@dataclass
class HarvestOutcome:
    """What one harvest did: the engine's summary (also ``harvest_summary.json``; None if it
    never started), answers (in the journal, indexed by ``answers.jsonl``), requests that
    failed, wall seconds, whether logprobs were asked."""

    summary: HarvestSummary | None
    records: int
    failed: int
    wall_s: float
    logprobs: bool


def _logprob_counts(comp: Any) -> dict[str, int]:
    """The answer's NaN/±inf/masked logprob counts, in the record when there are any."""
    counts = {"logprobs_invalid": comp.logprobs_invalid, "logprobs_dropped": comp.logprobs_dropped}
    return {k: v for k, v in counts.items() if v}


def record_from_result(result: Any, decision: Any, teacher_cfg: Any) -> Record:
    """A dataset record from one answered teacher request (student-side input, provenance)."""
    req, comp = result.request, result.completion
    meta = dict(req.metadata)
    student = [Message.model_validate(m) for m in meta.pop("student_messages")]
    rid = meta.pop("prompt_id") or result.key[:16]
    if req.sample_index:  # harvest.n > 1: one record per paid sample, tied to its prompt
        meta["sample_of"] = rid
        rid = f"{rid}-s{req.sample_index}"
    return Record(
        id=rid,
        messages=student,
        completion=comp.text,
        finish_reason=comp.finish_reason,
        logprobs=comp.logprobs,
        label=meta.pop("label", None),
        gold=meta.pop("gold", None),
        metadata={
            "request_key": result.key,
            "latency_ms": comp.latency_ms,
            **_logprob_counts(comp),
            # what shaped the answer besides the prompt; absent when the answer predates it
            **({"sampling": comp.sampling} if comp.sampling else {}),
            **meta,
        },
        provenance=Provenance(
            provider=comp.provider,
            model=comp.model,
            base_url=teacher_cfg.base_url,
            model_version=comp.model_version,
            policy_decision_id=getattr(decision, "id", None),
            terms_document=getattr(decision, "document", None),
            terms_version=str(getattr(decision, "effective_date", "") or "") or None,
        ),
        usage=comp.usage,
        cost_usd=comp.cost_usd,
    )


def _check_logprob_capability(ctx: RunContext, teacher: Any) -> bool:
    """Whether logprobs will be harvested; fail before spending when KD needs them.

    A fallback to sequence KD is a decision the train stage needs, so it is written into the
    run folder (:func:`effective_training` reads it), not kept in this process's config: a
    later ``apidistill train`` in a new process trains the same way. A harvest that gets its
    logprobs removes a fallback file an earlier harvest of this run wrote.
    """
    h, cfg = ctx.cfg.harvest, ctx.cfg
    if not h.logprobs:
        return False
    caps = teacher.capabilities
    if caps.output_logprobs and caps.max_top_logprobs >= h.top_logprobs:
        ctx.layout.logprob_fallback.unlink(missing_ok=True)
        return True
    why = (
        f"teacher {cfg.teacher.provider}:{cfg.teacher.model} gives no output logprobs"
        if not caps.output_logprobs
        else f"teacher gives at most top-{caps.max_top_logprobs} logprobs, "
        f"harvest.top_logprobs asks {h.top_logprobs}"
    )
    if h.on_missing_logprobs == "sequence_kd" or cfg.training.method == "sequence_kd":
        ctx.console.print(
            f"[yellow]warning[/]: {why}; harvesting text only and training with sequence KD "
            "(harvest.on_missing_logprobs: sequence_kd)"
        )
        if cfg.training.method != "sequence_kd":
            _write_json(
                ctx.layout.logprob_fallback,
                {"configured": cfg.training.method, "method": "sequence_kd", "reason": why},
            )
        return False
    raise CapabilityError(
        why,
        hint="use a teacher with logprobs, or set harvest.on_missing_logprobs: sequence_kd "
        "(or training.method: sequence_kd)",
    )


def effective_training(ctx: RunContext) -> TrainingConfig:
    """The training settings this run trains with: the run file's, except that a sequence-KD
    fallback the harvest wrote (``logprob_fallback.json``) replaces logprob KD."""
    path = ctx.layout.logprob_fallback
    training = ctx.cfg.training
    if training.method == "sequence_kd" or not path.is_file():
        return training
    try:
        fallback = json.loads(path.read_text(encoding="utf-8"))
        reason = str(fallback["reason"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"cannot read the sequence-KD fallback decision: {exc}",
            file=str(path),
            hint="re-run the harvest (apidistill harvest config.yaml): it writes the file again",
        ) from None
    ctx.console.print(
        f"[yellow]training with sequence KD[/]: {reason} (decided at harvest, {path.name})"
    )
    return training.model_copy(update={"method": "sequence_kd"})


def harvest_stage(
    ctx: RunContext, batch: PromptBatch, decision: Any, *, teacher_base_url: str | None = None
) -> HarvestOutcome:
    """Send every request not already in the journal; write all answers as records.
    ``teacher_base_url``: the address of the teacher server the pipeline started
    (:func:`apidistill.pipeline.teacher_stages.run_teacher_stages`), else the run file's."""
    import time

    from apidistill.costs.budget import Budget
    from apidistill.costs.prices import price_for_teacher
    from apidistill.costs.tokens import TokenCounter
    from apidistill.data.answers import AnswerRef, write_answer_refs
    from apidistill.harvest import HarvestOptions, harvest
    from apidistill.teachers import make_teacher
    from apidistill.teachers.token_recovery import lossy_text_warning

    cfg = ctx.cfg
    check_run_state(ctx)
    teacher = make_teacher(cfg.teacher, base_url=teacher_base_url)
    wants_logprobs = _check_logprob_capability(ctx, teacher)
    if not wants_logprobs:
        for r in batch.requests:
            r.params.logprobs, r.params.top_logprobs = False, 0
    elif warning := lossy_text_warning(teacher.capabilities.quirks, cfg.teacher.tokenizer):
        ctx.console.print(f"[yellow]warning[/]: {warning}")
    price = price_for_teacher(cfg.teacher)
    budget = Budget(
        ctx.budget_override if ctx.budget_override is not None else cfg.budget.usd,
        per_day=cfg.budget.per_day_usd,
    )
    counter = TokenCounter(cfg.teacher)

    def count(req: Any) -> int:
        """What the budget reserves for: a bound the teacher's usage cannot exceed."""
        return counter.bound(req).n

    batch_client = None
    if cfg.harvest.use_batch_api:
        from apidistill.teachers import make_batch_client

        batch_client = make_batch_client(cfg.teacher, timeout_s=cfg.harvest.timeout_s)

    max_requests = ctx.max_requests if ctx.max_requests is not None else cfg.harvest.max_requests
    n_ok = n_failed = 0
    t0 = time.perf_counter()

    streams: list[Any] = []
    budget_stop: list[BudgetExceeded] = []
    answered: list[AnswerRef] = []  # the journal holds each answer; this is its index

    async def _run():
        nonlocal n_ok, n_failed
        gen = harvest(
            batch.requests,
            teacher=teacher,
            journal=ctx.layout.journal,
            # 0 means send nothing (answer from the journal only), not "no limit"
            config=cfg.harvest.model_copy(update={"max_requests": max_requests}),
            budget=budget,
            price=price,
            progress=ctx.progress,
            options=HarvestOptions(count_input_tokens=count, batch_client=batch_client),
        )
        streams.append(gen)
        try:
            async for res in gen:
                if res.completion is None:
                    n_failed += 1
                    continue
                req = res.request
                answered.append(AnswerRef(res.key, req.sample_index, dict(req.metadata)))
                n_ok += 1
        except BudgetExceeded as exc:  # after the last result: keep what was answered
            budget_stop.append(exc)
        finally:
            await gen.aclose()
            await teacher.aclose()
        return getattr(gen, "summary", None)

    try:
        summary = asyncio.run(_run())
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM: say what the drained run saved, then exit
        stopped = getattr(streams[0], "summary", None) if streams else None
        if stopped is not None:
            ctx.console.print(f"[yellow]harvest interrupted[/]: {n_ok} answers saved")
            for line in stopped.lines():
                ctx.console.print(f"  {line}", highlight=False)
            _write_json(ctx.layout.root / "harvest_summary.json", stopped.as_dict())
        if cfg.harvest.use_batch_api:  # say that the batches still run and bill, and how to stop
            from rich.markup import escape

            from apidistill.harvest.batch_journal import interrupted_batch_lines

            for line in interrupted_batch_lines(cfg, ctx.layout.journal):
                ctx.console.print(f"[yellow]{escape(line)}[/]", highlight=False)
        raise
    write_answer_refs(ctx.layout.answers, answered)
    wall = time.perf_counter() - t0
    ctx.console.print(f"[bold]harvest[/]: {n_ok} answers, {n_failed} failed, {wall:.0f} s")
    if summary is not None:
        for line in summary.lines():
            ctx.console.print(f"  {line}", highlight=False)
        _write_json(ctx.layout.root / "harvest_summary.json", summary.as_dict())
    if budget_stop:  # the summary and the answers are saved; the run stops here
        raise budget_stop[0]
    return HarvestOutcome(summary, n_ok, n_failed, wall, wants_logprobs)


def retry_failed_of(cfg: RunConfig) -> Any:
    """The run's ``harvest.retry_failed`` (or ``--retry-failed``), checked."""
    from apidistill.harvest.retry_failed import RetryFailed

    return RetryFailed.parse(cfg.harvest.retry_failed, key="harvest.retry_failed")


# --------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class DatasetOutcome:
    """Records harvested, records kept after filters/dedupe/balance, records per split; the
    dataset itself and its card are in ``dataset/``."""

    harvested: int
    kept: int
    splits: dict[str, int]


def harvested_records(ctx: RunContext, decision: Any = None) -> list[Record]:
    """The last harvest's answers as records, read from the journal (the one copy of every
    answer) through the harvest's index ``answers.jsonl``, in the order they arrived."""
    from apidistill.data.answers import journal_answers, read_answer_refs

    refs = read_answer_refs(ctx.layout.answers)
    answers = journal_answers(ctx.layout.journal, refs)
    return [record_from_result(a, decision, ctx.cfg.teacher) for a in answers]


def dataset_stage(ctx: RunContext, decision: Any = None) -> DatasetOutcome:
    """Build the records from the journal (plus the run's imports, docs/import.md); filter,
    dedupe, balance and split them; write each split once (compact codec) and the data card,
    whose spend is the run's ledger."""
    from apidistill.data.curate import curate
    from apidistill.data.store import load_records
    from apidistill.pipeline.imports import IMPORTED, import_decisions, merge_rescored

    imported_dir = ctx.layout.root / IMPORTED
    has_imports = bool(ctx.cfg.prompts.imports) and imported_dir.is_dir()
    # A run built only from imports (no prompts file, nothing to re-score) harvested nothing.
    harvested = (
        harvested_records(ctx, decision) if ctx.layout.answers.is_file() or not has_imports else []
    )
    if has_imports:
        imported = load_records(imported_dir)
        records = merge_rescored(imported, harvested, ctx.cfg.harvest.rescore_on_mismatch)
    else:
        records = harvested
    if not records:
        raise DataError(
            "no harvested records to build a dataset from",
            file=str(ctx.layout.answers),
            hint="run the harvest first (apidistill harvest config.yaml)",
        )
    result = curate(records, ctx.cfg.dataset)
    if not result.records:
        raise DataError(
            f"every harvested record was dropped ({result.filtered.dropped_by_reason})",
            file=str(ctx.layout.answers),
            hint="check dataset.filters against a few teacher answers (apidistill data inspect)",
        )
    result.save(ctx.layout.dataset, overwrite=True)
    card = result.card(
        name=ctx.cfg.name,
        ledger=run_ledger(ctx),
        teachers=[
            {
                "provider": ctx.cfg.teacher.provider,
                "model": ctx.cfg.teacher.model,
                "base_url": ctx.cfg.teacher.base_url,
                # a teacher the run started itself answered on a loopback port that is gone
                # now: the card names the model it served instead
                **(
                    {"served_by_apidistill": ctx.cfg.teacher.launch.model}
                    if ctx.cfg.teacher.launch is not None
                    else {}
                ),
            }
        ],
        policy=([decision.model_dump(mode="json")] if decision is not None else [])
        + import_decisions(ctx),
        policy_markdown=_obligations_md(decision),
    )
    card.write(ctx.layout.dataset)
    counts = {s: len(result.split.of(s)) for s in ("train", "validation", "test")}
    ctx.console.print(
        f"[bold]dataset[/]: {len(records)} harvested → {len(result.filtered.kept)} after filters "
        f"→ {len(result.records)} after dedupe/balance; splits {counts}"
    )
    return DatasetOutcome(len(records), len(result.records), counts)


def run_ledger(ctx: RunContext) -> dict[str, Any] | None:
    """The run journal's ledger (:meth:`Ledger.card`): the one source of the spend that the
    dataset card and the eval report show. ``None`` before anything was harvested."""
    from apidistill.costs.ledger import Ledger

    if not ctx.layout.journal.is_file():
        return None
    return Ledger(ctx.layout.journal).card()


def run_spend(ctx: RunContext) -> dict[str, Any] | None:
    """The ledger's totals line of the run (settled, at risk, sends), for the report."""
    ledger = run_ledger(ctx)
    return ledger["total"] if ledger else None  # type: ignore[return-value]


def _obligations_md(decision: Any) -> str | None:
    if decision is None:
        return None
    from apidistill.policy.obligations import render_obligations_md

    return render_obligations_md([decision])


# --------------------------------------------------------------------------- train


def train_stage(
    ctx: RunContext, *, resume: bool = True, student: Any = None, out_dir: Path | None = None
) -> TrainResult:
    """Train ``student`` (default: the run file's) into ``out_dir`` (default: <run>/train)."""
    from apidistill.pipeline.preflight import recheck_training_terms
    from apidistill.train.api import train_student
    from apidistill.train.compact_targets import load_compact_split

    # The terms the data was bought under, for this run's use, before any training starts.
    recheck_training_terms(ctx.cfg, ctx.layout.dataset)
    # Logprobs stay in the dataset's compact arrays; training reads them into tensors.
    train, compact = load_compact_split(ctx.layout.dataset, "train")
    val, val_compact = load_compact_split(ctx.layout.dataset, "validation")
    return train_student(
        train,
        val or None,
        compact=compact | val_compact,
        student=student or ctx.cfg.student,
        training=effective_training(ctx),
        out_dir=out_dir or ctx.layout.train,
        teacher_tokenizer=ctx.cfg.teacher.tokenizer,
        resume=resume,
        progress=ctx.progress,
    )


def load_split(ctx: RunContext, split: str) -> list[Record]:
    from apidistill.data.store import load_records

    recs = load_records(ctx.layout.dataset, split=split)
    if not recs:
        raise EvalError(
            f"the dataset has no '{split}' split",
            hint=f"set dataset.splits.{split} > 0 and re-run the dataset stage",
        )
    return recs
