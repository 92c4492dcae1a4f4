"""The teacher contract: what every provider client implements and declares.

Capabilities are declared, never guessed from a model name deep in the engine: the harvest
engine and the KD trainer ask ``teacher.capabilities`` whether logprobs, top-k, prompt
scoring or a Batch API exist, and fail (or fall back, when the config says so) before any
money is spent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from apidistill.records import Completion, TeacherRequest


@dataclass(frozen=True)
class Capabilities:
    """What a teacher (provider + model + server profile) can return."""

    output_logprobs: bool = False
    max_top_logprobs: int = 0
    prompt_logprobs: bool = False  # scoring of given text (vLLM prompt_logprobs, echo)
    batch_api: bool = False
    # Token ids in logprob payloads (vLLM ``return_tokens_as_token_ids``; apidistill serve).
    token_ids: bool = False
    # Known quirks of the server's logprob payloads, handled in teachers/logprobs.py.
    quirks: frozenset[str] = field(default_factory=frozenset)
    max_concurrency_hint: int | None = None
    notes: str = ""
    # The server answers plain-prompt requests on /v1/completions (else prompts are refused).
    completions_endpoint: bool = False
    # Body fields that must hold these values (after the model's defaults) for logprobs to be
    # returned, e.g. GPT-5.1+: (("reasoning_effort", "none"),). Data, not ifs in the client.
    logprobs_requires: tuple[tuple[str, str], ...] = ()
    # Reasoning models accept only their default sampling (temperature 1, no top_p).
    fixed_sampling: bool = False
    # Output tokens the server generates (and counts) past ``max_tokens``: the budget's worst
    # case and its usage judge allow for them, so a documented overrun is reserved for rather
    # than flagged. llama-cpp-python finishes a UTF-8 character cut by the limit first.
    output_overrun_tokens: int = 0


@dataclass(frozen=True)
class RateLimitSnapshot:
    """Limits the provider reported in its last response headers (None = not reported)."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None
    # Anthropic limits input and output tokens per minute separately.
    limit_input_tokens: int | None = None
    remaining_input_tokens: int | None = None
    reset_input_tokens_s: float | None = None
    limit_output_tokens: int | None = None
    remaining_output_tokens: int | None = None
    reset_output_tokens_s: float | None = None


@dataclass
class TeacherResponse:
    """A completion plus the transport facts the engine needs (headers for limits)."""

    completion: Completion
    rate_limits: RateLimitSnapshot | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # Why ``completion.logprobs`` is None although logprobs were asked for (e.g. the model
    # returned none); None when logprobs came back or were not requested.
    logprobs_missing_reason: str | None = None


@runtime_checkable
class Teacher(Protocol):
    """An async client for one provider/model. Implementations do no retrying themselves:
    ``harvest/retry.py`` owns the retry policy; teachers map errors into
    :mod:`apidistill.errors` (with ``retry_after`` where the provider sent one)."""

    provider: str
    model: str

    @property
    def teacher_id(self) -> str:
        """Stable identity for the cache key: provider + base URL (never the API key)."""
        ...

    @property
    def capabilities(self) -> Capabilities: ...

    async def complete(self, request: TeacherRequest) -> TeacherResponse:
        """Send one request (no retries) and return the normalized completion."""
        ...

    async def aclose(self) -> None: ...
