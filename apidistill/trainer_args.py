"""``training.trainer_args``: any other ``transformers.TrainingArguments`` field, checked.

The run file's ``training`` section sets the arguments a distillation run needs (batch size,
epochs, evaluation and saving, precision); everything else ``TrainingArguments`` offers
(``lr_scheduler_type``, ``weight_decay``, ``optim``, ``deepspeed``, ``fsdp``,
``ddp_timeout``, ...) passes through ``trainer_args`` as written. Names are checked when the
run file is read, so a typo fails before any money or time is spent; a field the section
already sets is refused with the key to use, so two settings never silently disagree.

It sits beside :mod:`apidistill.config` (the bottom layer, docs/architecture.md) because the
run-file model checks the names when the file is read; training applies them.
"""

from __future__ import annotations

import dataclasses
from functools import cache
from typing import Any

__all__ = ["MANAGED", "apply_trainer_args", "check_trainer_args", "trainer_arg_names"]

# TrainingArguments fields the run file sets elsewhere → where to set them instead.
MANAGED: dict[str, str] = {
    "output_dir": "run_dir (checkpoints go to <run>/train/checkpoints)",
    "per_device_train_batch_size": "training.batch_size",
    "per_device_eval_batch_size": "training.batch_size",
    "gradient_accumulation_steps": "training.gradient_accumulation_steps",
    "num_train_epochs": "training.epochs",
    "max_steps": "training.max_steps",
    "learning_rate": "training.learning_rate",
    "warmup_steps": "training.warmup_ratio",
    "warmup_ratio": "training.warmup_ratio",
    "save_steps": "training.save_steps",
    "save_strategy": "training.save_steps / training.eval_steps",
    "eval_steps": "training.eval_steps",
    "eval_strategy": "training.eval_steps (evaluation runs when a validation split exists)",
    "load_best_model_at_end": "training.early_stopping_patience",
    "metric_for_best_model": "training.early_stopping_patience",
    "greater_is_better": "training.early_stopping_patience",
    "seed": "training.seed",
    "data_seed": "training.seed",
    "bf16": "training.dtype",
    "fp16": "training.dtype",
    "gradient_checkpointing": "training.gradient_checkpointing",
    "activation_checkpointing": "training.gradient_checkpointing",
    "use_cpu": "nothing: it is chosen from the hardware",
    "remove_unused_columns": "nothing: the distillation collator needs its own columns",
    "label_names": "nothing: the distillation collator needs its own columns",
    "prediction_loss_only": "nothing: evaluation reports the distillation metrics",
}


@cache
def trainer_arg_names() -> frozenset[str]:
    """The ``__init__`` fields of the installed ``TrainingArguments``."""
    from transformers import TrainingArguments

    return frozenset(f.name for f in dataclasses.fields(TrainingArguments) if f.init)


def check_trainer_args(values: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first unknown or managed field (pydantic turns it into
    a :class:`~apidistill.errors.ConfigError` with the file and line)."""
    import difflib

    names = trainer_arg_names()
    for key in values:
        if key in MANAGED:
            raise ValueError(
                f"trainer_args.{key} is set by the run file itself; use {MANAGED[key]}"
            )
        if key not in names:
            close = difflib.get_close_matches(key, sorted(names), n=1)
            maybe = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"trainer_args.{key} is not a transformers.TrainingArguments field{maybe}"
            )


def apply_trainer_args(kwargs: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` (what the section sets) updated with the user's checked ``extra`` fields."""
    check_trainer_args(extra)
    return {**kwargs, **extra}
