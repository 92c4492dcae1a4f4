"""Where inputs come from and how answers become a dataset: ``prompts:`` (with its
``imports:``), ``dataset:`` (filters, balance, splits) and ``synth:`` (prompts a teacher writes)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from apidistill.config._base import _Section
from apidistill.config.teacher import TeacherConfig

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
