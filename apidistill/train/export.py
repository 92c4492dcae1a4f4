"""Export a trained student: adapter, merged safetensors, tokenizer, model card, vLLM command.

Layout (``merge=True``)::

    out_dir/                 merged model (config.json, model.safetensors) + tokenizer:
                             ``apidistill serve --model out_dir`` and ``vllm serve out_dir``
    out_dir/adapter/         the LoRA adapter + base_model.txt + tokenizer, for multi-LoRA
    out_dir/README.md        model card (training summary, teacher terms and obligations,
                             the caller's sections)
    out_dir/serve_vllm.sh    ready vLLM command lines (merged and multi-LoRA)

With ``merge=False`` the adapter itself is at the top (``apidistill.models.load_model``
loads a folder with ``adapter_config.json`` as base + adapter, the base named in
``base_model.txt``). A full fine-tune is copied as is.

The student's system prompt (``StudentConfig.system_prompt``) is written into the exported
chat template as the default system turn, so a client that sends only the user message
gets exactly the prompt the student was trained on — from ``apidistill serve`` and vLLM
alike.

**Terms.** The model card's "Teacher terms and obligations" section is built here, not by the
caller: export reads the training dataset's records (``dataset=``, or the run layout's
``<run>/dataset`` next to ``<run>/train``), resolves the terms decision each record was
harvested under (:func:`apidistill.policy.provenance.dataset_terms`) and lists every
teacher's decision, citation and obligations — e.g. a Llama 3.1 teacher's required "Llama"
name prefix and "Built with Llama" attribution. With ``intended_use`` the decisions are
re-checked for the student's use first (:func:`apidistill.policy.engine.check_student_use`).

**Safetensors only.** Weights in a pickle format (``adapter_model.bin``,
``pytorch_model.bin``, ``*.pt``/``*.pth``/``*.ckpt``/``*.pkl``) can run code when loaded; export
refuses a source folder that holds any, instead of loading or copying them.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from apidistill.errors import TrainingError, redact
from apidistill.train.api import TrainResult

if TYPE_CHECKING:
    from apidistill.config import PolicyConfig

__all__ = ["bake_system_prompt", "export_student", "refuse_pickle_weights"]

_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
_BASE_FILE = "base_model.txt"


def bake_system_prompt(chat_template: str, system_prompt: str) -> str:
    """A chat template that inserts ``system_prompt`` when the messages have no system turn."""
    literal = json.dumps(system_prompt, ensure_ascii=False)
    prefix = (
        "{%- if not (messages and messages[0]['role'] == 'system') %}"
        "{%- set messages = [{'role': 'system', 'content': " + literal + "}] + messages %}"
        "{%- endif %}"
    )
    return prefix + chat_template


def refuse_pickle_weights(folder: Path) -> None:
    """Raise when ``folder`` holds weights in a pickle format: untrusted files are safetensors
    only (the formats are :func:`apidistill.models.pickle_weight_files`')."""
    from apidistill.models import pickle_weight_files

    pickled = pickle_weight_files(folder)
    if pickled:
        f = Path(folder) / pickled[0]
        raise TrainingError(
            f"{f}: pickle-format weights are refused (untrusted files are safetensors "
            f"only); convert it to safetensors ({f.stem}.safetensors) and remove {f.name}"
        )


def _resolve_source(result_or_dir: TrainResult | Path | str) -> tuple[Path, TrainResult | None]:
    if isinstance(result_or_dir, TrainResult):
        return result_or_dir.final_dir, result_or_dir
    src = Path(result_or_dir)
    if (src / "train_result.json").is_file():
        res = TrainResult.load(src)
        return res.final_dir, res
    if (src / "adapter_config.json").is_file() or (src / "config.json").is_file():
        return src, None
    raise TrainingError(
        f"{src}: not a training output (no train_result.json, adapter_config.json or config.json)",
        hint="pass the out_dir of train_student / `apidistill train`, or its adapter folder",
    )


def _save_tokenizer(src: Path, base_model: str, system_prompt: str | None, *dests: Path) -> None:
    from apidistill.models import load_tokenizer

    tok = load_tokenizer(str(src)) if (src / "tokenizer_config.json").is_file() else None
    tok = tok or load_tokenizer(base_model)
    template = tok.chat_template
    if system_prompt is not None and template:
        if isinstance(template, dict):  # named templates: bake into the default one
            template = {
                **template,
                "default": bake_system_prompt(template["default"], system_prompt),
            }
        else:
            template = bake_system_prompt(template, system_prompt)
        tok.chat_template = template
    for d in dests:
        tok.save_pretrained(str(d))


def _copy_adapter(src: Path, dest: Path, base_model: str) -> dict:
    dest.mkdir(parents=True, exist_ok=True)
    for name in _ADAPTER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
    (dest / _BASE_FILE).write_text(base_model + "\n", encoding="utf-8")
    return json.loads((src / "adapter_config.json").read_text(encoding="utf-8"))


def _merge(src: Path, base_model: str, dest: Path) -> None:
    from apidistill.models import load_model

    model = load_model(base_model, adapter=str(src))
    merged = model.merge_and_unload()
    merged.save_pretrained(str(dest))


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


def _vllm_lines(
    out_ref: str, name: str, adapter_cfg: dict | None, merged: bool, base_ref: str | None = None
) -> list[str]:
    """vLLM command lines for the export at ``out_ref`` (a shell word, already quoted);
    ``base_ref`` replaces the adapter's base model path (quoted here)."""
    q = shlex.quote
    lines = []
    if merged:
        lines.append(f"vllm serve {out_ref} --served-model-name {q(name)}")
    if adapter_cfg is not None:
        base = base_ref or adapter_cfg.get("base_model_name_or_path") or ""
        adapter_ref = f"{out_ref}/adapter" if merged else out_ref
        lines.append(
            f"vllm serve {q(base)} --enable-lora "
            f"--lora-modules {q(name)}={adapter_ref} "
            f"--max-lora-rank {int(adapter_cfg.get('r', 16))} --tokenizer {adapter_ref}"
        )
    return lines


def _model_card(
    name: str,
    base_model: str,
    result: TrainResult | None,
    vllm: list[str],
    out_ref: str,
    sections: dict[str, str] | None,
    terms: str,
) -> str:
    lib = "peft" if result is None or result.adapter_dir else "transformers"
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
    serve = "\n".join([f"apidistill serve --model {out_ref}", *vllm])
    parts.append(
        f"## Serving\n\nFrom the folder that holds `{out_ref}` (a run's folder, for a run's "
        f"student):\n\n```bash\n{serve}\n```"
    )
    return "\n\n".join(parts) + "\n"


def _find_dataset(src: Path, result: TrainResult | None) -> Path | None:
    """The run layout's dataset next to the training folder (``<run>/train`` →
    ``<run>/dataset``), when it is a dataset."""
    from apidistill.data.shards import MANIFEST

    train_dir = result.out_dir if result is not None else src.parent
    candidate = Path(train_dir).parent / "dataset"
    return candidate if (candidate / MANIFEST).is_file() else None


def _terms_section(
    src: Path,
    result: TrainResult | None,
    dataset: Path | str | None,
    student_name: str,
    intended_use: str | None,
    policy_cfg: PolicyConfig | None,
) -> str:
    """The card's terms section, from the training data's recorded decisions."""
    from apidistill.policy.engine import check_student_use
    from apidistill.policy.obligations import render_obligations_md
    from apidistill.policy.provenance import dataset_terms

    folder = Path(dataset) if dataset is not None else _find_dataset(src, result)
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
    terms = dataset_terms(folder)
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


def export_student(
    result_or_dir: TrainResult | Path | str,
    out_dir: Path,
    *,
    base_model: str,
    merge: bool = True,
    model_card_sections: dict[str, str] | None = None,
    dataset: Path | str | None = None,
    name: str | None = None,
    intended_use: str | None = None,
    policy_cfg: PolicyConfig | None = None,
) -> Path:
    """Write a servable student folder to ``out_dir`` and return it.

    ``result_or_dir`` is a :class:`TrainResult`, a training ``out_dir`` or an adapter /
    model folder. The model card's terms section lists the decisions and obligations
    recorded with the training data: ``dataset`` names its folder, by default the run
    layout's ``<run>/dataset`` beside ``<run>/train``. ``intended_use`` (with the run's
    ``policy_cfg`` for its references) re-checks those decisions for the student's use
    first. ``name`` is the student's name in the card and the vLLM commands (default: the
    folder name); a name lacking a required prefix (e.g. "Llama") is flagged in the card.
    ``model_card_sections`` (title → markdown) go into README.md verbatim: the training
    data card, the evaluation summary.
    """
    src, result = _resolve_source(result_or_dir)
    refuse_pickle_weights(src)
    out_dir = Path(out_dir)
    name = name or out_dir.resolve().name
    # Decide the terms before writing anything: a refused use leaves no half-made export.
    terms = _terms_section(src, result, dataset, name, intended_use, policy_cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    system_prompt = result.system_prompt if result is not None else None
    is_adapter = (src / "adapter_config.json").is_file()
    adapter_cfg = None
    if is_adapter:
        adapter_home = out_dir / "adapter" if merge else out_dir
        adapter_cfg = _copy_adapter(src, adapter_home, base_model)
        if merge:
            _merge(src, base_model, out_dir)
        _save_tokenizer(src, base_model, system_prompt, *{adapter_home, out_dir})
    else:
        for f in src.iterdir():
            if f.is_file() and f.suffix in {".json", ".safetensors", ".jinja", ".txt", ".model"}:
                shutil.copy2(f, out_dir / f.name)
        _save_tokenizer(src, base_model, system_prompt, out_dir)
    merged = merge or not is_adapter
    # The script finds its own folder, so it works wherever the student is copied to.
    vllm = _vllm_lines('"$HERE"', name, adapter_cfg, merged)
    script = (
        "#!/bin/sh\n# Serve this student with vLLM (pick one line).\n"
        'HERE="$(cd "$(dirname "$0")" && pwd)"\n' + "\n".join(vllm) + "\n"
    )
    (out_dir / "serve_vllm.sh").write_text(script, encoding="utf-8")
    # The card names paths relative to the folder that holds the export (the run folder,
    # for a run's student), never this machine's absolute paths.
    home = out_dir.resolve().parent
    here = shlex.quote(out_dir.resolve().name)
    base_shown = shown_path(base_model, home)
    adapter_base = (adapter_cfg or {}).get("base_model_name_or_path")
    card_vllm = _vllm_lines(
        here, name, adapter_cfg, merged, shown_path(adapter_base, home) if adapter_base else None
    )
    card = _model_card(name, base_shown, result, card_vllm, here, model_card_sections, terms)
    (out_dir / "README.md").write_text(redact(card), encoding="utf-8")  # no configured key
    return out_dir
