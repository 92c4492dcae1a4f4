"""Export a trained student: adapter, merged safetensors, tokenizer, model card, vLLM command.

Layout (``merge=True``)::

    out_dir/                 merged model (config.json, model.safetensors) + tokenizer:
                             ``apidistill serve --model out_dir`` and ``vllm serve out_dir``
    out_dir/adapter/         the LoRA adapter + base_model.txt + tokenizer, for multi-LoRA
    out_dir/README.md        model card (training summary, teacher terms and obligations,
                             the caller's sections)
    out_dir/serve_vllm.sh    ready vLLM command lines (merged and multi-LoRA)

With ``merge=False`` the adapter itself is at the top (``apidistill.model_loading.load_model``
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from apidistill.errors import ExportError, TrainingError, redact
from apidistill.export.card import model_card, shown_path, terms_section
from apidistill.export.vllm import serving_section, vllm_lines, vllm_script
from apidistill.train.api import TrainResult

if TYPE_CHECKING:
    from apidistill.config import PolicyConfig

__all__ = [
    "StudentSource",
    "bake_system_prompt",
    "export_student",
    "merged_model",
    "refuse_pickle_weights",
    "resolve_student",
    "student_tokenizer",
    "write_merged",
]

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
    only (the formats are :func:`apidistill.model_loading.pickle_weight_files`')."""
    from apidistill.model_loading import pickle_weight_files

    pickled = pickle_weight_files(folder)
    if pickled:
        f = Path(folder) / pickled[0]
        raise TrainingError(
            f"{f}: pickle-format weights are refused (untrusted files are safetensors "
            f"only); convert it to safetensors ({f.stem}.safetensors) and remove {f.name}"
        )


@dataclass(frozen=True)
class StudentSource:
    """A trained student to export: its folder (adapter or full model), the training result
    when there is one, its base model spec (None when unknown) and its system prompt."""

    folder: Path
    result: TrainResult | None
    base_model: str | None

    @property
    def is_adapter(self) -> bool:
        return (self.folder / "adapter_config.json").is_file()

    @property
    def system_prompt(self) -> str | None:
        return self.result.system_prompt if self.result is not None else None

    def need_base(self) -> str:
        """The base model spec, or a clear error when nothing recorded it."""
        if self.base_model is None:
            raise ExportError(
                f"{self.folder}: the student's base model is not recorded here",
                hint="pass the base model (base_model= / --base-model)",
            )
        return self.base_model


def _recorded_base(folder: Path) -> str | None:
    """The base recorded by an export (``base_model.txt``) or by peft (adapter config)."""
    for f in (folder / _BASE_FILE, folder / "adapter" / _BASE_FILE):
        if f.is_file():
            return f.read_text(encoding="utf-8").strip() or None
    cfg = folder / "adapter_config.json"
    if cfg.is_file():
        return json.loads(cfg.read_text(encoding="utf-8")).get("base_model_name_or_path")
    return None


def resolve_student(
    result_or_dir: TrainResult | Path | str, base_model: str | None = None
) -> StudentSource:
    """A :class:`StudentSource` for a :class:`TrainResult`, a training ``out_dir``, an
    adapter folder or a model folder (a merged export)."""
    if isinstance(result_or_dir, TrainResult):
        res: TrainResult | None = result_or_dir
        src = result_or_dir.final_dir
    else:
        src = Path(result_or_dir)
        res = TrainResult.load(src) if (src / "train_result.json").is_file() else None
        if res is not None:
            src = res.final_dir
        elif not ((src / "adapter_config.json").is_file() or (src / "config.json").is_file()):
            raise TrainingError(
                f"{src}: not a training output (no train_result.json, adapter_config.json "
                "or config.json)",
                hint="pass the out_dir of train_student / `apidistill train`, or its adapter "
                "folder",
            )
    base = base_model or (res.base_model if res is not None else None) or _recorded_base(src)
    return StudentSource(Path(src), res, base)


def _template_for(src: Path, base_model: str | None, system_prompt: str | None):  # type: ignore[no-untyped-def]
    from apidistill.model_loading import load_tokenizer

    tok = load_tokenizer(str(src)) if (src / "tokenizer_config.json").is_file() else None
    if tok is None:
        if base_model is None:
            raise ExportError(f"{src}: no tokenizer here and no base model to take it from")
        tok = load_tokenizer(base_model)
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
    return tok


def student_tokenizer(student: StudentSource):  # type: ignore[no-untyped-def]
    """The student's tokenizer, its chat template carrying the baked system prompt."""
    return _template_for(student.folder, student.base_model, student.system_prompt)


def _save_tokenizer(student: StudentSource, *dests: Path) -> None:
    tok = student_tokenizer(student)
    for d in dests:
        tok.save_pretrained(str(d))


def _copy_adapter(src: Path, dest: Path, base_model: str) -> dict:
    dest.mkdir(parents=True, exist_ok=True)
    for name in _ADAPTER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
    (dest / _BASE_FILE).write_text(base_model + "\n", encoding="utf-8")
    return json.loads((src / "adapter_config.json").read_text(encoding="utf-8"))


def merged_model(student: StudentSource):  # type: ignore[no-untyped-def]
    """The student as one model in float32: a LoRA folded into its base (peft
    ``merge_and_unload``), a full model loaded as is."""
    from apidistill.model_loading import load_model

    refuse_pickle_weights(student.folder)
    if student.is_adapter:
        model = load_model(student.need_base(), adapter=str(student.folder))
        return model.merge_and_unload()
    return load_model(str(student.folder))


def write_merged(student: StudentSource, dest: Path, model=None) -> Path:  # type: ignore[no-untyped-def]
    """Merged safetensors + tokenizer (baked chat template) + ``base_model.txt`` at
    ``dest``: ``apidistill serve --model dest`` and ``vllm serve dest`` load it."""
    dest.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else merged_model(student)
    model.save_pretrained(str(dest), safe_serialization=True)
    _save_tokenizer(student, dest)
    if student.base_model is not None:
        (dest / _BASE_FILE).write_text(student.base_model + "\n", encoding="utf-8")
    return dest


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
    student = resolve_student(result_or_dir, base_model)
    src, result = student.folder, student.result
    refuse_pickle_weights(src)
    out_dir = Path(out_dir)
    name = name or out_dir.resolve().name
    # Decide the terms before writing anything: a refused use leaves no half-made export.
    terms = terms_section(src, result, dataset, name, intended_use, policy_cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    adapter_cfg = None
    if student.is_adapter:
        adapter_home = out_dir / "adapter" if merge else out_dir
        adapter_cfg = _copy_adapter(src, adapter_home, base_model)
        if merge:
            write_merged(student, out_dir)
        _save_tokenizer(student, *{adapter_home, out_dir})
    else:
        for f in src.iterdir():
            if f.is_file() and f.suffix in {".json", ".safetensors", ".jinja", ".txt", ".model"}:
                shutil.copy2(f, out_dir / f.name)
        _save_tokenizer(student, out_dir)
    merged = merge or not student.is_adapter
    # The script finds its own folder, so it works wherever the student is copied to.
    script = vllm_script(vllm_lines('"$HERE"', name, adapter_cfg, merged))
    (out_dir / "serve_vllm.sh").write_text(script, encoding="utf-8")
    # The card names paths relative to the folder that holds the export (the run folder,
    # for a run's student), never this machine's absolute paths.
    home = out_dir.resolve().parent
    here = shlex.quote(out_dir.resolve().name)
    base_shown = shown_path(base_model, home)
    adapter_base = (adapter_cfg or {}).get("base_model_name_or_path")
    card_vllm = vllm_lines(
        here, name, adapter_cfg, merged, shown_path(adapter_base, home) if adapter_base else None
    )
    card = model_card(
        name, base_shown, result, serving_section(here, card_vllm), model_card_sections, terms
    )
    (out_dir / "README.md").write_text(redact(card), encoding="utf-8")  # no configured key
    return out_dir
