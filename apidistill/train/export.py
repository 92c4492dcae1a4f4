"""Export a trained student: adapter, merged safetensors, tokenizer, model card, vLLM command.

Layout (``merge=True``)::

    out_dir/                 merged model (config.json, model.safetensors) + tokenizer:
                             ``apidistill serve --model out_dir`` and ``vllm serve out_dir``
    out_dir/adapter/         the LoRA adapter + base_model.txt + tokenizer, for multi-LoRA
    out_dir/README.md        model card (training summary + the caller's sections)
    out_dir/serve_vllm.sh    ready vLLM command lines (merged and multi-LoRA)

With ``merge=False`` the adapter itself is at the top (``apidistill.models.load_model``
loads a folder with ``adapter_config.json`` as base + adapter, the base named in
``base_model.txt``). A full fine-tune is copied as is.

The student's system prompt (``StudentConfig.system_prompt``) is written into the exported
chat template as the default system turn, so a client that sends only the user message
gets exactly the prompt the student was trained on — from ``apidistill serve`` and vLLM
alike.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

from apidistill.errors import TrainingError
from apidistill.train.api import TrainResult

__all__ = ["bake_system_prompt", "export_student"]

_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
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


def _vllm_lines(out_dir: Path, name: str, adapter_cfg: dict | None, merged: bool) -> list[str]:
    q = shlex.quote
    lines = []
    if merged:
        lines.append(f"vllm serve {q(str(out_dir))} --served-model-name {q(name)}")
    if adapter_cfg is not None:
        base = adapter_cfg.get("base_model_name_or_path") or ""
        adapter_dir = out_dir / "adapter" if merged else out_dir
        lines.append(
            f"vllm serve {q(base)} --enable-lora "
            f"--lora-modules {q(name + '=' + str(adapter_dir))} "
            f"--max-lora-rank {int(adapter_cfg.get('r', 16))} --tokenizer {q(str(adapter_dir))}"
        )
    return lines


def _model_card(
    name: str,
    base_model: str,
    result: TrainResult | None,
    vllm: list[str],
    out_dir: Path,
    sections: dict[str, str] | None,
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
    for title, body in (sections or {}).items():
        parts.append(f"## {title}\n\n{body.strip()}")
    serve = "\n".join([f"apidistill serve --model {shlex.quote(str(out_dir))}", *vllm])
    parts.append(f"## Serving\n\n```bash\n{serve}\n```")
    return "\n\n".join(parts) + "\n"


def export_student(
    result_or_dir: TrainResult | Path | str,
    out_dir: Path,
    *,
    base_model: str,
    merge: bool = True,
    model_card_sections: dict[str, str] | None = None,
) -> Path:
    """Write a servable student folder to ``out_dir`` and return it.

    ``result_or_dir`` is a :class:`TrainResult`, a training ``out_dir`` or an adapter /
    model folder. ``model_card_sections`` (title → markdown) go into README.md verbatim:
    the training data card, policy obligations (e.g. a required name prefix or
    attribution), the evaluation summary.
    """
    src, result = _resolve_source(result_or_dir)
    out_dir = Path(out_dir)
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
    name = out_dir.resolve().name
    vllm = _vllm_lines(out_dir.resolve(), name, adapter_cfg, merged=merge or not is_adapter)
    script = "#!/bin/sh\n# Serve this student with vLLM (pick one line).\n" + "\n".join(vllm) + "\n"
    (out_dir / "serve_vllm.sh").write_text(script, encoding="utf-8")
    card = _model_card(name, base_model, result, vllm, out_dir.resolve(), model_card_sections)
    (out_dir / "README.md").write_text(card, encoding="utf-8")
    return out_dir
