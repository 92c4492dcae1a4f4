"""One registry: provider → its online client and its Batch API client.

``teacher.provider`` picks both, from the same table, so a provider never has an online
client without the rule for its batch client (or a clear "no Batch API"). The batch client
modules import :mod:`apidistill.teachers.batch` (the protocol and chunk planning); the
factories live here, above them, so ``batch.py`` imports none of its implementations and the
old ``batch`` ↔ ``openai_batch``/``anthropic_batch`` import cycle is gone.

Clients return usage, never money: the harvest engine prices every answer with the run's
price (:func:`apidistill.costs.prices.price_for_teacher`, which honours ``teacher.price``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from apidistill.config import TeacherConfig
from apidistill.errors import ConfigError, ModelLoadError
from apidistill.teachers.base import Teacher
from apidistill.teachers.keys import resolve_api_key
from apidistill.teachers.logprobs import TokenVocab
from apidistill.teachers.profiles import server_profile

if TYPE_CHECKING:
    from apidistill.teachers.batch import BatchClient

__all__ = ["PROVIDERS", "Provider", "make_batch_client", "make_teacher"]

OnlineFactory = Callable[[TeacherConfig, "str | None", "str | None", float], Teacher]
BatchFactory = Callable[[TeacherConfig, "str | None", float], "BatchClient"]


def _vocab(cfg: TeacherConfig) -> TokenVocab | None:
    """The teacher's vocabulary when known: ``teacher.tokenizer``, or the model that
    ``apidistill serve`` runs for us (token ids then come with their bytes and text)."""
    spec = cfg.tokenizer or (
        cfg.launch.model if cfg.launch and cfg.profile == "apidistill" else None
    )
    if not spec:
        return None
    from apidistill.model_loading import load_tokenizer

    try:
        return TokenVocab.from_tokenizer(load_tokenizer(spec))
    except ModelLoadError as exc:
        raise ConfigError(
            f"cannot load the teacher tokenizer {spec!r}: {exc.message}", key="teacher.tokenizer"
        ) from exc


def _openai(cfg: TeacherConfig, key: str | None, base_url: str | None, timeout_s: float) -> Teacher:
    from apidistill.teachers.openai import OpenAITeacher

    return OpenAITeacher(
        cfg.model,
        provider="openai",
        base_url=base_url or cfg.base_url,
        api_key=key,
        timeout_s=timeout_s,
        transport=cfg.transport,
        store=cfg.store,
    )


def _compatible(
    cfg: TeacherConfig, key: str | None, base_url: str | None, timeout_s: float
) -> Teacher:
    from apidistill.teachers.openai import OpenAITeacher

    url = base_url or cfg.base_url
    if not url:
        raise ConfigError(
            "no base URL for the OpenAI-compatible teacher",
            key="teacher.base_url",
            hint="set teacher.base_url, or give a teacher.launch block (the run starts the server)",
        )
    identity = None
    if cfg.launch is not None:  # started by the pipeline on a fresh port: the port is no identity
        identity = f"openai_compatible@serve:{cfg.launch.model}"
        if cfg.launch.adapter:
            identity += f"+{cfg.launch.adapter}"
    return OpenAITeacher(
        cfg.model,
        provider="openai_compatible",
        base_url=url,
        api_key=key,
        profile=server_profile(cfg.profile),
        timeout_s=timeout_s,
        vocab=_vocab(cfg),
        transport=cfg.transport,
        identity=identity,
        store=cfg.store,
    )


def _anthropic(
    cfg: TeacherConfig, key: str | None, base_url: str | None, timeout_s: float
) -> Teacher:
    from apidistill.teachers.anthropic import AnthropicTeacher

    return AnthropicTeacher(
        cfg.model,
        base_url=base_url or cfg.base_url,
        api_key=key,
        timeout_s=timeout_s,
        transport=cfg.transport,
        prompt_cache=cfg.marks_prompt_cache,
    )


def _openai_batch(cfg: TeacherConfig, key: str | None, timeout_s: float) -> BatchClient:
    from apidistill.teachers.openai_batch import OpenAIBatch

    return OpenAIBatch(cfg.model, api_key=key, base_url=cfg.base_url, timeout_s=timeout_s)


def _anthropic_batch(cfg: TeacherConfig, key: str | None, timeout_s: float) -> BatchClient:
    from apidistill.teachers.anthropic_batch import AnthropicBatch

    return AnthropicBatch(
        cfg.model,
        api_key=key,
        base_url=cfg.base_url,
        timeout_s=timeout_s,
        prompt_cache=cfg.marks_prompt_cache,
    )


@dataclass(frozen=True)
class Provider:
    """How to build one provider's clients; ``batch`` is None when it has no Batch API."""

    online: OnlineFactory
    batch: BatchFactory | None = None


PROVIDERS: dict[str, Provider] = {
    "openai": Provider(_openai, _openai_batch),
    "openai_compatible": Provider(_compatible),
    "anthropic": Provider(_anthropic, _anthropic_batch),
}


def _provider(cfg: TeacherConfig) -> Provider:
    try:
        return PROVIDERS[cfg.provider]
    except KeyError:
        raise ConfigError(
            f"unknown provider {cfg.provider!r}",
            key="teacher.provider",
            hint=f"use one of: {', '.join(sorted(PROVIDERS))}",
        ) from None


def make_teacher(
    cfg: TeacherConfig,
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    timeout_s: float = 120.0,
) -> Teacher:
    """Build the teacher the run file names. ``base_url`` overrides the file's (e.g. the URL
    of a server the pipeline just started); ``timeout_s`` is the per-request limit."""
    factory = _provider(cfg).online
    return factory(cfg, resolve_api_key(cfg, api_key), base_url, timeout_s)


def make_batch_client(
    cfg: TeacherConfig, *, api_key: str | None = None, timeout_s: float = 120.0
) -> BatchClient:
    """The Batch API client of the teacher the run file names (``harvest.use_batch_api``);
    Anthropic's shared prefix carries cache_control as ``teacher.prompt_cache`` says."""
    factory = _provider(cfg).batch
    if factory is None:
        raise ConfigError(
            f"provider {cfg.provider!r} has no Batch API",
            key="harvest.use_batch_api",
            hint="set harvest.use_batch_api: false, or use provider openai or anthropic",
        )
    return factory(cfg, resolve_api_key(cfg, api_key), timeout_s)
