"""Policy → estimate → teacher server → harvest: the one place these stages run in order.

``apidistill run``, ``apidistill harvest`` and :class:`apidistill.Distiller` all call
:func:`run_teacher_stages`; before, each wrote the sequence itself and they drifted (only
``run`` skipped starting a self-hosted teacher whose every answer was already in the journal).
The teacher server lives only inside this function: its address is handed to the harvest stage
as an argument and never stored on the run's context or config, so no later stage can depend
on an address that stopped answering when the harvest ended.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from apidistill.config import RunConfig
from apidistill.pipeline.stages import (
    HarvestOutcome,
    RunContext,
    check_run_state,
    estimate_stage,
    harvest_stage,
    policy_stage,
    retry_failed_of,
)
from apidistill.pipeline.teacher_requests import PromptBatch

if TYPE_CHECKING:
    from apidistill.costs.estimate import Estimate
    from apidistill.policy.schema import Decision
    from apidistill.records import TeacherRequest

__all__ = ["TeacherStages", "harvest_complete", "run_teacher_stages", "teacher_server"]

# Never contacted: stands in for the teacher server when every request is already answered.
_UNUSED_URL = "http://127.0.0.1:9/v1"


@dataclass(frozen=True)
class TeacherStages:
    """What the teacher-side stages produced. Each part is also a file in the run folder
    (``policy.json``, ``estimate.json``, the journal with ``answers.jsonl`` and
    ``harvest_summary.json``), which is
    what a later stage in another process reads."""

    decision: Decision
    estimate: Estimate | None = None  # None: not asked for, or stopped at the policy
    harvest: HarvestOutcome | None = None  # None: stopped before, or nothing to ask
    cached: bool = False  # every request was answered by the journal: no teacher was started
    # the re-score requests of imported answers (harvest.rescore) among the batch's requests
    rescore: list[TeacherRequest] = field(default_factory=list)


def harvest_complete(cfg: RunConfig, requests: list[Any], journal: Any) -> bool:
    """True when the journal already answers every request of a self-served teacher, so the
    teacher server need not even be started (a second demo run loads no teacher)."""
    if cfg.teacher.launch is None or not journal.is_file():
        return False
    from apidistill.storage.journal import JournalStore
    from apidistill.teachers import make_teacher

    teacher = make_teacher(cfg.teacher, base_url=_UNUSED_URL)
    keys = [r.cache_key(teacher.teacher_id, teacher.model) for r in requests]
    store = JournalStore(journal, readonly=True)
    try:
        rows = store.lookup(keys)
    finally:
        store.close()
    retry = retry_failed_of(cfg)
    return all(k in rows and retry.reuses(rows[k]) for k in keys)


@contextlib.contextmanager
def teacher_server(cfg: RunConfig, *, needed: bool = True) -> Iterator[str | None]:
    """Start ``apidistill serve`` as the teacher when the run file has a ``teacher.launch``
    block (self-hosted teacher, offline demo); yield its base URL, else ``None``."""
    if cfg.teacher.launch is None:
        yield None
        return
    if not needed:
        yield _UNUSED_URL
        return
    from apidistill.serve.launcher import launch_server

    s = cfg.teacher.launch
    with launch_server(
        s.model,
        adapter=s.adapter,
        port=s.port,
        max_batch_size=s.max_batch_size,
        served_model_name=cfg.teacher.model,
        backend=s.backend,
        threads=s.threads,
    ) as handle:
        yield handle.base_url


def run_teacher_stages(
    ctx: RunContext,
    batch: PromptBatch,
    *,
    until: Literal["policy", "estimate", "harvest"] = "harvest",
    estimate: bool = True,
    decision: Decision | None = None,
    rescore: list[TeacherRequest] | None = None,
) -> TeacherStages:
    """Check the run folder's state, decide the terms (unless ``decision`` was already made
    in this session), import ``prompts.imports`` and add their re-score requests to ``batch``
    (unless ``rescore`` says that was done), estimate the cost (``estimate``), then start the
    teacher server if the run file asks for one and any request still needs an answer, and
    harvest. A batch with no request (a run built only from imports) asks nothing.

    ``until`` names the last stage to run. The estimate needs no teacher server, so it runs
    (and ``until="estimate"`` returns) before one is started."""
    from apidistill.pipeline.imports import import_into_batch

    check_run_state(ctx)
    decision = decision if decision is not None else policy_stage(ctx)
    if until == "policy":
        return TeacherStages(decision)
    if rescore is None:  # after the policy: the imported models' terms are enforced there
        rescore = import_into_batch(ctx, batch)
    est = estimate_stage(ctx, batch, rescore=rescore) if estimate or until == "estimate" else None
    if until == "estimate" or not batch.requests:
        return TeacherStages(decision, est, rescore=rescore)
    cached = harvest_complete(ctx.cfg, batch.requests, ctx.layout.journal)
    if cached:
        ctx.console.print("[bold]harvest[/]: every request is answered in the journal")
    with teacher_server(ctx.cfg, needed=not cached) as url:
        outcome = harvest_stage(ctx, batch, decision, teacher_base_url=url)
    return TeacherStages(decision, est, outcome, cached, rescore)
