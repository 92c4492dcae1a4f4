"""The transformers backend: today's engine (:class:`~apidistill.serve.engine.ServeEngine`) on the
device and dtype asked for. The engine itself is frozen (no new features): everything the
faster engines cannot load (LoRA adapters on top of a base, hub models, safetensors folders
without a GGUF export) still serves through it."""

from __future__ import annotations

import hashlib
from typing import Any

from apidistill.serve.engine import ServeEngine, _load_tokenizer_for, _spec_stamp, physical_cores

__all__ = ["load_transformers_engine"]


def load_transformers_engine(
    model: str,
    *,
    adapter: str | None = None,
    max_batch_size: int = 16,
    num_threads: int | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    **kwargs: Any,
) -> ServeEngine:
    """:meth:`ServeEngine.from_spec` with the weights placed on ``device`` in ``dtype`` (both
    already resolved by :func:`apidistill.devices.select_device`)."""
    if device == "cpu" and dtype == "float32":
        return ServeEngine.from_spec(
            model, adapter=adapter, max_batch_size=max_batch_size, num_threads=num_threads, **kwargs
        )
    import torch

    from apidistill.model_loading import load_model

    torch.set_num_threads(num_threads or physical_cores())
    lm = load_model(model, adapter=adapter, dtype=dtype)
    if hasattr(lm, "merge_and_unload"):
        lm = lm.merge_and_unload()
    lm = lm.to(device)
    tokenizer = _load_tokenizer_for(model, adapter)
    tag = f"{model}|{adapter or ''}|{_spec_stamp(model)}|{_spec_stamp(adapter)}|{device}|{dtype}"
    fp = "fp_" + hashlib.sha256(tag.encode()).hexdigest()[:12]
    return ServeEngine(
        lm, tokenizer, model_name=model, max_batch_size=max_batch_size, fingerprint=fp, **kwargs
    )
