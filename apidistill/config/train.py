"""The model that is trained and how: ``student:`` and ``training:`` (LoRA, KD)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from apidistill.config._base import DEFAULT_MODEL, _Section


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
