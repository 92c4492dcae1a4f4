"""Which engine runs the model behind ``apidistill serve``, and what every engine offers.

The HTTP layer (:mod:`apidistill.serve.app` and its routes) talks to one object with the
interface of :class:`ServingEngine`; three backends provide it:

    transformers   today's batched, prefix-cached engine (:class:`~apidistill.serve.engine.ServeEngine`),
                   the fallback for whatever the others cannot load (adapters, hub models)
    llamacpp       llama.cpp through llama-cpp-python on a GGUF file: the fast CPU engine
    vllm           vLLM on a GPU, when it is installed

``auto`` picks llama.cpp when the model is a GGUF (or a folder with a GGUF export in it) and
llama-cpp-python imports, else transformers: the fastest engine that can load the model here.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

from apidistill.errors import ConfigError

__all__ = [
    "BACKENDS",
    "BackendName",
    "ServingEngine",
    "find_gguf",
    "llamacpp_available",
    "resolve_backend",
]

BackendName = Literal["auto", "llamacpp", "vllm", "transformers"]
BACKENDS: tuple[str, ...] = get_args(BackendName)

# Preferred GGUF export when a folder holds several: closest to the trained weights first.
_GGUF_PREFERENCE = ("q8_0", "f16", "bf16", "q6_k", "q5_k_m", "q4_k_m")


class ServingEngine(Protocol):
    """What the routes use. ``supports_grammar``: tools and ``response_format`` run
    constrained instead of being refused with a 400."""

    model_name: str
    fingerprint: str
    max_batch_size: int
    max_context: int
    tokenizer: Any  # has .decode(ids) for token-id prompts of /v1/completions
    supports_grammar: bool

    def encode_messages(
        self, messages: Sequence[Any], *, continue_final_message: bool = False
    ) -> list[int]: ...

    def encode_prompt(self, prompt: str) -> list[int]: ...

    def token_text(self, token_id: int, as_token_ids: bool = False) -> str: ...

    def prepare(self, messages: Any, prompt: Any, params: Any, **kwargs: Any) -> Any: ...

    async def run(self, prepared: Any) -> list[Any]: ...

    def run_stream(self, prepared: Any) -> AsyncIterator[Any]: ...

    def load(self) -> tuple[int, int]: ...

    def last_batch_seconds(self) -> float: ...

    async def aclose(self) -> None: ...


def llamacpp_available() -> bool:
    """Whether llama-cpp-python is installed (found without importing it: the import loads
    the native library, which ``auto`` must not pay for when it then picks transformers)."""
    return importlib.util.find_spec("llama_cpp") is not None


def find_gguf(model: str) -> Path | None:
    """The GGUF file to serve for ``model``: the file itself, the embedded model's GGUF, or a
    GGUF export inside a model folder (``q8_0`` preferred over ``f16`` over smaller quants)."""
    from apidistill.model_loading import resolve_model

    src = resolve_model(model)
    if src.gguf_file is not None:
        return Path(src.folder) / src.gguf_file
    if src.is_hub:
        return None
    folder = Path(src.folder)
    found = sorted({*folder.glob("*.gguf"), *folder.glob("gguf/*.gguf")})
    if not found:
        return None
    for tag in _GGUF_PREFERENCE:
        for f in found:
            if tag in f.name.lower():
                return f
    return found[0]


def resolve_backend(
    name: str, model: str, *, adapter: str | None = None, device: str = "auto"
) -> str:
    """The concrete backend for ``name`` (``auto`` decided here); refuses combinations that
    cannot work with a :class:`ConfigError` naming the option. ``device`` other than
    auto/cpu asks for a GPU: ``auto`` then picks transformers (llama.cpp runs on CPU here)."""
    on_cpu = device.split(":", 1)[0] in ("auto", "cpu")
    if name not in BACKENDS:
        raise ConfigError(
            f"unknown backend {name!r}", key="--backend", hint=f"one of: {', '.join(BACKENDS)}"
        )
    if name == "auto":
        if on_cpu and adapter is None and llamacpp_available() and find_gguf(model) is not None:
            return "llamacpp"
        return "transformers"
    if name == "llamacpp":
        if not on_cpu:
            raise ConfigError(
                f"the llama.cpp backend runs on the CPU; --device {device} needs a GPU engine",
                key="--device",
                hint="use --backend transformers (or vllm) for a GPU, or leave --device at auto",
            )
        if adapter is not None:
            raise ConfigError(
                "the llama.cpp backend serves merged GGUF files; it cannot apply a LoRA adapter",
                key="--adapter",
                hint="serve the export's GGUF (apidistill export), or use --backend transformers",
            )
        if find_gguf(model) is None:
            raise ConfigError(
                f"{model}: no GGUF file to serve with llama.cpp",
                key="--model",
                hint="give a .gguf file or a folder with a GGUF export, or --backend transformers",
            )
    return name
