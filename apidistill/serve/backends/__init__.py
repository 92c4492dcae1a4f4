"""Serving backends: which engine runs the model behind ``apidistill serve``.

    load_engine(model, backend="auto", ...)   the engine the HTTP routes talk to
    resolve_backend(name, model)               what ``auto`` picks for ``model``
    find_gguf(model)                           the GGUF file llama.cpp would serve

See :mod:`apidistill.serve.backends.base` for the interface and the ``auto`` rule.
"""

from __future__ import annotations

from typing import Any

from apidistill.serve.backends.base import (
    BACKENDS,
    BackendName,
    ServingEngine,
    find_gguf,
    llamacpp_available,
    resolve_backend,
)

__all__ = [
    "BACKENDS",
    "BackendName",
    "ServingEngine",
    "fastest_backend",
    "find_gguf",
    "llamacpp_available",
    "load_engine",
    "resolve_backend",
]


def fastest_backend(model: str) -> str:
    """The fastest backend that can serve ``model`` on this machine (the demo's teacher and
    student use it): llama.cpp for a GGUF when llama-cpp-python is installed, else
    transformers."""
    return resolve_backend("auto", model)


def load_engine(
    model: str,
    *,
    backend: str = "auto",
    adapter: str | None = None,
    max_batch_size: int = 16,
    num_threads: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    prefix_cache: bool = True,
    model_name: str | None = None,
) -> Any:
    """Load ``model`` in the chosen backend and return its engine (:class:`ServingEngine`)."""
    name = resolve_backend(backend, model, adapter=adapter, device=device)
    if name == "vllm":
        from apidistill.serve.backends.vllm import check_vllm

        check_vllm(model)
    if name == "llamacpp":
        from apidistill.serve.backends.llamacpp import LlamaCppEngine

        gguf = find_gguf(model)
        assert gguf is not None  # resolve_backend checked
        return LlamaCppEngine.from_gguf(
            gguf,
            model_name=model_name or model,
            max_batch_size=max_batch_size,
            num_threads=num_threads,
            prefix_cache=prefix_cache,
        )
    from apidistill.devices import select_device
    from apidistill.serve.backends.transformers import load_transformers_engine

    dev, dt = select_device(device, dtype, key="--device")
    return load_transformers_engine(
        model,
        adapter=adapter,
        max_batch_size=max_batch_size,
        num_threads=num_threads,
        device=dev,
        dtype=dt,
        prefix_cache=prefix_cache,
    )
