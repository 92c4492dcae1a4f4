"""The ``teacher:`` section: which API model is distilled, its price and, for a self-hosted
teacher, the ``launch:`` block that starts it."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from apidistill.config._base import DEFAULT_MODEL, _Section


class PriceConfig(_Section):
    """A user-given price; overrides genai-prices. Self-hosted: 0, or $/hour at a throughput."""

    input_per_mtok: Decimal | None = Field(None, ge=0, description="USD per million input tokens.")
    output_per_mtok: Decimal | None = Field(
        None, ge=0, description="USD per million output tokens."
    )
    cached_input_per_mtok: Decimal | None = Field(
        None,
        ge=0,
        description="USD per million input tokens read from a prompt cache (unset: the provider's usual discount from genai-prices, else the input price).",
    )
    cache_write_per_mtok: Decimal | None = Field(
        None,
        ge=0,
        description="USD per million input tokens written to a prompt cache (Anthropic: 1.25x input for the 5-minute TTL).",
    )
    usd_per_hour: Decimal | None = Field(
        None,
        ge=0,
        description="Self-hosted: what the server costs per hour; turned into $/token with tokens_per_second.",
    )
    tokens_per_second: float | None = Field(
        None, gt=0, description="Self-hosted: the server's throughput, needed with usd_per_hour."
    )
    batch_discount: Decimal = Field(
        Decimal("0.5"),
        ge=0,
        le=1,
        description="Share of the price a Batch API request pays (0.5 = half price).",
    )

    @model_validator(mode="after")
    def _complete(self) -> PriceConfig:
        if self.usd_per_hour is not None and self.tokens_per_second is None:
            raise ValueError("usd_per_hour needs tokens_per_second to turn $/hour into $/token")
        return self


class TeacherLaunchConfig(_Section):
    """Start ``apidistill serve`` as the teacher (offline demo, self-hosted tests): the run
    launches the server, harvests from it and stops it. (The top-level ``serve:`` section is
    the student server's.)"""

    model: str = Field(
        DEFAULT_MODEL,
        description="Model the teacher server runs (an embedded name, a hub id, a folder or a .gguf file).",
    )
    adapter: str | None = Field(
        None, description="A LoRA adapter folder served on top of the model."
    )
    port: int = Field(
        0, ge=0, le=65535, description="Port of the teacher server; 0 picks a free one."
    )
    max_batch_size: int = Field(
        16, ge=1, le=256, description="Requests the teacher server batches into one forward pass."
    )
    backend: Literal["auto", "llamacpp", "vllm", "transformers"] = Field(
        "transformers",
        description="The engine of `apidistill serve --backend`: transformers keeps harvests identical; auto = llama.cpp for a GGUF model when llama-cpp-python is installed.",
    )
    threads: int | None = Field(
        None, ge=1, description="CPU threads of the engine (default: physical cores)."
    )


class TeacherConfig(_Section):
    provider: Literal["openai", "anthropic", "openai_compatible"] = Field(
        "openai_compatible",
        description="Which API the teacher speaks: openai, anthropic, or openai_compatible (any server with the OpenAI chat API). Never guessed from the model name.",
    )
    profile: Literal["apidistill", "vllm", "llamacpp", "ollama", "tgi", "sglang", "generic"] = (
        Field(
            "generic",
            description="Server profile for openai_compatible: which logprob fields exist and their quirks.",
        )
    )
    model: str = Field(..., description="The teacher model name as the API expects it.")
    base_url: str | None = Field(
        None,
        description="API base URL (required for openai_compatible unless a launch block starts the server).",
    )
    api_key_env: str | None = Field(
        None,
        description="Name of the environment variable holding the API key; the key itself is never stored. Unset: OPENAI_API_KEY / ANTHROPIC_API_KEY (none for openai_compatible).",
    )
    tokenizer: str | None = Field(
        None,
        description="The teacher's tokenizer when known (self-hosted): exact token counts and token ids.",
    )
    launch: TeacherLaunchConfig | None = Field(
        None,
        description="Start `apidistill serve` as the teacher (offline demo, self-hosted tests); the top-level `serve:` section is the student's server.",
    )
    # the old name of ``launch``: refused with the new name (it read like the student server);
    # an attribute of another name, so code that still reads ``teacher.serve`` fails loudly
    legacy_serve: Any = Field(
        None,
        alias="serve",
        exclude=True,
        description="Old name of `launch`; refused with the new name.",
    )
    price: PriceConfig | None = Field(
        None, description="A price of your own, overriding genai-prices."
    )
    allow_unpriced: bool = Field(
        False,
        description="Run although no price is known: costs are recorded as unknown and the budget counts requests only.",
    )
    transport: Literal["auto", "httpx2", "aiohttp"] = Field(
        "auto",
        description="HTTP transport of the SDK client: aiohttp (far less CPU per request) or httpx2; auto = aiohttp when installed, else httpx2. Errors map the same on both. In `apidistill proxy`, auto = its raw httptools pool when httptools imports (docs/proxy.md).",
    )
    store: bool = Field(
        False,
        description="OpenAI stored completions: send `store: true` with our cache key in metadata, so an answer lost after sending (kill -9, a reset) is looked up and recovered instead of re-sent and paid twice. OpenAI (or a server with that API) only.",
    )
    prompt_cache: bool | None = Field(
        None,
        description="Anthropic prompt caching: mark the prefix every request shares with cache_control (unset = on). OpenAI caches long prefixes by itself (docs/costs.md).",
    )
    count_tokens: bool = Field(
        False,
        description="Anthropic: let `apidistill estimate` ask POST /v1/messages/count_tokens for exact input counts (free, rate-limited; sends the prompts to Anthropic).",
    )

    @field_validator("legacy_serve", mode="before")
    @classmethod
    def _serve_was_renamed(cls, v: Any) -> Any:
        if v is None:
            return v
        raise ValueError(
            "teacher.serve is now teacher.launch (the block that starts `apidistill serve` as "
            "the teacher; the top-level serve: section configures the student's server): "
            "rename the key, its contents stay the same"
        )

    @model_validator(mode="after")
    def _base_url_for_compatible(self) -> TeacherConfig:
        if self.provider == "openai_compatible" and not self.base_url and self.launch is None:
            raise ValueError("provider openai_compatible needs 'base_url' (or a 'launch' block)")
        if self.store and self.provider == "anthropic":
            raise ValueError("'store' is OpenAI's stored completions; Anthropic has none")
        if self.provider != "anthropic" and self.prompt_cache is not None:
            raise ValueError(
                "'prompt_cache' marks Anthropic's cache_control; OpenAI and OpenAI-compatible "
                "servers cache a repeated prefix by themselves: remove it"
            )
        if self.provider != "anthropic" and self.count_tokens:
            raise ValueError(
                "'count_tokens' asks Anthropic's count_tokens endpoint; other teachers are "
                "counted locally: remove it"
            )
        return self

    @property
    def marks_prompt_cache(self) -> bool:
        """Whether requests carry Anthropic ``cache_control`` on their shared prefix."""
        return self.provider == "anthropic" and self.prompt_cache is not False
