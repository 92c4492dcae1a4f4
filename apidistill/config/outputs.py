"""What the run delivers and how it is judged: ``eval:``, ``serve:`` (the student's
server) and ``export:`` (the formats written)."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import Field, field_validator

from apidistill.config._base import _Section


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
