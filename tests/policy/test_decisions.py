"""Every row of shared/design/TOS-FACTS.md × every intended use → decision and citation."""

from __future__ import annotations

import pytest

from apidistill.policy.engine import decide
from apidistill.policy.loader import builtin_policy_dir, load_policies
from apidistill.policy.schema import USES

A, AO, RA, D, U = "allow", "allow_with_obligations", "requires_authorization", "deny", "unknown"

# (row, provider, model, channel, decisions in USES order, document part, clause part)
ROWS = [
    (
        "OpenAI API",
        "openai",
        "gpt-4.1-mini",
        "api",
        (AO, RA, D, D, AO),
        "OpenAI Services Agreement",
        "§3.3(e)",
    ),
    (
        "OpenAI API o-series",
        "openai",
        "o4-mini",
        "api",
        (AO, RA, D, D, AO),
        "OpenAI Services Agreement",
        "§3.3(e)",
    ),
    (
        "OpenAI gpt-oss weights",
        "openai",
        "openai/gpt-oss-20b",
        "weights",
        (A,) * 5,
        "Apache License 2.0",
        "Apache-2.0",
    ),
    (
        "Anthropic API",
        "anthropic",
        "claude-sonnet-4-5",
        "api",
        (RA,) * 5,
        "Anthropic Commercial Terms",
        "§D.4",
    ),
    (
        "Gemini API",
        "google",
        "gemini-2.5-flash",
        "api",
        (RA, RA, D, D, RA),
        "Gemini API Additional Terms",
        "compete",
    ),
    (
        "Gemini app",
        "google",
        "gemini",
        "app",
        (D,) * 5,
        "Google Terms of Service",
        "machine-learning",
    ),
    (
        "Gemma 3 weights",
        "google",
        "google/gemma-3-4b-it",
        "weights",
        (AO,) * 5,
        "Gemma Terms of Use",
        "Model Derivatives",
    ),
    (
        "Gemma 3n weights",
        "google",
        "google/gemma-3n-E2B-it",
        "weights",
        (AO,) * 5,
        "Gemma Terms of Use",
        "Model Derivatives",
    ),
    (
        "Gemma 2 weights (Ollama)",
        "google",
        "gemma2:9b",
        "weights",
        (AO,) * 5,
        "Gemma Terms of Use",
        "Model Derivatives",
    ),
    (
        "Gemma 4 weights",
        "google",
        "google/gemma-4-12b-it",
        "weights",
        (A,) * 5,
        "Apache License 2.0",
        "Apache-2.0",
    ),
    (
        "Llama API",
        "meta",
        "Llama-4-Maverick-17B-128E-Instruct-FP8",
        "api",
        (AO, AO, D, RA, AO),
        "Llama API Terms",
        "competing",
    ),
    (
        "Llama 3 weights",
        "meta",
        "meta-llama/Meta-Llama-3-8B-Instruct",
        "weights",
        (D,) * 5,
        "Meta Llama 3 Community License",
        "§1.b.v",
    ),
    (
        "Llama 3 weights (Ollama)",
        "meta",
        "llama3:8b",
        "weights",
        (D,) * 5,
        "Meta Llama 3 Community License",
        "§1.b.v",
    ),
    (
        "Llama 3.1 weights",
        "meta",
        "meta-llama/Llama-3.1-8B-Instruct",
        "weights",
        (AO,) * 5,
        "Llama 3.1 Community License",
        "§1.b.i",
    ),
    (
        "Llama 3.2 weights",
        "meta",
        "meta-llama/Llama-3.2-1B-Instruct",
        "weights",
        (AO,) * 5,
        "Llama 3.2 Community License",
        "§1.b.i",
    ),
    (
        "Llama 3.3 weights",
        "meta",
        "meta-llama/Llama-3.3-70B-Instruct",
        "weights",
        (AO,) * 5,
        "Llama 3.3 Community License",
        "§1.b.i",
    ),
    (
        "Llama 4 weights",
        "meta",
        "meta-llama/Llama-4-Scout-17B-16E-Instruct",
        "weights",
        (AO,) * 5,
        "Llama 4 Community License",
        "§1.b.i",
    ),
    (
        "Mistral API",
        "mistral",
        "mistral-large-latest",
        "api",
        (A,) * 5,
        "Mistral AI Commercial Terms",
        "image generation",
    ),
    (
        "DeepSeek API",
        "deepseek",
        "deepseek-chat",
        "api",
        (A,) * 5,
        "DeepSeek Open Platform Terms",
        "distillation",
    ),
    (
        "DeepSeek-R1 weights",
        "deepseek",
        "deepseek-ai/DeepSeek-R1",
        "weights",
        (A,) * 5,
        "MIT License",
        "MIT",
    ),
    ("xAI API", "xai", "grok-4", "api", (D,) * 5, "xAI Acceptable Use Policy", "distilling"),
    (
        "Grok 2 weights",
        "xai",
        "xai-org/grok-2",
        "weights",
        (D,) * 5,
        "Grok 2 Community License",
        "training other models",
    ),
    ("Qwen Chat app", "qwen", "qwen3-max", "app", (D,) * 5, "Qwen Chat Terms", "distillation"),
    (
        "Qwen License weights",
        "qwen",
        "Qwen/Qwen2.5-72B-Instruct",
        "weights",
        (AO,) * 5,
        "Qwen License Agreement",
        "attribution",
    ),
    (
        "Qwen Research License weights",
        "qwen",
        "Qwen/Qwen2.5-3B-Instruct",
        "weights",
        (RA, D, D, AO, AO),
        "Qwen Research License",
        "non-commercial",
    ),
    (
        "Qwen2.5 Apache weights",
        "qwen",
        "Qwen/Qwen2.5-7B-Instruct",
        "weights",
        (A,) * 5,
        "Apache License 2.0",
        "Apache-2.0",
    ),
    (
        "Qwen3 Apache weights",
        "qwen",
        "Qwen/Qwen3-8B",
        "weights",
        (A,) * 5,
        "Apache License 2.0",
        "Apache-2.0",
    ),
    (
        "Cohere Command R weights",
        "cohere",
        "CohereForAI/c4ai-command-r-v01",
        "weights",
        (RA, D, D, AO, AO),
        "Attribution-NonCommercial 4.0",
        "NonCommercial",
    ),
    (
        "Cohere Aya weights",
        "cohere",
        "CohereForAI/aya-expanse-8b",
        "weights",
        (RA, D, D, AO, AO),
        "Attribution-NonCommercial 4.0",
        "NonCommercial",
    ),
    ("Cohere API", "cohere", "command-a-03-2025", "api", (U,) * 5, "Cohere API terms", "not found"),
    (
        "OpenRAIL weights",
        "self_hosted",
        "bigscience/bloom-560m",
        "weights",
        (AO,) * 5,
        "Open RAIL",
        "restrictions",
    ),
    (
        "Apache-2.0 weights (demo teacher)",
        "self_hosted",
        "smollm2-135m-instruct",
        "weights",
        (A,) * 5,
        "Apache License 2.0",
        "Apache-2.0",
    ),
    (
        "Apache-2.0 weights (HF name)",
        "self_hosted",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "weights",
        (A,) * 5,
        "Apache License 2.0",
        "Apache-2.0",
    ),
    (
        "MIT weights",
        "self_hosted",
        "microsoft/Phi-3-mini-4k-instruct",
        "weights",
        (A,) * 5,
        "MIT License",
        "MIT",
    ),
]

CASES = [
    pytest.param(prov, model, chan, use, exp[i], doc, clause, id=f"{row}-{use}")
    for row, prov, model, chan, exp, doc, clause in ROWS
    for i, use in enumerate(USES)
]


@pytest.mark.parametrize(
    ("provider", "model", "channel", "use", "expected", "doc", "clause"), CASES
)
def test_every_row_and_use(provider, model, channel, use, expected, doc, clause):
    d = decide(provider, model, use, channel=channel)
    assert d.decision == expected, d.reason
    assert doc in (d.document or "")
    assert clause in (d.clause or "")
    assert d.channel == channel
    assert d.reason and d.policy_file and d.checked_on is not None
    assert d.permits == (expected in (A, AO))


def test_channel_is_inferred_from_the_most_exact_pattern():
    # gpt-oss is open weights, not the OpenAI API, even when asked under provider "openai".
    assert decide("openai", "gpt-oss-120b", "competing").channel == "weights"
    assert decide("openai", "gpt-5", "competing").channel == "api"


def test_the_self_hosted_provider_reaches_every_vendors_weights_policy():
    d = decide("self_hosted", "meta-llama/Llama-3.1-8B-Instruct", "commercial", channel="weights")
    assert d.decision == AO and d.obligations.name_prefix == "Llama"
    d = decide("vllm", "meta-llama/Meta-Llama-3-70B-Instruct", "internal", channel="weights")
    assert d.decision == D and d.clause == "§1.b.v"


def test_llama3_original_is_not_confused_with_llama31():
    assert decide("meta", "Meta-Llama-3-8B", "internal").decision == D
    assert decide("meta", "Meta-Llama-3.1-8B", "internal").decision == AO


def test_r1_distill_on_llama_follows_the_llama_license():
    d = decide("self_hosted", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "commercial")
    assert d.document == "Llama 3.1 Community License Agreement"
    assert (
        decide("self_hosted", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "commercial").decision == A
    )


def test_effective_dates_from_the_facts_sheet():
    assert str(decide("openai", "gpt-4o", "internal").effective_date) == "2026-01-01"
    assert str(decide("anthropic", "claude-3-5-haiku", "internal").effective_date) == "2025-06-17"
    assert str(decide("mistral", "mistral-small", "internal").effective_date) == "2026-05-28"
    assert str(decide("deepseek", "deepseek-reasoner", "internal").effective_date) == "2026-04-29"
    assert str(decide("xai", "grok-3", "internal").effective_date) == "2026-08-14"


def test_unmatched_model_is_unknown_without_a_citation():
    d = decide("acme", "mystery-model", "internal")
    assert d.decision == U and d.document is None and not d.permits
    assert "no policy file covers" in d.reason


def test_weights_license_hint_only_applies_when_no_policy_names_the_model():
    d = decide("self_hosted", "acme/house-model-1b", "commercial", license="Apache-2.0")
    assert d.decision == A and d.matched == "apache-2.0" and "declared" in d.reason
    d = decide("self_hosted", "acme/house-model-1b", "commercial", license="cc-by-nc-4.0")
    assert d.decision == D
    # A named checkpoint is not re-licensed by a wrong hint.
    d = decide("self_hosted", "Qwen/Qwen2.5-3B-Instruct", "commercial", license="apache-2.0")
    assert d.decision == D


def test_decision_ids_are_stable_and_distinct():
    a = decide("openai", "gpt-4.1-mini", "internal")
    b = decide("openai", "gpt-4.1-mini", "internal")
    c = decide("openai", "gpt-4.1-mini", "commercial")
    assert a.id == b.id and a.id != c.id and a.id.startswith("pd-")


def test_builtin_library_answers_every_use_in_every_policy():
    for p in load_policies([builtin_policy_dir()]):
        assert set(p.rules) == set(USES), p.id
        assert p.checked_on is not None


def test_unknown_use_is_a_config_error():
    from apidistill.errors import ConfigError

    with pytest.raises(ConfigError, match="research_noncommercial"):
        decide("openai", "gpt-4o", "hobby")
