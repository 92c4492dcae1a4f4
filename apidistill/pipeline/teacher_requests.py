"""Turn a run file's prompts into provider-neutral teacher requests.

Each request carries, in ``metadata``, what the dataset stage needs to build a
:class:`~apidistill.records.Record` from the answer: the row id, the student-side input,
the label and the gold answer. The cache key covers only what changes the teacher's answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from apidistill.config import RunConfig
from apidistill.pipeline.template import PromptTemplate, load_template
from apidistill.records import GenerationParams, Message, TeacherRequest

__all__ = ["PromptBatch", "build_requests", "generation_params", "load_prompts"]


@dataclass
class PromptBatch:
    requests: list[TeacherRequest]
    template: PromptTemplate
    skipped: int
    problems: list[str]


def generation_params(cfg: RunConfig) -> GenerationParams:
    h = cfg.harvest
    return GenerationParams(
        max_tokens=h.max_tokens,
        temperature=h.temperature,
        top_p=h.top_p,
        stop=h.stop,
        seed=h.seed,
        logprobs=h.logprobs,
        top_logprobs=h.top_logprobs,
    )


def _student_messages(task_input: str | list[Message]) -> list[Message]:
    if isinstance(task_input, str):
        return [Message(role="user", content=task_input)]
    return list(task_input)


def load_prompts(cfg: RunConfig) -> PromptBatch:
    """Load the prompt rows and the prototype prompt; build one request per row and sample."""
    from apidistill.data.prompts import load_prompt_rows

    p = cfg.prompts
    template = load_template(cfg.resolve_path(p.template) if p.template else None)
    if p.path is None:  # every input comes from prompts.imports (pipeline/imports.py)
        return PromptBatch([], template, 0, [])
    loaded = load_prompt_rows(
        cfg.resolve_path(p.path),
        format=p.format,
        input_field=p.input_field,
        id_field=p.id_field,
        label_field=p.label_field,
        gold_field=p.gold_field,
        skip_invalid=p.skip_invalid,
        limit=p.limit,
    )
    params = generation_params(cfg)
    requests: list[TeacherRequest] = []
    for row in loaded.rows:
        student = _student_messages(row.input)
        meta = {
            "prompt_id": row.id,
            "label": row.label,
            "gold": row.gold,
            "student_messages": [m.model_dump() for m in student],
        }
        for i in range(cfg.harvest.n):
            requests.append(
                TeacherRequest(
                    messages=template.render(row.input),
                    params=params,
                    sample_index=i,
                    prompt_id=row.id,
                    metadata=meta,
                )
            )
    return PromptBatch(requests, template, loaded.skipped, loaded.problems)


def build_requests(cfg: RunConfig) -> list[TeacherRequest]:
    """The teacher requests of a run file, in file order."""
    return load_prompts(cfg).requests
