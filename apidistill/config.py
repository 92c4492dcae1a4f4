"""The YAML run file: one pydantic model per stage, validated at the boundary.

``apidistill run config.yaml`` reads one :class:`RunConfig`. Every section forbids unknown
keys, and :func:`load_config` turns pydantic's errors into a :class:`ConfigError` that names
the file, the line, the key path and the allowed values, so a typo never becomes a silently
ignored setting.
"""

from __future__ import annotations

import string
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from apidistill.errors import ConfigError

__all__ = [
    "BalanceConfig",
    "BudgetConfig",
    "DatasetConfig",
    "EvalConfig",
    "ExportConfig",
    "FilterConfig",
    "HarvestConfig",
    "ImportConfig",
    "KDConfig",
    "LoraConfig",
    "PolicyConfig",
    "PriceConfig",
    "PromptsConfig",
    "RunConfig",
    "ServeConfig",
    "SplitConfig",
    "StudentConfig",
    "SynthConfig",
    "TeacherConfig",
    "TrainingConfig",
    "load_config",
    "parse_config",
]

DEFAULT_MODEL = "smollm2-135m-instruct"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


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
        description="HTTP transport of the SDK client: aiohttp (far less CPU per request) or httpx2; auto = aiohttp when installed, else httpx2. Errors map the same on both.",
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


ImportKind = Literal[
    "openai_finetune", "openai_stored", "openai_batch", "anthropic_batch", "captures", "chat"
]


class ImportConfig(_Section):
    """One source of existing answers (``apidistill import``; docs/import.md): the records
    enter the run's dataset beside the harvested ones, with their provenance and the terms
    decision of the model that wrote them."""

    kind: ImportKind = Field(
        ...,
        description="What the source is: an OpenAI fine-tuning file, OpenAI stored completions, an OpenAI or Anthropic Batch output, the proxy's captures, or a generic chat file.",
    )
    path: str | None = Field(
        None,
        description="A local file (relative to the run file), or for openai_finetune an OpenAI file id (file-...) fetched through the Files API; not used by openai_stored.",
    )
    requests: str | None = Field(
        None,
        description="The batch's input file (openai_batch, anthropic_batch): the output does not repeat it.",
    )
    provider: str | None = Field(
        None, description="Who wrote the answers, when the data does not say (chat)."
    )
    model: str | None = Field(
        None,
        description="The model that wrote the answers, when the data does not say (openai_finetune, chat).",
    )
    metadata: dict[str, str] = Field(
        default_factory=dict,
        description="openai_stored: metadata filters of chat.completions.list.",
    )
    after: str | None = Field(
        None, description="openai_stored: list only completions after this id."
    )
    base_url: str | None = Field(
        None,
        description="openai_stored and a Files API id: where to ask (default api.openai.com / $OPENAI_BASE_URL).",
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        description="Environment variable holding the key for openai_stored and Files API ids (never the key itself).",
    )
    limit: int | None = Field(None, gt=0, description="Import at most this many records.")
    skip_invalid: bool = Field(
        False, description="Skip rows that cannot be read instead of stopping at the first."
    )

    @model_validator(mode="after")
    def _complete(self) -> ImportConfig:
        if self.kind != "openai_stored" and not self.path:
            raise ValueError(f"import kind {self.kind} needs 'path'")
        if self.kind in ("openai_batch", "anthropic_batch") and not self.requests:
            raise ValueError(f"import kind {self.kind} needs 'requests' (the batch's input file)")
        if self.kind in ("openai_finetune", "chat") and not self.model:
            raise ValueError(f"import kind {self.kind} needs 'model' (who wrote the answers)")
        if self.kind == "chat" and not self.provider:
            raise ValueError("import kind chat needs 'provider' (who wrote the answers)")
        return self


class PromptsConfig(_Section):
    """Where the task inputs come from and how the prototype prompt wraps them."""

    path: str | None = Field(
        None,
        description="The prompt file (relative to the run file's folder); optional when imports bring the inputs.",
    )
    imports: list[ImportConfig] = Field(
        default_factory=list,
        description="Existing answers to import into the run (fine-tuning file, stored completions, Batch outputs, the proxy's captures, a generic chat file); docs/import.md.",
    )
    format: Literal["auto", "jsonl", "csv", "parquet"] = Field(
        "auto", description="File format; auto goes by the extension."
    )
    input_field: str = Field(
        "text", description="Field with the input: plain text, or a list of chat messages."
    )
    id_field: str | None = Field(
        None, description="Field with a stable row id (unset: ids are hashes of the input)."
    )
    label_field: str | None = Field(
        None, description="Field with a class label, for balancing and stratified splits."
    )
    gold_field: str | None = Field(
        None, description="Field with the reference answer, for task scoring."
    )
    template: str | None = Field(
        None,
        description="The prototype prompt: a YAML/JSON file with `system`, `shots` (user/assistant pairs) and a `template` with `{input}` for the user turn.",
    )
    limit: int | None = Field(None, gt=0, description="Use only the first N rows.")
    skip_invalid: bool = Field(
        False,
        description="Skip rows that cannot be read (listed in a report) instead of stopping at the first.",
    )

    @model_validator(mode="after")
    def _has_a_source(self) -> PromptsConfig:
        if not self.path and not self.imports:
            raise ValueError("prompts needs 'path' (a prompt file) or 'imports' (existing data)")
        return self


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


class FilterConfig(_Section):
    drop_truncated: bool = Field(True, description="Drop answers cut off by max_tokens.")
    drop_empty: bool = Field(True, description="Drop empty answers.")
    max_output_chars: int | None = Field(None, gt=0, description="Drop answers longer than this.")
    refusal_patterns: list[str] = Field(
        default_factory=lambda: [r"(?i)\bI(?:'m| am) sorry\b", r"(?i)\bI can(?:not|'t) help\b"],
        description="Regexes; an answer that matches one is a refusal and is dropped.",
    )
    regex: str | None = Field(None, description="Answers must match this regex.")
    json_schema: dict[str, Any] | None = Field(
        None, description="Answers must parse as JSON and validate against this schema."
    )
    label_set: list[str] | None = Field(None, description="Answers must be one of these labels.")


class BalanceConfig(_Section):
    by: Literal["label", "length"] | str = Field(
        "label", description="Balance by label, by length, or by a metadata field."
    )
    max_per_class: int | None = Field(
        None, gt=0, description="Keep at most this many records per class."
    )
    target: dict[str, float] | None = Field(
        None, description="Share of each class (class -> share)."
    )


class SplitConfig(_Section):
    train: float = Field(0.8, ge=0, le=1, description="Share of records for training.")
    validation: float = Field(0.0, ge=0, le=1, description="Share for validation during training.")
    test: float = Field(
        0.2, ge=0, le=1, description="Share for evaluation; train + validation + test must be 1."
    )
    seed: int = Field(0, description="Seed of the split.")
    stratify_by: str | None = Field(
        "label", description="Metadata field the splits keep in proportion (unset: random)."
    )

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must be 1.0, got {total:g}")
        return self


class DatasetConfig(_Section):
    filters: FilterConfig = Field(
        default_factory=FilterConfig, description="Which answers are dropped."
    )
    dedupe: Literal["none", "exact", "near"] = Field(
        "near", description="Remove exact or near-duplicate inputs."
    )
    near_dup_threshold: float = Field(
        0.85, gt=0, lt=1, description="Similarity above which two inputs are near duplicates."
    )
    balance: BalanceConfig | None = Field(None, description="Rebalance the classes.")
    splits: SplitConfig = Field(
        default_factory=SplitConfig, description="Train/validation/test shares."
    )
    top_k_store: int = Field(
        20,
        ge=0,
        le=20,
        description="Top alternatives kept per position in the stored dataset (the most likely; the sampled token's own log-probability always stays; 0 keeps none). Logprob KD needs at least training.kd.top_k.",
    )


class StudentConfig(_Section):
    model: str = Field(
        DEFAULT_MODEL,
        description="The student model (an embedded name, a hub id, a folder or a .gguf file); defaults to the first candidate.",
    )
    system_prompt: str | None = Field(
        None,
        description="The student's short instruction replacing the prototype prompt (unset: no system turn).",
    )
    candidates: list[str] = Field(
        default_factory=list,
        description="Several sizes against a latency budget: each is trained, evaluated and timed on the same split, and the smallest that meets eval.thresholds (including max_latency_ms_p95) is exported.",
    )

    @model_validator(mode="before")
    @classmethod
    def _model_from_candidates(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("candidates") and "model" not in data:
            data = {**data, "model": data["candidates"][0]}
        return data

    @field_validator("candidates")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        dup = sorted({c for c in v if v.count(c) > 1})
        if dup:
            raise ValueError(f"candidates are listed twice: {', '.join(dup)}")
        return v


class LoraConfig(_Section):
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA scaling (alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA layers.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules that get adapters; all-linear = every linear layer."
    )


class KDConfig(_Section):
    loss: Literal["forward_kl", "reverse_kl", "jsd", "unbiased"] = Field(
        "forward_kl",
        description="Distillation loss: forward KL, reverse KL, generalized JSD, or the unbiased top-k estimator.",
    )
    temperature: float = Field(
        1.0, gt=0, description="Softmax temperature of teacher and student in the KD term."
    )
    alpha: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Weight of the KD term; 1 - alpha goes to cross-entropy on the teacher's text.",
    )
    beta: float = Field(0.5, gt=0, lt=1, description="Mix of the generalized JSD.")
    top_k: int = Field(
        20, ge=1, le=20, description="Teacher alternatives per position the loss uses."
    )


class TrainingConfig(_Section):
    method: Literal["sequence_kd", "logprob_kd"] = Field(
        "sequence_kd",
        description="sequence_kd trains on the teacher's text; logprob_kd also matches its top-k distribution.",
    )
    full_finetune: bool = Field(False, description="Train every weight instead of a LoRA adapter.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings.")
    kd: KDConfig = Field(default_factory=KDConfig, description="Logprob-KD settings.")
    epochs: float = Field(2.0, gt=0, description="Passes over the training split.")
    max_steps: int = Field(
        -1, ge=-1, description="Stop after this many optimizer steps (-1: by epochs)."
    )
    learning_rate: float = Field(5e-4, gt=0, description="Peak learning rate.")
    batch_size: int = Field(8, ge=1, description="Examples per device per step.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Steps accumulated per optimizer update."
    )
    warmup_ratio: float = Field(
        0.1, ge=0, lt=1, description="Share of steps spent warming the learning rate up."
    )
    max_length: int = Field(
        512, ge=16, description="Tokens per example (prompt + answer); longer ones are cut."
    )
    packing: bool = Field(
        False, description="Concatenate examples into max_length rows (block-diagonal attention)."
    )
    seed: int = Field(0, description="Training seed.")
    save_steps: int | None = Field(
        None, gt=0, description="Checkpoint every N steps (unset: at each epoch's end)."
    )
    eval_steps: int | None = Field(
        None, gt=0, description="Evaluate on the validation split every N steps."
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many evaluations without improvement."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="The dtype the student's weights are loaded in (not only autocast); float32 keeps fp32 weights with bf16 autocast on a GPU that has it.",
    )
    attn_implementation: (
        Literal["eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"] | None
    ) = Field(
        None,
        description="transformers' attention kernel (unset: the model's default, sdpa where supported).",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations: less memory, about 30% slower."
    )
    quantization: Literal["4bit", "8bit"] | None = Field(
        None,
        description="QLoRA: load the frozen base in 4-bit NF4 or 8-bit (bitsandbytes, CUDA, LoRA only).",
    )
    trainer_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other transformers.TrainingArguments field, passed through as given (lr_scheduler_type, weight_decay, optim, deepspeed, fsdp, ...); fields this section already sets are refused with the key to use instead.",
    )

    @field_validator("trainer_args")
    @classmethod
    def _known_trainer_args(cls, v: dict[str, Any]) -> dict[str, Any]:
        if v:
            from apidistill.trainer_args import check_trainer_args

            check_trainer_args(v)
        return v

    @model_validator(mode="after")
    def _quantization_needs_lora(self) -> TrainingConfig:
        if self.quantization and self.full_finetune:
            raise ValueError(
                "quantization (QLoRA) trains a LoRA adapter over frozen quantized weights; "
                "it cannot be combined with full_finetune: true"
            )
        if self.dtype == "float16" and self.full_finetune:
            raise ValueError(
                "full fine-tuning in float16 weights has no float32 master copy for the "
                "gradient scaler; use dtype: bfloat16 (or float32, or LoRA)"
            )
        return self


class EvalThresholds(_Section):
    agreement: float | None = Field(
        0.90,
        ge=0,
        le=1,
        description="Least share of test answers where the student agrees with the teacher.",
    )
    relative_task_score: float | None = Field(
        0.95, ge=0, description="Least student gold score as a share of the teacher's."
    )
    max_latency_ms_p95: float | None = Field(
        None, gt=0, description="Most p95 latency per answer in milliseconds."
    )


class EvalConfig(_Section):
    split: Literal["test", "validation"] = Field("test", description="Which split is evaluated.")
    max_examples: int | None = Field(None, gt=0, description="Evaluate at most this many examples.")
    scorer: Literal["exact", "fields", "label", "rouge_l", "chrf"] = Field(
        "exact",
        description="exact: normalized string match; fields: parse `key: value` lines or a JSON object and compare `fields`; label: class label; rouge_l / chrf: free text.",
    )
    fields: list[str] | None = Field(None, description="The fields the fields scorer compares.")
    thresholds: EvalThresholds = Field(
        default_factory=EvalThresholds, description="What the student must reach to pass."
    )
    student_usd_per_hour: Decimal = Field(
        Decimal("0"),
        ge=0,
        description="What serving the student costs per hour, for the cost comparison.",
    )
    max_tokens: int = Field(256, gt=0, description="Output tokens per student answer (greedy).")
    bootstrap_samples: int = Field(
        1000, ge=100, description="Bootstrap resamples for the confidence intervals."
    )
    seed: int = Field(0, description="Seed of the bootstrap.")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto",
        description="Where the base/student answers and held-out KL run (auto: a CUDA GPU when there is one, else CPU).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype for eval (auto: bfloat16 on a CUDA GPU, float32 on CPU)."
    )


class ServeConfig(_Section):
    host: str = Field("127.0.0.1", description="Address the server binds.")
    port: int = Field(
        8000, ge=0, le=65535, description="Port the server listens on (0 picks a free one)."
    )
    api_key_env: str | None = Field(
        None, description="Environment variable with the key clients must send (unset: no key)."
    )
    max_batch_size: int = Field(
        16, ge=1, le=256, description="Requests batched into one forward pass."
    )
    max_queue: int = Field(256, ge=1, description="Requests waiting before new ones get 429.")
    max_tokens_cap: int = Field(2048, ge=1, description="Largest max_tokens a request may ask for.")
    max_n: int = Field(8, ge=1, description="Largest n a request may ask for.")
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest request body in bytes."
    )
    backend: Literal["auto", "llamacpp", "vllm", "transformers"] = Field(
        "auto",
        description="Which engine runs the model: auto = llama.cpp for a GGUF (or a folder with a GGUF export) when llama-cpp-python is installed, else transformers.",
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto",
        description="transformers backend only: where the model runs (auto: a CUDA GPU when there is one).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="transformers backend only: weights dtype (auto: bfloat16 on a CUDA GPU, float32 on CPU).",
    )
    threads: int | None = Field(
        None, ge=1, description="CPU threads of the engine (default: physical cores)."
    )


class ExportConfig(_Section):
    """The pipeline's export stage (``apidistill export`` takes the same choices as flags).

    The run's student folder (``runs/<name>/student``) is always the adapter export that
    eval and ``apidistill serve`` use; every other format is written beside it under
    ``runs/<name>/export/<format>/``."""

    formats: list[Literal["adapter", "merged", "gguf", "ollama", "vllm"]] = Field(
        default_factory=lambda: ["adapter"],
        min_length=1,
        description="what to write: adapter (LoRA + base name), merged (safetensors), gguf "
        "(llama.cpp files, one per gguf_quants), ollama (Modelfile + merged GGUF), vllm "
        "(merged safetensors + serve command)",
    )
    gguf_quants: list[Literal["f16", "q8_0", "q4_k_m"]] = Field(
        default_factory=lambda: ["f16", "q8_0", "q4_k_m"],
        min_length=1,
        description="GGUF files the gguf format writes; quantized ones are made from f16 by "
        "llama.cpp",
    )
    ollama_quant: Literal["f16", "q8_0", "q4_k_m"] = Field(
        "q8_0", description="which GGUF the Ollama Modelfile names"
    )
    name: str | None = Field(
        None,
        description="the student's name in model cards, served-model names and file names "
        "(default: the run's name)",
    )
    base_gguf: str | None = Field(
        None,
        description="GGUF file of the student's base model whose tokenizer metadata the GGUF "
        "export copies (default: the base model's own GGUF, e.g. an embedded model's)",
    )
    payoff: bool = Field(
        False,
        description="after eval, write the student's q8_0 GGUF under export/gguf/ and measure "
        "it against the prompted teacher (the teacher's base GGUF with the prototype prompt), "
        "both through llama.cpp: GGUF sizes, s/request, requests/s at concurrency 1 and 8 "
        "(summary.json's payoff, report/payoff.md); needs llama-cpp-python and a self-hosted "
        "teacher (teacher.launch), otherwise it says what to install and the run goes on",
    )
    payoff_requests: int = Field(
        16,
        ge=1,
        description="held-out tickets the payoff measures per side (each side gets 1 warm-up "
        "+ this many one at a time + this many at concurrency 8)",
    )

    @field_validator("formats", "gguf_quants")
    @classmethod
    def _once(cls, v: list[str]) -> list[str]:
        dup = sorted({x for x in v if v.count(x) > 1})
        if dup:
            raise ValueError(f"listed twice: {', '.join(dup)}")
        return v


class SynthConfig(_Section):
    """``apidistill synth``: a teacher writes new task inputs into ``output`` (a prompt file).

    Requests go through the harvest engine with the run's budget, journal, retries and rate
    limits; ``teacher`` overrides the run's teacher for writing prompts only."""

    n: int = Field(..., ge=1, description="Prompts wanted.")
    output: str = Field(..., description="The prompt file written (JSONL, rows marked synthetic).")
    task: str = Field(
        "the task the examples show",
        description="What the inputs are for, in the teacher's request.",
    )
    topics: list[str] | dict[str, Any] | None = Field(
        None, description="Topics to rotate through: a list or a nested taxonomy."
    )
    seeds: list[str] = Field(
        default_factory=list, description="Example inputs shown to the teacher."
    )
    seeds_from_prompts: bool = Field(
        True,
        description="Also use the rows of prompts.path (when that file exists) as examples and as inputs the new ones must differ from.",
    )
    teacher: TeacherConfig | None = Field(
        None, description="The teacher that writes prompts (unset: the run's teacher)."
    )
    per_request: int = Field(5, ge=1, le=100, description="New inputs asked for in one request.")
    examples_per_request: int = Field(3, ge=0, le=50, description="Examples shown in one request.")
    temperatures: list[float] = Field(
        default_factory=lambda: [0.7, 0.9, 1.1],
        min_length=1,
        description="Sampling temperatures, rotated over the requests.",
    )
    novelty_threshold: float = Field(
        0.8,
        gt=0,
        lt=1,
        description="Similarity above which a new input counts as a duplicate and is dropped.",
    )
    min_chars: int = Field(8, ge=1, description="Shortest input kept.")
    max_chars: int = Field(4000, ge=1, description="Longest input kept.")
    max_requests: int | None = Field(
        None, gt=0, description="Most requests sent (unset: 3x the requests n needs)."
    )
    max_tokens: int = Field(1024, gt=0, description="Output tokens per request.")
    seed: int = Field(0, description="Seed of the rotation and the sampling.")

    @model_validator(mode="after")
    def _has_material(self) -> SynthConfig:
        if not self.seeds and not self.topics and not self.seeds_from_prompts:
            raise ValueError(
                "synth needs something to vary: 'seeds', 'topics' or seeds_from_prompts: true"
            )
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) is above max_chars ({self.max_chars})")
        if any(not 0 <= t <= 2 for t in self.temperatures):
            raise ValueError(f"temperatures must each be in [0, 2], got {self.temperatures}")
        return self


class RunConfig(_Section):
    """One migration run: teacher → policy → budget → harvest → dataset → train → eval → serve."""

    name: str = Field("run", description="The run's name: a plain word, used in run_dir.")
    run_dir: str = Field(
        "runs/{name}",
        description="Where the run keeps its journal, dataset, model and report; only {name} is filled in.",
    )
    teacher: TeacherConfig = Field(..., description="The API model to distill.")
    prompts: PromptsConfig = Field(..., description="Where the task inputs come from.")
    policy: PolicyConfig = Field(
        ..., description="The intended use, checked against the teacher's terms."
    )
    budget: BudgetConfig = Field(..., description="The hard spending cap.")
    harvest: HarvestConfig = Field(
        default_factory=HarvestConfig, description="How teacher answers are requested."
    )
    dataset: DatasetConfig = Field(
        default_factory=DatasetConfig, description="How answers become a dataset."
    )
    student: StudentConfig = Field(
        default_factory=StudentConfig, description="The model that is trained."
    )
    training: TrainingConfig = Field(
        default_factory=TrainingConfig, description="How the student is trained."
    )
    eval: EvalConfig = Field(
        default_factory=EvalConfig, description="How the student is judged against the teacher."
    )
    serve: ServeConfig = Field(
        default_factory=ServeConfig, description="How the student is served."
    )
    export: ExportConfig = Field(
        default_factory=ExportConfig,
        description="Which export formats the pipeline's export stage writes.",
    )
    synth: SynthConfig | None = Field(
        None, description="Synthetic prompts written by a teacher (apidistill synth only)."
    )

    source: str | None = Field(
        None,
        exclude=True,
        description="Where the file was loaded from; relative paths in the file resolve against its folder (set by the loader, never read from the file).",
    )

    @field_validator("student", mode="before")
    @classmethod
    def _student_list(cls, v: Any) -> Any:
        """``student: [small, large]`` is shorthand for ``student: {candidates: [...]}``."""
        return {"candidates": v} if isinstance(v, list) else v

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or "/" in v or "\\" in v or v.startswith(".") or not v.isprintable():
            raise ValueError("name must be a plain word (no slashes, not starting with '.')")
        return v

    @field_validator("run_dir")
    @classmethod
    def _run_dir_template(cls, v: str) -> str:
        """Only ``{name}`` may be filled in: ``str.format`` would otherwise raise, read
        attributes (``{name.__class__}``) or pad to any width (``{name:>999999999}``)."""
        try:
            parts = list(string.Formatter().parse(v))
        except ValueError as exc:
            raise ValueError(f"run_dir is not a valid template ({exc})") from None
        if any(f is not None and (f != "name" or spec or conv) for _, f, spec, conv in parts):
            raise ValueError("run_dir may contain only the placeholder {name}")
        return v

    @model_validator(mode="after")
    def _kd_needs_logprobs(self) -> RunConfig:
        if self.training.method == "logprob_kd" and not self.harvest.logprobs:
            raise ValueError(
                "training.method logprob_kd needs harvest.logprobs: true "
                "(or use training.method: sequence_kd)"
            )
        if (
            self.training.method == "logprob_kd"
            and self.training.kd.top_k > self.dataset.top_k_store
        ):
            raise ValueError(
                f"training.kd.top_k ({self.training.kd.top_k}) is more than the dataset keeps "
                f"(dataset.top_k_store: {self.dataset.top_k_store}); raise top_k_store or "
                "lower kd.top_k"
            )
        return self

    def resolve_path(self, p: str) -> Path:
        """Resolve a path from the file relative to the file's folder."""
        if "\x00" in p:
            raise ConfigError(f"path {p!r} contains a NUL character", file=self.source)
        path = Path(p).expanduser()
        if path.is_absolute() or self.source is None:
            return path
        return (Path(self.source).parent / path).resolve()

    @property
    def run_path(self) -> Path:
        return self.resolve_path(self.run_dir.format(name=self.name))


# Reading a run file (YAML → RunConfig, errors with file, line and key) lives in its own
# module; imported last because it needs RunConfig.
from apidistill.config_file import load_config, parse_config  # noqa: E402
