"""An Ollama Modelfile for a merged GGUF student.

Ollama since 0.34 refuses ``ADAPTER`` lines, so the Modelfile names a merged GGUF (``FROM
./<file>.gguf``, a path relative to the Modelfile). Ollama does not run the GGUF's Jinja chat
template; it needs a Go template (``TEMPLATE``), so one is written here for the ChatML turns
the student's template renders (``<|im_start|>role\\n...<|im_end|>``, SmolLM2, Qwen), with the
student's system prompt as ``SYSTEM`` (Ollama's default system message, the one the chat
template bakes in) and the end-of-turn markers as ``PARAMETER stop``. A template of another
shape is refused with what is supported, rather than written wrong. Greedy settings
(temperature 0, repeat penalty 1) match how the student was evaluated.

Quoting follows Ollama's Modelfile parser (``parser/parser.go``): a value in triple quotes
may span lines and may not itself contain three quotes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from apidistill.errors import ExportError

__all__ = ["CHATML_TEMPLATE", "effective_system", "modelfile", "write_modelfile"]

# Ollama's Go template for ChatML (the same shape as Ollama's own qwen/smollm2 templates).
CHATML_TEMPLATE = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)
_CHATML_STOPS = ("<|im_end|>", "<|im_start|>")


def _quoted(value: str, what: str) -> str:
    if '"""' in value:
        raise ExportError(
            f'the {what} holds three double quotes ("""), which an Ollama Modelfile cannot quote',
            hint=f"rephrase the {what} without a triple quote",
        )
    return f'"""{value}"""'


def modelfile(
    gguf_name: str,
    chat_template: str,
    system_prompt: str | None,
    *,
    num_ctx: int | None = None,
) -> str:
    """The Modelfile text for ``./gguf_name`` whose Jinja chat template is ``chat_template``."""
    if "<|im_start|>" not in chat_template or "<|im_end|>" not in chat_template:
        raise ExportError(
            "the Ollama Modelfile is written for ChatML chat templates (<|im_start|> / "
            "<|im_end|>); this student's template is of another kind",
            hint="export the gguf format and write its TEMPLATE by hand, or serve the GGUF "
            "with `apidistill serve` / llama.cpp",
        )
    if "/" in gguf_name or "\\" in gguf_name or not gguf_name.endswith(".gguf"):
        raise ExportError(f"{gguf_name!r}: the Modelfile names a .gguf file in its own folder")
    lines = [f"FROM ./{gguf_name}", f"TEMPLATE {_quoted(CHATML_TEMPLATE, 'chat template')}"]
    if system_prompt:
        lines.append(f"SYSTEM {_quoted(system_prompt, 'system prompt')}")
    lines += [f'PARAMETER stop "{s}"' for s in _CHATML_STOPS]
    lines += ["PARAMETER temperature 0", "PARAMETER repeat_penalty 1"]
    if num_ctx:
        lines.append(f"PARAMETER num_ctx {int(num_ctx)}")
    return "\n".join(lines) + "\n"


def effective_system(tokenizer: Any) -> str | None:
    """The system turn the student's chat template renders for a lone user message: the
    baked system prompt, or the template's own default (SmolLM2 has one), or None."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=False
    )
    m = re.match(r"\s*<\|im_start\|>system\n(.*?)<\|im_end\|>", text, flags=re.S)
    return m.group(1) if m else None


def write_modelfile(
    folder: Path,
    gguf: Path,
    tokenizer: Any,
    *,
    num_ctx: int | None = None,
) -> Path:
    """``folder/Modelfile`` for ``gguf`` (already in ``folder``), its SYSTEM the system turn
    the student's chat template renders when the client sends none."""
    if gguf.resolve().parent != folder.resolve():
        raise ExportError(f"{gguf}: the GGUF must be in {folder}, beside its Modelfile")
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default", "")
    path = folder / "Modelfile"
    text = modelfile(gguf.name, template or "", effective_system(tokenizer), num_ctx=num_ctx)
    path.write_text(text, encoding="utf-8")
    return path
