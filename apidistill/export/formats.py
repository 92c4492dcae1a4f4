"""Every export format of one student in one call, each in its own folder with its card.

Layout under ``out_dir``::

    adapter/   LoRA adapter + base_model.txt + tokenizer + README.md (card)
    merged/    merged safetensors + tokenizer (baked chat template) + README.md
    gguf/      <name>-f16.gguf, <name>-q8_0.gguf, <name>-q4_k_m.gguf + README.md
    ollama/    Modelfile + <name>-<quant>.gguf (a hard link to gguf/'s when possible)
    vllm/      merged safetensors + serve_vllm.sh + README.md

The LoRA is merged once and the terms are decided once, before anything is written: a
refused use leaves no half-made export.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apidistill.errors import ExportError, redact
from apidistill.export.card import model_card, shown_path, terms_section
from apidistill.export.gguf import (
    GGUF_QUANTS,
    MergedStudent,
    base_gguf_path,
    check_architecture,
    export_ggufs,
)
from apidistill.export.ollama import modelfile, write_modelfile
from apidistill.export.student import (
    StudentSource,
    export_student,
    merged_model,
    resolve_student,
    student_tokenizer,
    write_merged,
)
from apidistill.export.vllm import serving_section, vllm_lines, vllm_script

if TYPE_CHECKING:
    from apidistill.config import PolicyConfig
    from apidistill.train.api import TrainResult

__all__ = ["EXPORT_FORMATS", "check_formats", "export_formats"]

EXPORT_FORMATS = ("adapter", "merged", "gguf", "ollama", "vllm")


def check_formats(formats: Sequence[str], quants: Sequence[str]) -> None:
    """Raise with the accepted names when a format or a quantization is unknown."""
    bad = [f for f in formats if f not in EXPORT_FORMATS]
    if bad or not formats:
        raise ExportError(
            f"unknown export format {', '.join(map(repr, bad))}" if bad else "no export format",
            hint=f"formats: {', '.join(EXPORT_FORMATS)}",
        )
    badq = [q for q in quants if q not in GGUF_QUANTS]
    if badq:
        raise ExportError(
            f"unknown GGUF quantization {', '.join(map(repr, badq))}",
            hint=f"gguf_quants: {', '.join(GGUF_QUANTS)}",
        )


def _link_or_copy(src: Path, dest: Path) -> None:
    dest.unlink(missing_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _gguf_serving(folder: str, files: Sequence[Path]) -> str:
    first = shlex.quote(f"{folder}/{files[0].name}")
    return (
        "## Serving\n\nGGUF files for llama.cpp (greedy answers were checked against the "
        "transformers student):\n\n"
        + "\n".join(f"- `{f.name}` ({f.stat().st_size / 1e6:.1f} MB)" for f in files)
        + f"\n\n```bash\napidistill serve --model {first}\nllama-server -m {first} --jinja\n```"
    )


def _ollama_serving(name: str) -> str:
    q = shlex.quote(name)
    return (
        "## Serving with Ollama\n\nFrom this folder (the Modelfile names the merged GGUF "
        f"beside it):\n\n```bash\nollama create {q} -f Modelfile\nollama run {q}\n```"
    )


def export_formats(
    result_or_dir: TrainResult | Path | str,
    out_dir: Path | str,
    formats: Sequence[str],
    *,
    gguf_quants: Sequence[str] = ("f16", "q8_0", "q4_k_m"),
    ollama_quant: str = "q8_0",
    base_model: str | None = None,
    base_gguf: Path | str | None = None,
    name: str | None = None,
    dataset: Path | str | None = None,
    intended_use: str | None = None,
    policy_cfg: PolicyConfig | None = None,
    model_card_sections: dict[str, str] | None = None,
) -> dict[str, Path]:
    """Write each of ``formats`` under ``out_dir`` (see the module's layout); format → its
    folder. ``name`` is the student's name in cards, commands and file names."""
    check_formats(formats, [*gguf_quants, ollama_quant])
    student = resolve_student(result_or_dir, base_model)
    base = student.base_model
    out = Path(out_dir)
    name = name or out.resolve().name
    terms = terms_section(student.folder, student.result, dataset, name, intended_use, policy_cfg)
    # Everything that can refuse is checked before the first file is written.
    model = merged_model(student) if set(formats) & {"merged", "gguf", "ollama", "vllm"} else None
    base_file = _check_gguf_formats(student, model, formats, base_gguf)
    written: dict[str, Path] = {}
    if "adapter" in formats:
        written["adapter"] = export_student(
            student.result or student.folder,
            out / "adapter",
            base_model=student.need_base(),
            merge=False,
            model_card_sections=model_card_sections,
            dataset=dataset,
            name=name,
            intended_use=intended_use,
            policy_cfg=policy_cfg,
        )
    if model is None:
        return written
    base_shown = shown_path(base, out.resolve()) if base else "unknown"

    def card(folder: Path, serving: str, library: str) -> None:
        text = model_card(
            name, base_shown, student.result, serving, model_card_sections, terms, library=library
        )
        (folder / "README.md").write_text(redact(text), encoding="utf-8")

    for fmt in ("merged", "vllm"):
        if fmt in formats:
            folder = write_merged(student, out / fmt, model)
            here = shlex.quote(fmt)
            card(folder, serving_section(here, vllm_lines(here, name, None, True)), "transformers")
            if fmt == "vllm":
                lines = vllm_lines('"$HERE"', name, None, True)
                (folder / "serve_vllm.sh").write_text(vllm_script(lines), encoding="utf-8")
            written[fmt] = folder
    if set(formats) & {"gguf", "ollama"}:
        written.update(
            _write_gguf_formats(
                student, model, out, formats, gguf_quants, ollama_quant, base_file, name, card
            )
        )
    return written


def _check_gguf_formats(
    student: StudentSource, model: Any, formats: Sequence[str], base_gguf: Path | str | None
) -> Path | None:
    """The base GGUF to copy tokenizer metadata from, after checking the student can be
    written as GGUF (and as an Ollama Modelfile); None when neither is asked for."""
    if not set(formats) & {"gguf", "ollama"}:
        return None
    check_architecture(model.config, student.folder)
    base_file = Path(base_gguf) if base_gguf is not None else base_gguf_path(student.need_base())
    if not base_file.is_file():
        raise ExportError(f"{base_file}: no such GGUF file")
    if "ollama" in formats:
        template = student_tokenizer(student).chat_template
        if isinstance(template, dict):
            template = template.get("default", "")
        modelfile("student.gguf", template or "", None)  # raises for a non-ChatML template
    return base_file


def _write_gguf_formats(
    student: StudentSource,
    model: Any,
    out: Path,
    formats: Sequence[str],
    gguf_quants: Sequence[str],
    ollama_quant: str,
    base_gguf: Path | str | None,
    name: str,
    card: Any,
) -> dict[str, Path]:
    tok = student_tokenizer(student)
    tensors = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    merged = (MergedStudent(tensors, model.config, tok), student.need_base())
    quants = list(
        dict.fromkeys(
            [
                *(gguf_quants if "gguf" in formats else []),
                *([ollama_quant] if "ollama" in formats else []),
            ]
        )
    )
    # ollama alone: its GGUF is written straight into its folder, no gguf/ folder at all.
    gguf_dir = out / ("gguf" if "gguf" in formats else "ollama")
    files = export_ggufs(
        student.folder,
        gguf_dir,
        quants,
        base_gguf=base_gguf,
        name=name,
        keep_f16="f16" in quants,
        student=merged,
    )
    written: dict[str, Path] = {}
    if "gguf" in formats:
        shown = [files[q] for q in gguf_quants]
        card(gguf_dir, _gguf_serving("gguf", shown), "gguf")
        written["gguf"] = gguf_dir
    if "ollama" in formats:
        folder = out / "ollama"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / files[ollama_quant].name
        if files[ollama_quant].resolve() != target.resolve():
            _link_or_copy(files[ollama_quant], target)
        write_modelfile(
            folder,
            target,
            tok,
            num_ctx=getattr(model.config, "max_position_embeddings", None),
        )
        card(folder, _ollama_serving(name), "gguf")
        written["ollama"] = folder
    return written
