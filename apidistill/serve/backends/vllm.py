"""The vLLM backend's guard: vLLM needs its package and a CUDA GPU.

This project does not drive vLLM in-process yet (no machine here has had a GPU to test it);
the guard says exactly what is missing, and on a GPU machine points at the tested route:
the export's vLLM folder (``vllm serve <merged student>``), which speaks the same OpenAI API.
"""

from __future__ import annotations

import importlib.util

from apidistill.errors import ConfigError

__all__ = ["check_vllm"]


def check_vllm(model: str) -> None:
    """Raise a :class:`ConfigError` naming ``--backend`` and what to do instead."""
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "the vLLM backend needs the vllm package, which is not installed",
            key="--backend",
            hint="pip install vllm on a Linux machine with a CUDA GPU, or use --backend "
            "llamacpp (CPU, GGUF) or transformers",
        )
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            "the vLLM backend needs a CUDA GPU and torch sees none",
            key="--backend",
            hint="use --backend llamacpp on CPU (GGUF), or transformers",
        )
    raise ConfigError(
        "apidistill serve does not run vLLM in-process yet",
        key="--backend",
        hint=f"run `vllm serve {model}` (the export's vllm/ folder has the command line); it "
        "answers the same OpenAI API",
    )
