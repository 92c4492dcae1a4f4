"""Teacher clients: one async client per provider, chosen by an explicit registry.

The provider comes from ``teacher.provider`` (and the server profile from
``teacher.profile``), never from the model's name: ``gpt-4o`` behind a vLLM proxy is an
OpenAI-compatible teacher, not OpenAI. Keys come from an explicit argument or the env var
the run file names, and are handed only to the SDK client.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from apidistill.config import PriceConfig, TeacherConfig
from apidistill.costs.prices import ModelPrice
from apidistill.errors import ConfigError, ModelLoadError, register_secret
from apidistill.teachers.base import Capabilities, RateLimitSnapshot, Teacher, TeacherResponse
from apidistill.teachers.logprobs import TokenVocab
from apidistill.teachers.profiles import server_profile

__all__ = [
    "PROVIDERS",
    "Capabilities",
    "RateLimitSnapshot",
    "Teacher",
    "TeacherResponse",
    "make_teacher",
    "resolve_api_key",
]

_DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


def resolve_api_key(cfg: TeacherConfig, api_key: str | None) -> str | None:
    """The explicit key, else the named env var, else the provider's usual env var.

    An OpenAI-compatible server never gets ``OPENAI_API_KEY`` by default: sending the real
    OpenAI key to an arbitrary host would leak it.
    """
    if api_key:
        register_secret(api_key)
        return api_key
    env = cfg.api_key_env or _DEFAULT_KEY_ENV.get(cfg.provider)
    if env is None:
        return None
    value = os.environ.get(env)
    if not value:
        raise ConfigError(
            f"the API key env var {env} is not set",
            key="teacher.api_key_env",
            hint=f"export {env}=... (the key is read from the environment and never stored)",
        )
    register_secret(value)  # redacted by value wherever it shows, whatever its shape
    return value


def _price(cfg: PriceConfig | None) -> ModelPrice | None:
    """A complete per-token override, when the run file gives one; genai-prices is the
    costs stage's business, so anything else leaves the cost to the ledger."""
    if cfg is None or cfg.input_per_mtok is None or cfg.output_per_mtok is None:
        return None
    return ModelPrice(
        input_per_mtok=cfg.input_per_mtok,
        output_per_mtok=cfg.output_per_mtok,
        cached_input_per_mtok=cfg.cached_input_per_mtok,
        batch_discount=cfg.batch_discount,
        cache_write_per_mtok=cfg.cache_write_per_mtok,
    )


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
        price=_price(cfg.price),
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
        # "@serve:" is the key's old spelling, kept: the identity is part of every cache key,
        # so a journal written before teacher.serve became teacher.launch still answers
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
        price=_price(cfg.price),
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
        price=_price(cfg.price),
        transport=cfg.transport,
        prompt_cache=cfg.marks_prompt_cache,
    )


PROVIDERS: dict[str, Callable[[TeacherConfig, str | None, str | None, float], Teacher]] = {
    "openai": _openai,
    "openai_compatible": _compatible,
    "anthropic": _anthropic,
}


def make_teacher(
    cfg: TeacherConfig,
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    timeout_s: float = 120.0,
) -> Teacher:
    """Build the teacher the run file names. ``base_url`` overrides the file's (e.g. the URL
    of a server the pipeline just started); ``timeout_s`` is the per-request limit."""
    try:
        factory = PROVIDERS[cfg.provider]
    except KeyError:
        raise ConfigError(
            f"unknown provider {cfg.provider!r}",
            key="teacher.provider",
            hint=f"use one of: {', '.join(sorted(PROVIDERS))}",
        ) from None
    return factory(cfg, resolve_api_key(cfg, api_key), base_url, timeout_s)
