"""Exporting a trained student where users run models.

Formats (``apidistill export --format``, the run file's ``export.formats``):

- ``adapter``: the LoRA adapter + ``base_model.txt`` + tokenizer (:mod:`.student`)
- ``merged``: the LoRA merged into its base, safetensors + tokenizer (:mod:`.student`)
- ``gguf``: f16 / q8_0 / q4_k_m GGUF files for llama.cpp (:mod:`.gguf`)
- ``ollama``: a Modelfile beside a merged GGUF (:mod:`.ollama`)
- ``vllm``: merged safetensors + ``serve_vllm.sh`` + README (:mod:`.vllm`)

Each folder carries the model card with the teachers' terms and obligations (:mod:`.card`).
The student's system prompt is baked into every chat template, so a client that sends only
the user's message gets the prompt the student was trained on.
"""

from __future__ import annotations

from apidistill.export.gguf import GGUF_QUANTS, export_gguf
from apidistill.export.student import bake_system_prompt, export_student, refuse_pickle_weights

__all__ = [
    "GGUF_QUANTS",
    "bake_system_prompt",
    "export_gguf",
    "export_student",
    "refuse_pickle_weights",
]
