"""The run's imported data: ``prompts.imports`` read into ``<run>/imported``, the re-score
requests (``harvest.rescore``) built from it, and the merge the dataset stage does.

Imported records enter the dataset beside the harvested ones, so they are filtered,
deduplicated, split, trained on and evaluated the same way. Re-scoring (docs/import.md#rescore)
sends each imported input that has no logprobs to the run's teacher, through the harvest
engine (journal, budget, ledger, retries), and compares the answers:

- the regenerated answer is the imported one, character for character: the imported record
  takes the teacher's logprobs (they are the logprobs *of that answer*);
- they differ: ``harvest.rescore_on_mismatch`` keeps the imported answer without logprobs
  (``keep_imported``, the default: it trains on sequence loss only) or replaces it by the
  regenerated answer with its logprobs (``regenerated``; the imported text is kept in
  ``metadata["imported_completion"]``).

OpenAI's chat API cannot score a given answer (there is no ``echo`` for chat models and an
assistant prefill is not continued), so regenerating is the only way to get logprobs there;
at temperature 0 a fine-tune usually repeats its own answers, but not always.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from apidistill.config import RunConfig
from apidistill.pipeline.stages import RunContext
from apidistill.records import Record, TeacherRequest

__all__ = [
    "IMPORTED",
    "import_decisions",
    "import_into_batch",
    "import_stage",
    "merge_rescored",
    "rescore_requests",
]

IMPORTED = "imported"
DOWNLOADS = "import_downloads"


def import_stage(ctx: RunContext) -> list[Record]:
    """Read every ``prompts.imports`` source, enforce the terms of the models that wrote the
    answers (:func:`~apidistill.importers.run.decide_imports`), write ``<run>/imported``."""
    from apidistill.data.prompts import skipped_report
    from apidistill.importers.run import import_records, load_source, write_import

    cfg = ctx.cfg
    if not cfg.prompts.imports:
        return []
    loads = [
        load_source(src, resolve=cfg.resolve_path, cache_dir=ctx.layout.root / DOWNLOADS)
        for src in cfg.prompts.imports
    ]
    result = import_records(loads, cfg.policy)
    kept = _keep_earlier_stored(ctx, result)
    write_import(result, ctx.layout.root / IMPORTED, overwrite=True)
    if kept:
        ctx.console.print(
            f"[yellow]import[/]: {kept} stored completions imported by an earlier run are no "
            "longer listed (deleted or expired); their records are kept",
            highlight=False,
        )
    if result.skipped:
        report = skipped_report(result.skipped, result.problems).replace("prompts:", "import:")
        ctx.console.print(f"[yellow]{report}[/]", highlight=False)
    for d in result.decisions.values():
        ctx.console.print(
            f"[bold]policy[/] (imported answers): {d.provider} / {d.model}: {d.decision} for "
            f"use '{d.use}' — {d.citation()} [dim](decision {d.id})[/]",
            highlight=False,
        )
    with_lp = sum(1 for r in result.records if r.logprobs)
    failed = f", {result.failed} requests without an answer" if result.failed else ""
    ctx.console.print(
        f"[bold]import[/]: {len(result.records)} records ({with_lp} with logprobs{failed})",
        highlight=False,
    )
    return result.records


def _keep_earlier_stored(ctx: RunContext, result: Any) -> int:
    """Stored completions can be deleted or expire between runs; records an earlier run
    imported from them stay (a local file is read again as it is now, so an edit to it wins)."""
    from apidistill.data.store import load_records

    folder = ctx.layout.root / IMPORTED
    if not (folder / "manifest.json").is_file():
        return 0
    have = {r.id for r in result.records}
    earlier = [
        r
        for r in load_records(folder)
        if r.id not in have and (r.metadata.get("import") or {}).get("source") == "openai_stored"
    ]
    result.records.extend(earlier)
    if earlier:  # their terms decisions travel with them into the new card
        from apidistill.policy.schema import Decision

        for d in import_decisions(ctx):
            dec = Decision.model_validate(d)
            result.decisions.setdefault((dec.provider, dec.model), dec)
    return len(earlier)


def import_into_batch(ctx: RunContext, batch: Any) -> list[TeacherRequest]:
    """Import ``prompts.imports`` into the run; add the re-score requests
    (``harvest.rescore``) to ``batch`` and return them (the estimate shows them apart).
    Call after the teacher's policy stage: the imported models' terms are enforced here."""
    records = import_stage(ctx)
    rescore, other = rescore_requests(ctx.cfg, records)
    if other:
        ctx.console.print(
            f"[yellow]rescore[/]: {other} imported records without logprobs were written by "
            f"another model than the teacher {ctx.cfg.teacher.model}; they are not re-scored "
            "(they train on sequence loss only)"
        )
    batch.requests.extend(rescore)
    return rescore


def import_decisions(ctx: RunContext) -> list[dict[str, Any]]:
    """The terms decisions the run's imports were made under (for the data card)."""
    path = ctx.layout.root / IMPORTED / "import.json"
    if not path.is_file():
        return []
    return list(json.loads(path.read_text(encoding="utf-8")).get("decisions", []))


def _same_model(record_model: str, teacher_model: str) -> bool:
    """The teacher is the model that wrote the record (a dated snapshot of it counts)."""
    return record_model == teacher_model or record_model.startswith(teacher_model + "-")


def rescore_requests(cfg: RunConfig, records: Sequence[Record]) -> tuple[list[TeacherRequest], int]:
    """Requests that re-harvest logprobs for imported records lacking them (when
    ``harvest.rescore``), and how many such records another model wrote (not re-scored:
    a different model's logprobs are not the logprobs of that answer)."""
    from apidistill.pipeline.teacher_requests import generation_params

    if not cfg.harvest.rescore:
        return [], 0
    params = generation_params(cfg)
    out: list[TeacherRequest] = []
    other = 0
    for r in records:
        if r.logprobs or r.messages is None:
            continue
        model = r.provenance.model if r.provenance else ""
        if not _same_model(model, cfg.teacher.model):
            other += 1
            continue
        meta = {
            "prompt_id": r.id,
            "label": r.label,
            "gold": r.gold,
            "student_messages": [m.model_dump() for m in r.messages],
            "rescore_of": r.id,
        }
        out.append(
            TeacherRequest(messages=list(r.messages), params=params, prompt_id=r.id, metadata=meta)
        )
    return out, other


def _add(a: Decimal | None, b: Decimal | None) -> Decimal | None:
    return None if a is None and b is None else (a or Decimal(0)) + (b or Decimal(0))


def merge_rescored(
    imported: Sequence[Record], harvested: Sequence[Record], on_mismatch: str
) -> list[Record]:
    """Harvested records, then imported records, each imported one merged with its re-score
    answer when there is one (the rules in the module docstring)."""
    rescored = {r.metadata.get("rescore_of"): r for r in harvested if r.metadata.get("rescore_of")}
    out = [r for r in harvested if not r.metadata.get("rescore_of")]
    for rec in imported:
        again = rescored.get(rec.id)
        if again is None:
            out.append(rec)
            continue
        cost = None if again.cost_usd is None else str(again.cost_usd)
        info = {"request_key": again.metadata.get("request_key"), "cost_usd": cost}
        if again.completion == rec.completion:
            meta = {**rec.metadata, "rescore": {"result": "match", **info}}
            update = {"logprobs": again.logprobs, "metadata": meta}
        elif on_mismatch == "regenerated":
            meta = {
                **rec.metadata,
                "rescore": {"result": "regenerated", **info},
                "imported_completion": rec.completion,
            }
            update = {
                "completion": again.completion,
                "finish_reason": again.finish_reason,
                "logprobs": again.logprobs,
                "metadata": meta,
            }
        else:
            update = {"metadata": {**rec.metadata, "rescore": {"result": "mismatch", **info}}}
        update["cost_usd"] = _add(rec.cost_usd, again.cost_usd)
        out.append(rec.model_copy(update=update))
    return out
