"""The model card every export format carries: training summary, prompt, the teachers' terms
and obligations, the caller's sections, and how to serve that format.

The terms section is built here, not by the caller: it reads the training dataset's records
(``dataset=``, or the run layout's ``<run>/dataset`` next to ``<run>/train``), resolves the
terms decision each record was harvested under (:func:`apidistill.policy.provenance
.dataset_terms`) and lists every teacher's decision, citation and obligations. With
``intended_use`` the decisions are re-checked for the student's use first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from apidistill.errors import TrainingError

if TYPE_CHECKING:
    from apidistill.config import PolicyConfig
    from apidistill.train.api import TrainResult

__all__ = ["find_dataset", "model_card", "shown_path", "terms_section"]


def shown_path(path: str, root: Path | None = None) -> str:
    """``path`` as a card shows it: relative to ``root`` when inside it, else a hub name as
    is, else only the folder's name. A model card travels (a hub upload, a colleague's
    machine): an absolute path would publish this machine's layout and user name, and
    would not work anywhere else."""
    p = Path(path).expanduser()
    if not (p.is_absolute() or p.exists()):
        return path  # a hub id or an embedded model's name
    p = p.resolve()
    if root is not None and p.is_relative_to(root.resolve()):
        return p.relative_to(root.resolve()).as_posix() or "."
    return p.name


def model_card(
    name: str,
    base_model: str,
    result: TrainResult | None,
    serving: str,
    sections: dict[str, str] | None,
    terms: str,
    *,
    library: str | None = None,
) -> str:
    """The README.md of an exported student: what it is, how it was trained, its prompt,
    the teachers' terms and obligations, the caller's sections and ``serving`` (markdown)."""
    lib = library or ("peft" if result is None or result.adapter_dir else "transformers")
    parts = [
        f"---\nbase_model: {json.dumps(base_model)}\nlibrary_name: {lib}\n"
        "tags: [apidistill, distillation]\n---",
        f"# {name}",
        f"A student model distilled with apidistill from a teacher's outputs; base model "
        f"`{base_model}`.",
    ]
    if result is not None:
        rows = [
            ("method", result.method),
            ("training examples", str(result.train_examples)),
            ("optimizer steps", str(result.steps)),
            ("training time (s)", f"{result.train_seconds:.1f}"),
        ]
        if result.method == "logprob_kd":
            rows.append(("answer tokens with teacher top-k", f"{result.supervised_share:.1%}"))
        rows += [(k, f"{v:.4g}") for k, v in sorted(result.eval_metrics.items())]
        table = "\n".join(f"| {k} | {v} |" for k, v in rows)
        parts.append(f"## Training\n\n| | |\n|---|---|\n{table}")
        prompt = result.system_prompt
        parts.append(
            "## Prompt\n\n"
            + (
                f"The system prompt below is built into the chat template:\n\n```\n{prompt}\n```"
                if prompt is not None
                else "No system prompt of its own: the chat template's default applies."
            )
        )
    parts.append(terms.strip())
    for title, body in (sections or {}).items():
        parts.append(f"## {title}\n\n{body.strip()}")
    parts.append(serving.strip())
    return "\n\n".join(parts) + "\n"


def find_dataset(src: Path, result: TrainResult | None) -> Path | None:
    """The run layout's dataset next to the training folder (``<run>/train`` →
    ``<run>/dataset``), when it is a dataset."""
    from apidistill.data.shards import MANIFEST

    train_dir = result.out_dir if result is not None else src.parent
    candidate = Path(train_dir).parent / "dataset"
    return candidate if (candidate / MANIFEST).is_file() else None


def terms_section(
    src: Path,
    result: TrainResult | None,
    dataset: Path | str | None,
    student_name: str,
    intended_use: str | None,
    policy_cfg: PolicyConfig | None,
) -> str:
    """The card's terms section, from the training data's recorded decisions."""
    from apidistill.data.store import iter_provenance
    from apidistill.policy.engine import check_student_use
    from apidistill.policy.obligations import render_obligations_md
    from apidistill.policy.provenance import dataset_terms

    folder = Path(dataset) if dataset is not None else find_dataset(src, result)
    if folder is None:
        if intended_use is not None:
            raise TrainingError(
                f"cannot re-check the teachers' terms for use {intended_use!r}: no training "
                f"dataset found next to {src}",
                hint="pass dataset= (the folder the student was trained from)",
            )
        return render_obligations_md(
            [],
            notes=[
                "No training dataset was found next to this student, so the terms its "
                "teachers' outputs carry are not known here; export it with the dataset "
                "(`dataset=`) to list them."
            ],
        )
    terms = dataset_terms(folder, iter_provenance(folder))
    decisions = list(terms.decisions)
    if intended_use is not None:
        for dec in check_student_use(terms.decisions, intended_use, policy_cfg=policy_cfg):
            if all(dec.id != d.id for d in decisions):
                decisions.append(dec)
    teachers = ", ".join(f"{t} ({n})" for t, n in sorted(terms.teachers.items())) or "none"
    notes = [
        f"Read from the training dataset `{folder.resolve().name}`: {terms.records} records; "
        f"teachers (records): {teachers}."
    ]
    if terms.undecided:
        notes.append(
            f"{terms.undecided} of {terms.records} records carry no terms decision (no "
            "harvest provenance): the terms of their source were not checked by apidistill."
        )
    return render_obligations_md(decisions, student_name=student_name, notes=notes)
