"""What may be sent and how: ``policy:`` (the intended use checked against the teacher's
terms), ``budget:`` (the hard spending cap) and ``harvest:`` (how answers are requested)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from apidistill.config._base import _Section


class PolicyConfig(_Section):
    use: Literal[
        "internal", "commercial", "competing", "redistribute", "research_noncommercial"
    ] = Field(
        ...,
        description="What the student will be used for; the teacher's terms are checked against it before the first request.",
    )
    policy_dirs: list[str] = Field(
        default_factory=list,
        description="Extra policy files (your own agreements with a provider).",
    )
    authorization_reference: str | None = Field(
        None,
        description='Written permission that the terms ask for, e.g. "Anthropic written approval #1234".',
    )
    acknowledge_unknown: str | None = Field(
        None,
        description="Who accepts running a teacher with no known terms, and why; recorded in the dataset card.",
    )
    override_reference: str | None = Field(
        None, description="A signed enterprise agreement that replaces the public terms."
    )
    weights_license: str | None = Field(
        None,
        description='License id of a self-hosted teacher\'s weights (e.g. "apache-2.0"), used only when no policy file names the checkpoint itself (docs/policies.md).',
    )


class BudgetConfig(_Section):
    usd: Decimal = Field(
        ...,
        ge=0,
        description="Hard cap in USD for everything the run's journal sends, every run together.",
    )
    per_day_usd: Decimal | None = Field(None, ge=0, description="Hard cap in USD per UTC day.")


class HarvestConfig(_Section):
    concurrency: int = Field(16, ge=1, le=4096, description="Requests in flight at once.")
    rpm: int | None = Field(
        None, gt=0, description="Requests per minute, held in every sliding window."
    )
    tpm: int | None = Field(
        None, gt=0, description="Tokens per minute, held in every sliding window."
    )
    max_tokens: int = Field(256, gt=0, description="Output tokens per teacher answer.")
    temperature: float = Field(
        0.0, ge=0.0, le=2.0, description="Sampling temperature of the teacher."
    )
    top_p: float | None = Field(
        None, gt=0.0, le=1.0, description="Nucleus sampling of the teacher."
    )
    seed: int | None = Field(None, description="Sampling seed, where the teacher supports one.")
    stop: list[str] | None = Field(None, description="Stop sequences.")
    n: int = Field(
        1,
        ge=1,
        le=128,
        description="Answers per prompt; each is its own request, cache entry and cost, and a record `<id>-s1`, `<id>-s2`, ...",
    )
    logprobs: bool = Field(
        False, description="Ask for the sampled tokens' log-probabilities (needed by logprob KD)."
    )
    top_logprobs: int = Field(
        0, ge=0, le=20, description="Top alternatives per position (needs logprobs: true)."
    )
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout in seconds.")
    max_retries: int = Field(
        6,
        ge=0,
        le=50,
        description="Retries after the first attempt (429, 5xx, timeouts; never 4xx refusals).",
    )
    use_batch_api: bool = Field(
        False,
        description="Send through the provider's Batch API at its discount (openai, anthropic).",
    )
    on_missing_logprobs: Literal["error", "sequence_kd"] = Field(
        "error",
        description="What to do when logprob KD is asked of a teacher that gives no logprobs: error, or fall back to sequence KD.",
    )
    max_requests: int | None = Field(
        None,
        ge=0,
        description="New requests this run may send; 0 sends none (answers come from the journal only).",
    )
    retry_failed: list[str] | None = Field(
        None,
        description='Final failures of earlier runs to send again: reasons (rejected, out_of_credit, ...) or "all"; add "at_risk" for requests that may already have been billed.',
    )
    rescore: bool = Field(
        False,
        description="Imported answers without logprobs: ask the teacher again for each imported input with this section's logprob settings (docs/import.md#rescore).",
    )
    rescore_on_mismatch: Literal["keep_imported", "regenerated"] = Field(
        "keep_imported",
        description="When a regenerated answer differs from the imported one: keep the imported answer without logprobs, or use the regenerated answer.",
    )

    @field_validator("retry_failed", mode="before")
    @classmethod
    def _one_word_is_a_list(cls, v: Any) -> Any:
        return v.split(",") if isinstance(v, str) else v

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> HarvestConfig:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs > 0 needs logprobs: true")
        if self.rescore and not self.logprobs:
            raise ValueError("rescore re-harvests logprobs: it needs logprobs: true")
        return self
