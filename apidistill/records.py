"""Provider-neutral types that cross stage boundaries.

Every stage talks to the next only through these: teachers return :class:`Completion`,
harvest writes :class:`Record`, training reads :class:`Record`. Providers give logprobs as
strings; :class:`TokenLogprob` keeps the token id when the teacher's tokenizer is known
(self-hosted teachers) and the UTF-8 bytes otherwise, so cross-tokenizer alignment can work
on bytes.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "SCHEMA_VERSION",
    "Completion",
    "GenerationParams",
    "Message",
    "Provenance",
    "Record",
    "Role",
    "TeacherRequest",
    "TokenLogprob",
    "TopLogprob",
    "Usage",
]

SCHEMA_VERSION = 1

Role = Literal["system", "user", "assistant"]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    content: str


class TopLogprob(BaseModel):
    """One alternative at a position: the provider's token text, its id when known, its bytes."""

    model_config = ConfigDict(extra="forbid")

    token_id: int | None = None
    token: str
    bytes: list[int] | None = None
    logprob: float


class TokenLogprob(BaseModel):
    """The sampled token at one output position and the teacher's top alternatives there."""

    model_config = ConfigDict(extra="forbid")

    token_id: int | None = None
    token: str
    bytes: list[int] | None = None
    logprob: float
    top: list[TopLogprob] = Field(default_factory=list)


class Usage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # every input token, cache reads and writes included (Anthropic reports them apart)
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0  # read from a prompt cache (billed at the cache-read rate)
    cache_write_input_tokens: int = 0  # written to a prompt cache (Anthropic, 1.25× input)


class GenerationParams(BaseModel):
    """Everything besides the messages that changes a teacher's answer (part of the cache key)."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(256, gt=0)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: list[str] | None = None
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = Field(0, ge=0, le=20)
    # Provider-specific body fields passed through verbatim (e.g. vLLM's
    # ``return_tokens_as_token_ids``). They change the answer, so they are hashed too.
    extra_body: dict[str, Any] = Field(default_factory=dict)


class TeacherRequest(BaseModel):
    """One provider-neutral request. ``sample_index`` separates n>1 samples in the cache."""

    model_config = ConfigDict(extra="forbid")

    messages: list[Message] | None = None
    prompt: str | None = None
    params: GenerationParams = Field(default_factory=GenerationParams)
    sample_index: int = 0
    # Caller's id for the prompt (e.g. a row id); not part of the cache key.
    prompt_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_input(self) -> TeacherRequest:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of 'messages' (chat) or 'prompt' (completion)")
        return self

    def cache_key(self, teacher_id: str, model: str) -> str:
        """Content address: teacher (provider + base URL), model, params, rendered input."""
        body = {
            "teacher": teacher_id,
            "model": model,
            "params": self.params.model_dump(mode="json"),
            "messages": [m.model_dump() for m in self.messages] if self.messages else None,
            "prompt": self.prompt,
            "sample_index": self.sample_index,
        }
        blob = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class Completion(BaseModel):
    """A teacher's answer, normalized across providers."""

    model_config = ConfigDict(extra="forbid")

    text: str
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None
    usage: Usage = Field(default_factory=Usage)
    cost_usd: Decimal | None = None  # None = unknown (unpriced model), never a silent 0
    latency_ms: float = 0.0
    provider: str
    model: str
    model_version: str | None = None  # e.g. system_fingerprint or the dated model id
    request_hash: str = ""
    # Logprob values with no probability in them (NaN, ±inf, the provider's mask), counted
    # rather than hidden: sampled tokens stored as -100, top-list alternatives left out.
    logprobs_invalid: int = Field(0, ge=0)
    logprobs_dropped: int = Field(0, ge=0)
    # The sampling fields of the body that produced this answer (temperature, top_p, seed,
    # a server's penalties...): the answer depends on them as much as on the prompt. Empty
    # when not known (an answer journaled before they were recorded).
    sampling: dict[str, Any] = Field(default_factory=dict)


class Provenance(BaseModel):
    """Where a record came from, and under which terms decision it was harvested."""

    model_config = ConfigDict(extra="forbid")

    provider: str
    model: str
    base_url: str | None = None
    model_version: str | None = None
    policy_decision_id: str | None = None
    terms_document: str | None = None
    terms_version: str | None = None
    harvested_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class Record(BaseModel):
    """One training/eval example: the input, the teacher's output and where it came from.

    ``messages``/``prompt`` hold the task input as the *student* will see it: the prototype
    prompt's instructions and few-shot turns that the teacher saw are not repeated per record
    (``metadata["prompt_template"]`` names them), because dropping them is the point of the
    migration.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    messages: list[Message] | None = None
    prompt: str | None = None
    completion: str
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None
    label: str | None = None
    gold: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    provenance: Provenance | None = None
    usage: Usage = Field(default_factory=Usage)
    cost_usd: Decimal | None = None
    split: Literal["train", "validation", "test"] | None = None

    @model_validator(mode="after")
    def _one_input(self) -> Record:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of 'messages' (chat) or 'prompt' (completion)")
        return self
