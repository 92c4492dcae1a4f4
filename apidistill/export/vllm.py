"""vLLM serving of an export: the command lines, and the vLLM folder (merged safetensors,
``serve_vllm.sh``, a README with the card and the command).

vLLM is not a dependency: the folder is what ``vllm serve <dir>`` loads (config.json,
model.safetensors, tokenizer with the baked chat template); the command names the served
model so clients call it by the student's name, not by a path.
"""

from __future__ import annotations

import shlex

__all__ = ["serving_section", "vllm_lines", "vllm_script"]


def vllm_lines(
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


def vllm_script(lines: list[str]) -> str:
    """``serve_vllm.sh``: the command lines run from the script's own folder, so it works
    wherever the export is copied to (``lines`` use ``"$HERE"`` for the folder)."""
    return (
        "#!/bin/sh\n# Serve this student with vLLM (pick one line).\n"
        'HERE="$(cd "$(dirname "$0")" && pwd)"\n' + "\n".join(lines) + "\n"
    )


def serving_section(out_ref: str, lines: list[str]) -> str:
    """The card's "Serving" section for a folder at ``out_ref`` (a shell word)."""
    serve = "\n".join([f"apidistill serve --model {out_ref}", *lines])
    return (
        f"## Serving\n\nFrom the folder that holds `{out_ref}` (a run's folder, for a run's "
        f"student):\n\n```bash\n{serve}\n```"
    )
