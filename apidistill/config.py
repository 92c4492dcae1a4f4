"""The YAML run file: one pydantic model per stage, validated at the boundary.

``apidistill run config.yaml`` reads one :class:`RunConfig`. Every section forbids unknown
keys, and :func:`load_config` turns pydantic's errors into a :class:`ConfigError` that names
the file, the line, the key path and the allowed values, so a typo never becomes a silently
ignored setting.
"""

from __future__ import annotations

import os
import string
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from apidistill.errors import ConfigError, register_secret
from apidistill.yamlfile import load_yaml

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
]

DEFAULT_MODEL = "smollm2-135m-instruct"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class PriceConfig(_Section):
    """A user-given price; overrides genai-prices. Self-hosted: 0, or $/hour at a throughput."""

    input_per_mtok: Decimal | None = Field(None, ge=0)
    output_per_mtok: Decimal | None = Field(None, ge=0)
    cached_input_per_mtok: Decimal | None = Field(None, ge=0)
    # input written to a prompt cache (Anthropic: 1.25× input for the 5-minute TTL)
    cache_write_per_mtok: Decimal | None = Field(None, ge=0)
    usd_per_hour: Decimal | None = Field(None, ge=0)
    tokens_per_second: float | None = Field(None, gt=0)
    batch_discount: Decimal = Field(Decimal("0.5"), ge=0, le=1)

    @model_validator(mode="after")
    def _complete(self) -> PriceConfig:
        if self.usd_per_hour is not None and self.tokens_per_second is None:
            raise ValueError("usd_per_hour needs tokens_per_second to turn $/hour into $/token")
        return self


class TeacherLaunchConfig(_Section):
    """Start ``apidistill serve`` as the teacher (offline demo, self-hosted tests): the run
    launches the server, harvests from it and stops it. (The top-level ``serve:`` section is
    the student server's.)"""

    model: str = DEFAULT_MODEL
    adapter: str | None = None
    port: int = Field(0, ge=0, le=65535)  # 0 = pick a free port
    max_batch_size: int = Field(16, ge=1, le=256)
    # The engine (apidistill serve --backend): transformers keeps today's harvests identical;
    # auto = llama.cpp for a GGUF model when llama-cpp-python is installed (the fastest here).
    backend: Literal["auto", "llamacpp", "vllm", "transformers"] = "transformers"
    threads: int | None = Field(None, ge=1)  # default: physical cores


class TeacherConfig(_Section):
    provider: Literal["openai", "anthropic", "openai_compatible"] = "openai_compatible"
    # Server profile for openai_compatible: which logprob fields exist and their quirks.
    profile: Literal["apidistill", "vllm", "llamacpp", "ollama", "tgi", "sglang", "generic"] = (
        "generic"
    )
    model: str
    base_url: str | None = None
    api_key_env: str | None = None  # the key is read from this env var, never stored
    # Tokenizer of the teacher when known (self-hosted): exact token counts and token ids.
    tokenizer: str | None = None
    launch: TeacherLaunchConfig | None = None  # start `apidistill serve` as the teacher
    # the old name of ``launch``: refused with the new name (it read like the student server)
    # an attribute of another name, so code that still reads ``teacher.serve`` fails loudly
    legacy_serve: Any = Field(None, alias="serve", exclude=True)
    price: PriceConfig | None = None
    allow_unpriced: bool = False
    # HTTP transport of the SDK client: aiohttp (far less CPU per request) or httpx2;
    # auto = aiohttp when installed, else httpx2. Errors map the same on both.
    transport: Literal["auto", "httpx2", "aiohttp"] = "auto"
    # OpenAI stored completions: send ``store: true`` with our cache key in ``metadata``, so a
    # request whose answer was lost (kill -9, a reset after sending) is looked up and
    # recovered instead of re-sent and paid twice. OpenAI (or a server with that API) only.
    store: bool = False
    # Anthropic prompt caching: mark the prefix every request shares with cache_control
    # (unset = on). OpenAI caches long prefixes by itself (docs/costs.md).
    prompt_cache: bool | None = None
    # Anthropic: let ``apidistill estimate`` ask POST /v1/messages/count_tokens for exact
    # input counts (free, rate-limited; sends the prompts to Anthropic). Off by default.
    count_tokens: bool = False

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

    kind: ImportKind
    # A local file (relative to the run file), or for openai_finetune an OpenAI file id
    # (file-…) fetched through the Files API. Not used by openai_stored.
    path: str | None = None
    # The batch's input file (openai_batch, anthropic_batch): the output does not repeat it.
    requests: str | None = None
    # Who wrote the answers, when the data does not say (openai_finetune, chat).
    provider: str | None = None
    model: str | None = None
    # openai_stored: filters of chat.completions.list.
    metadata: dict[str, str] = Field(default_factory=dict)
    after: str | None = None
    # openai_stored and a Files API id: where to ask (default api.openai.com / $OPENAI_BASE_URL)
    # and the env var holding the key (never the key itself).
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    limit: int | None = Field(None, gt=0)
    skip_invalid: bool = False

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

    # The prompt file; optional when ``imports`` bring the inputs (and their answers).
    path: str | None = None
    # Existing answers to import into the run (fine-tuning file, stored completions,
    # Batch outputs, the proxy's captures, a generic chat file).
    imports: list[ImportConfig] = Field(default_factory=list)
    format: Literal["auto", "jsonl", "csv", "parquet"] = "auto"
    input_field: str = "text"  # plain text input, or a field holding a messages list
    id_field: str | None = None
    label_field: str | None = None  # for balancing / stratified splits
    gold_field: str | None = None  # reference answer for task scoring
    # The prototype prompt: a YAML/JSON file with `system` and `shots` (user/assistant pairs),
    # and a `template` with `{input}` for the user turn.
    template: str | None = None
    limit: int | None = Field(None, gt=0)
    skip_invalid: bool = False

    @model_validator(mode="after")
    def _has_a_source(self) -> PromptsConfig:
        if not self.path and not self.imports:
            raise ValueError("prompts needs 'path' (a prompt file) or 'imports' (existing data)")
        return self


class PolicyConfig(_Section):
    use: Literal["internal", "commercial", "competing", "redistribute", "research_noncommercial"]
    policy_dirs: list[str] = Field(default_factory=list)  # extra policy files (your agreements)
    authorization_reference: str | None = None  # e.g. "Anthropic written approval #1234"
    acknowledge_unknown: str | None = None  # who/why, recorded in the dataset card
    override_reference: str | None = None  # signed enterprise agreement reference
    # License id of a self-hosted teacher's weights (e.g. "apache-2.0"), used only when no
    # policy file names the checkpoint itself (see docs/policies.md).
    weights_license: str | None = None


class BudgetConfig(_Section):
    usd: Decimal = Field(..., ge=0)
    per_day_usd: Decimal | None = Field(None, ge=0)


class HarvestConfig(_Section):
    concurrency: int = Field(16, ge=1, le=4096)
    rpm: int | None = Field(None, gt=0)
    tpm: int | None = Field(None, gt=0)
    max_tokens: int = Field(256, gt=0)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: list[str] | None = None
    n: int = Field(1, ge=1, le=128)
    logprobs: bool = False
    top_logprobs: int = Field(0, ge=0, le=20)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(6, ge=0, le=50)
    use_batch_api: bool = False
    # What to do when logprob KD is asked of a teacher without logprobs.
    on_missing_logprobs: Literal["error", "sequence_kd"] = "error"
    # New requests this run may send; 0 sends none (answers come from the journal only).
    max_requests: int | None = Field(None, ge=0)
    # Final failures of earlier runs to send again: reasons (rejected, out_of_credit, ...),
    # or "all"; add "at_risk" for requests that may already have been billed.
    retry_failed: list[str] | None = None
    # Imported answers without logprobs: ask the teacher (the same model) again for each
    # imported input with this section's logprob settings (docs/import.md#rescore). A
    # regenerated answer equal to the imported one lends it its logprobs; on a mismatch,
    # keep the imported answer without logprobs or use the regenerated answer.
    rescore: bool = False
    rescore_on_mismatch: Literal["keep_imported", "regenerated"] = "keep_imported"

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
    drop_truncated: bool = True
    drop_empty: bool = True
    max_output_chars: int | None = Field(None, gt=0)
    refusal_patterns: list[str] = Field(
        default_factory=lambda: [r"(?i)\bI(?:'m| am) sorry\b", r"(?i)\bI can(?:not|'t) help\b"]
    )
    regex: str | None = None  # outputs must match
    json_schema: dict[str, Any] | None = None  # outputs must parse and validate
    label_set: list[str] | None = None


class BalanceConfig(_Section):
    by: Literal["label", "length"] | str = "label"
    max_per_class: int | None = Field(None, gt=0)
    target: dict[str, float] | None = None  # class → share


class SplitConfig(_Section):
    train: float = Field(0.8, ge=0, le=1)
    validation: float = Field(0.0, ge=0, le=1)
    test: float = Field(0.2, ge=0, le=1)
    seed: int = 0
    stratify_by: str | None = "label"

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must be 1.0, got {total:g}")
        return self


class DatasetConfig(_Section):
    filters: FilterConfig = Field(default_factory=FilterConfig)
    dedupe: Literal["none", "exact", "near"] = "near"
    near_dup_threshold: float = Field(0.85, gt=0, lt=1)
    balance: BalanceConfig | None = None
    splits: SplitConfig = Field(default_factory=SplitConfig)
    # Alternatives kept per position in the stored dataset (the rest are dropped at the
    # dataset stage); logprob KD needs at least training.kd.top_k of them.
    top_k_store: int = Field(20, ge=0, le=20)


class StudentConfig(_Section):
    model: str = DEFAULT_MODEL
    # The student's short instruction replacing the prototype prompt (None = no system turn).
    system_prompt: str | None = None
    # Several sizes against a latency budget: each model spec is trained, evaluated and
    # timed on the same split, and the smallest that meets eval.thresholds (including
    # max_latency_ms_p95) is exported. ``model`` defaults to the first candidate.
    candidates: list[str] = Field(default_factory=list)

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
    r: int = Field(16, ge=1, le=1024)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class KDConfig(_Section):
    loss: Literal["forward_kl", "reverse_kl", "jsd", "unbiased"] = "forward_kl"
    temperature: float = Field(1.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1)  # weight of the KD term; 1 - alpha goes to CE
    beta: float = Field(0.5, gt=0, lt=1)  # generalized JSD mix
    top_k: int = Field(20, ge=1, le=20)


class TrainingConfig(_Section):
    method: Literal["sequence_kd", "logprob_kd"] = "sequence_kd"
    full_finetune: bool = False
    lora: LoraConfig = Field(default_factory=LoraConfig)
    kd: KDConfig = Field(default_factory=KDConfig)
    epochs: float = Field(2.0, gt=0)
    max_steps: int = Field(-1, ge=-1)
    learning_rate: float = Field(5e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_length: int = Field(512, ge=16)
    packing: bool = False  # concatenate examples into max_length rows (block-diagonal attention)
    seed: int = 0
    save_steps: int | None = Field(None, gt=0)
    eval_steps: int | None = Field(None, gt=0)
    early_stopping_patience: int | None = Field(None, ge=1)
    # The student's weights are loaded in this dtype (not only autocast over float32 weights).
    # float32 keeps the old behaviour: fp32 weights, bf16 autocast on a GPU that has it.
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # transformers' attention kernel; None = the model's default (sdpa where supported).
    attn_implementation: (
        Literal["eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"] | None
    ) = None
    gradient_checkpointing: bool = False  # recompute activations: less memory, ~30% slower
    # QLoRA: load the frozen base in 4-bit NF4 or 8-bit (bitsandbytes, CUDA only).
    quantization: Literal["4bit", "8bit"] | None = None
    # Any other transformers.TrainingArguments field, passed through as given (e.g.
    # lr_scheduler_type, weight_decay, optim, deepspeed, fsdp). Fields this section already
    # sets are refused with the key to use instead.
    trainer_args: dict[str, Any] = Field(default_factory=dict)

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
    agreement: float | None = Field(0.90, ge=0, le=1)
    relative_task_score: float | None = Field(0.95, ge=0)  # student gold score / teacher's
    max_latency_ms_p95: float | None = Field(None, gt=0)


class EvalConfig(_Section):
    split: Literal["test", "validation"] = "test"
    max_examples: int | None = Field(None, gt=0)
    # exact: normalized string match; fields: parse `key: value` lines or a JSON object and
    # compare `fields`; label: class label; rouge_l / chrf: free text.
    scorer: Literal["exact", "fields", "label", "rouge_l", "chrf"] = "exact"
    fields: list[str] | None = None
    thresholds: EvalThresholds = Field(default_factory=EvalThresholds)
    student_usd_per_hour: Decimal = Field(Decimal("0"), ge=0)
    max_tokens: int = Field(256, gt=0)  # per student answer (greedy)
    bootstrap_samples: int = Field(1000, ge=100)
    seed: int = 0
    # Where the base/student answer and held-out KL run: auto = bfloat16 on a CUDA GPU,
    # float32 on CPU (apidistill.devices.select_device).
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class ServeConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key_env: str | None = None
    max_batch_size: int = Field(16, ge=1, le=256)
    max_queue: int = Field(256, ge=1)
    max_tokens_cap: int = Field(2048, ge=1)
    max_n: int = Field(8, ge=1)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # Which engine runs the model: auto = llama.cpp for a GGUF (or a folder with a GGUF
    # export) when llama-cpp-python is installed, else transformers (apidistill.serve.backends).
    backend: Literal["auto", "llamacpp", "vllm", "transformers"] = "auto"
    # transformers backend only: auto = bfloat16 on a CUDA GPU, float32 on CPU.
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    threads: int | None = Field(None, ge=1)  # default: physical cores


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

    n: int = Field(..., ge=1)  # prompts wanted
    output: str  # the prompt file written (JSONL, rows marked synthetic)
    task: str = "the task the examples show"
    topics: list[str] | dict[str, Any] | None = None  # a list or a nested taxonomy
    seeds: list[str] = Field(default_factory=list)  # example inputs shown to the teacher
    # Also use the rows of prompts.path (when that file exists) as examples and as inputs
    # the new ones must differ from.
    seeds_from_prompts: bool = True
    teacher: TeacherConfig | None = None
    per_request: int = Field(5, ge=1, le=100)
    examples_per_request: int = Field(3, ge=0, le=50)
    temperatures: list[float] = Field(default_factory=lambda: [0.7, 0.9, 1.1], min_length=1)
    novelty_threshold: float = Field(0.8, gt=0, lt=1)
    min_chars: int = Field(8, ge=1)
    max_chars: int = Field(4000, ge=1)
    max_requests: int | None = Field(None, gt=0)
    max_tokens: int = Field(1024, gt=0)
    seed: int = 0

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

    name: str = "run"
    run_dir: str = "runs/{name}"
    teacher: TeacherConfig
    prompts: PromptsConfig
    policy: PolicyConfig
    budget: BudgetConfig
    harvest: HarvestConfig = Field(default_factory=HarvestConfig)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    synth: SynthConfig | None = None

    # Where the file was loaded from; relative paths in the file resolve against its folder.
    source: str | None = Field(None, exclude=True)

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


# --------------------------------------------------------------------------- loading


def _yaml_line(text: str, loc: tuple[Any, ...]) -> int | None:
    """Line (1-based) of the key path ``loc`` in YAML ``text``; the deepest node found."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(part):
                    line, node = k.start_mark.line + 1, v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _allowed(err: dict[str, Any]) -> str:
    ctx = err.get("ctx") or {}
    if "expected" in ctx:
        return f" (allowed: {ctx['expected']})"
    return ""


def _format_errors(exc: ValidationError, text: str, file: str) -> ConfigError:
    errs = exc.errors()
    first = errs[0]
    loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function")))
    key = ".".join(str(p) for p in loc) or "(top level)"
    line = _yaml_line(text, loc)
    kind = first["type"]
    if kind == "extra_forbidden":
        msg = f"unknown key {loc[-1]!r}"
        hint = "check the spelling; docs/config.md lists every key"
    elif kind == "missing":
        msg = "required key is missing"
        hint = None
    else:
        got = first.get("input")
        got_s = repr(got) if not isinstance(got, dict | list) else type(got).__name__
        msg = f"{first['msg']}{_allowed(first)}; got {got_s}"
        hint = None
    more = f" (and {len(errs) - 1} more problem(s))" if len(errs) > 1 else ""
    return ConfigError(msg + more, file=file, key=key, line=line, hint=hint)


def parse_config(text: str, file: str = "<string>") -> RunConfig:
    """Validate YAML text as a :class:`RunConfig`; errors name ``file``, line and key."""
    data = load_yaml(text, file)  # a key given twice is an error, never "the last one wins"
    if not isinstance(data, dict):
        raise ConfigError(
            f"the run file must be a mapping of sections, got {type(data).__name__}",
            file=file,
            hint="start from the demo's run file, apidistill/demo_data/migrate.yaml",
        )
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise _format_errors(exc, text, file) from None
    cfg.source = file
    _register_key_envs(cfg)
    return cfg


def _register_key_envs(cfg: RunConfig) -> None:
    """The keys the run file points at are secrets from the moment it is read: anything
    that prints, logs or stores a message from then on redacts them by value."""
    for env in (cfg.teacher.api_key_env, cfg.serve.api_key_env):
        if env:
            register_secret(os.environ.get(env))


def load_config(path: str | Path) -> RunConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError("file not found", file=str(p), hint="give the path of a YAML run file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=str(p)) from None
    return parse_config(text, file=str(p))
