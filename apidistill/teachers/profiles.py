"""What each teacher can return, as data: server profiles, OpenAI model rules, Anthropic.

The engine and the trainer ask :class:`~apidistill.teachers.base.Capabilities` before any money
is spent; the client reads the same tables to shape requests. Every fact about a server or a
model lives in the tables below (sources: HARVEST-NOTES provider table, vLLM/llama.cpp/TGI
docs), so correcting one is a one-line change here, never an ``if`` inside the engine.

Quirk names used by :mod:`apidistill.teachers.logprobs` and the clients:

- ``token_id_strings``: tokens come as ``"token_id:<id>"`` (vLLM ``return_tokens_as_token_ids``).
- ``bytes_null``: ``bytes`` may be null; ``empty_tokens``: partial UTF-8 tokens come as ``""``.
- ``lossy_token_text``: token texts are decoded with errors ignored (llama-cpp-python), so a
  token holding part of a character comes as ``""`` or shortened; with the vocabulary known,
  :mod:`apidistill.teachers.token_recovery` recovers its bytes and id from the completion.
- ``sampled_in_top``: the sampled token is appended to the top list even when not in the top k.
- ``pre_sampling_probs``: logprobs are the model's before temperature/top-p/penalties.
- ``lowest_float_for_zero``: a zero probability is reported as the lowest float (-3.4e38).
- ``masked_-9999``: -9999.0 marks masked tokens (OpenAI, DeepSeek).
- ``unverified``: nothing is known about the server; capabilities are assumed, check them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from apidistill.errors import ConfigError
from apidistill.teachers.base import Capabilities

__all__ = [
    "ANTHROPIC_CAPABILITIES",
    "LLAMACPP_NEUTRAL_SAMPLING",
    "OPENAI_MODEL_RULES",
    "OPENAI_PROFILE",
    "SERVER_PROFILES",
    "ModelRule",
    "ServerProfile",
    "anthropic_capabilities",
    "openai_model_capabilities",
    "openai_model_defaults",
    "openai_model_rule",
    "openai_profile",
    "server_profile",
]


@dataclass(frozen=True)
class ServerProfile:
    """An OpenAI-compatible server family: its capabilities and the body fields it needs."""

    name: str
    capabilities: Capabilities
    # Merged into every request body when logprobs are asked for.
    logprob_body: dict[str, Any] = field(default_factory=dict)
    # Merged into every request body.
    extra_body: dict[str, Any] = field(default_factory=dict)
    # OpenAI proper renamed max_tokens for chat; compatible servers still read max_tokens.
    max_tokens_field: str = "max_tokens"
    # Sampling fields sent with every request so the answer follows the model's own
    # distribution (a server default such as llama.cpp's repeat_penalty 1.1 would make the
    # sampled token differ from the argmax of the logprobs it returns). The run's
    # ``harvest.extra_body`` still overrides them; each record keeps what was sent.
    sampling_body: dict[str, Any] = field(default_factory=dict)


# Neutral sampling for llama.cpp's servers (llama-server and llama-cpp-python's server use the
# same names): no repetition/presence/frequency penalty (defaults 1.1 / 0 / 0), and no top-k /
# min-p truncation (defaults 40 / 0.05, which reshape samples at temperature > 0; 0 = off).
LLAMACPP_NEUTRAL_SAMPLING: dict[str, Any] = {
    "repeat_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "top_k": 0,
    "min_p": 0.0,
}


_SELF_HOSTED = "self-hosted; logprobs are only as wide as the server allows"

SERVER_PROFILES: dict[str, ServerProfile] = {
    "apidistill": ServerProfile(
        name="apidistill",
        capabilities=Capabilities(
            output_logprobs=True,
            max_top_logprobs=20,
            token_ids=True,
            quirks=frozenset({"token_id_strings"}),
            max_concurrency_hint=16,
            completions_endpoint=True,
            notes="apidistill serve: token ids via return_tokens_as_token_ids",
        ),
        logprob_body={"return_tokens_as_token_ids": True},
    ),
    "vllm": ServerProfile(
        name="vllm",
        capabilities=Capabilities(
            output_logprobs=True,
            max_top_logprobs=20,  # --max-logprobs default; raise it on the server for more
            prompt_logprobs=True,
            token_ids=True,
            quirks=frozenset({"token_id_strings"}),
            max_concurrency_hint=256,
            completions_endpoint=True,
            notes=_SELF_HOSTED + "; processed or raw logprobs by --logprobs-mode",
        ),
        logprob_body={"return_tokens_as_token_ids": True},
    ),
    "llamacpp": ServerProfile(
        name="llamacpp",
        capabilities=Capabilities(
            # llama-cpp-python skips its max_tokens check while the text ends in an incomplete
            # UTF-8 character (up to 4 bytes: 3 more tokens); measured 18 for max_tokens 16.
            output_overrun_tokens=3,
            output_logprobs=True,
            max_top_logprobs=20,
            token_ids=True,  # each entry carries "id"
            quirks=frozenset(
                {
                    "bytes_null",
                    "empty_tokens",
                    "sampled_in_top",
                    "pre_sampling_probs",
                    "lowest_float_for_zero",
                    "lossy_token_text",
                }
            ),
            max_concurrency_hint=4,  # llama-server --parallel
            completions_endpoint=True,
            notes=_SELF_HOSTED + "; probabilities are taken before sampling",
        ),
        sampling_body=LLAMACPP_NEUTRAL_SAMPLING,
    ),
    "ollama": ServerProfile(
        name="ollama",
        capabilities=Capabilities(
            output_logprobs=True,  # from Ollama v0.12.11; older versions drop the field
            max_top_logprobs=20,
            quirks=frozenset({"bytes_null"}),
            max_concurrency_hint=4,  # OLLAMA_NUM_PARALLEL
            completions_endpoint=True,
            notes="logprobs need Ollama >= 0.12.11",
        ),
    ),
    "tgi": ServerProfile(
        name="tgi",
        capabilities=Capabilities(
            output_logprobs=True,
            max_top_logprobs=5,  # --max-top-n-tokens default
            quirks=frozenset({"bytes_null"}),
            max_concurrency_hint=128,
            completions_endpoint=True,
            notes="top-k above 5 needs --max-top-n-tokens on the server",
        ),
    ),
    "sglang": ServerProfile(
        name="sglang",
        capabilities=Capabilities(
            output_logprobs=True,
            max_top_logprobs=20,
            max_concurrency_hint=256,
            completions_endpoint=True,
            notes=_SELF_HOSTED,
        ),
    ),
    "generic": ServerProfile(
        name="generic",
        capabilities=Capabilities(
            output_logprobs=True,
            max_top_logprobs=20,
            quirks=frozenset({"unverified", "masked_-9999", "bytes_null"}),
            completions_endpoint=True,
            notes="unknown server: logprobs assumed; a missing field is reported per response",
        ),
    ),
}


def server_profile(name: str) -> ServerProfile:
    """The profile for ``teacher.profile``; unknown names are a config error."""
    try:
        return SERVER_PROFILES[name]
    except KeyError:
        raise ConfigError(
            f"unknown server profile {name!r}",
            key="teacher.profile",
            hint=f"use one of: {', '.join(sorted(SERVER_PROFILES))}",
        ) from None


# ----------------------------------------------------------------------------- OpenAI proper


@dataclass(frozen=True)
class ModelRule:
    """Capabilities of the OpenAI models whose (undated) name matches ``pattern`` in full."""

    pattern: str
    output_logprobs: bool
    fixed_sampling: bool = False
    # Body fields that must hold these values for logprobs (with ``defaults`` applied first).
    logprobs_requires: tuple[tuple[str, str], ...] = ()
    defaults: tuple[tuple[str, str], ...] = ()
    note: str = ""


_REASONING_NOTE = "reasoning model: rejects logprobs (unsupported_parameter; o4-mini answers 403)"

# First full match wins; names are compared after a trailing date (-2025-08-07) is removed.
OPENAI_MODEL_RULES: tuple[ModelRule, ...] = (
    ModelRule(r"o1(-mini|-preview|-pro)?", False, fixed_sampling=True, note=_REASONING_NOTE),
    ModelRule(r"o3(-mini|-pro|-deep-research)?", False, fixed_sampling=True, note=_REASONING_NOTE),
    ModelRule(r"o4-mini(-deep-research)?", False, fixed_sampling=True, note=_REASONING_NOTE),
    ModelRule(r"gpt-5(-mini|-nano|-pro|-codex)?", False, fixed_sampling=True, note=_REASONING_NOTE),
    ModelRule(r"gpt-5-chat(-latest)?", True, note="non-reasoning GPT-5 chat model"),
    # GPT-5.1 and later: logprobs only without reasoning; their default effort is "none".
    ModelRule(
        r"gpt-5\.\d+(-mini|-nano|-chat-latest)?",
        True,
        logprobs_requires=(("reasoning_effort", "none"),),
        defaults=(("reasoning_effort", "none"),),
        note="logprobs only with reasoning_effort none",
    ),
    ModelRule(r"gpt-5\.\d+-(pro|codex).*", False, fixed_sampling=True, note=_REASONING_NOTE),
    ModelRule(r".*", True, note="chat model: top_logprobs 0-20"),
)

_DATE_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")


def openai_model_rule(model: str) -> ModelRule:
    base = _DATE_SUFFIX.sub("", model.strip().lower())
    for rule in OPENAI_MODEL_RULES:
        if re.fullmatch(rule.pattern, base):
            return rule
    raise AssertionError("the catch-all rule always matches")  # pragma: no cover


def openai_model_capabilities(model: str) -> Capabilities:
    """Capabilities of an OpenAI model on api.openai.com (Chat Completions + Batch API)."""
    rule = openai_model_rule(model)
    return Capabilities(
        output_logprobs=rule.output_logprobs,
        max_top_logprobs=20 if rule.output_logprobs else 0,
        batch_api=True,
        quirks=frozenset({"masked_-9999"}),
        completions_endpoint=False,
        logprobs_requires=rule.logprobs_requires,
        fixed_sampling=rule.fixed_sampling,
        notes=rule.note,
    )


OPENAI_PROFILE = ServerProfile(
    name="openai",
    capabilities=Capabilities(output_logprobs=True, max_top_logprobs=20, batch_api=True),
    max_tokens_field="max_completion_tokens",
)


def openai_profile(model: str) -> ServerProfile:
    return replace(OPENAI_PROFILE, capabilities=openai_model_capabilities(model))


def openai_model_defaults(model: str) -> dict[str, str]:
    return dict(openai_model_rule(model).defaults)


# ----------------------------------------------------------------------------- Anthropic

ANTHROPIC_CAPABILITIES = Capabilities(
    output_logprobs=False,
    max_top_logprobs=0,
    batch_api=True,
    notes="no logprobs on any model; Message Batches at 50% off",
)


def anthropic_capabilities(model: str) -> Capabilities:
    """Same for every Claude model today; the model argument keeps the call site honest."""
    del model
    return ANTHROPIC_CAPABILITIES
