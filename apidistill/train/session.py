"""One training session: model + LoRA, ``TrainingArguments`` from our config, run, save.

Kept apart from :mod:`.api` (checks, resume bookkeeping), :mod:`.trainer` (the loss) and
:mod:`.student_model` (dtype, attention, QLoRA) so each reads at once. Defaults are
CPU-friendly: fp32 on CPU, bf16 autocast only on a GPU that has it, no dataloader workers,
no fused kernels that need a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from apidistill.config import StudentConfig, TrainingConfig
from apidistill.train.collate import BuiltDataset, DistillCollator, Example, pack_examples

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, TrainingArguments

__all__ = ["Outcome", "build_training_arguments", "no_accelerator", "run_training"]

BASE_MODEL_FILE = "base_model.txt"


@dataclass
class Outcome:
    final_dir: Path
    steps: int
    log_history: list[dict[str, Any]] = field(default_factory=list)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    is_main_process: bool = True
    processes: int = 1


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows: list[Example]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Example:
        return self.rows[i]


def no_accelerator() -> bool:
    """True on a CPU-only machine. The Trainer must then be told ``use_cpu``: without it,
    ``torchrun``/``accelerate launch`` processes on CPU do not form one DDP group but each
    train on the whole dataset."""
    return not (torch.cuda.is_available() or torch.backends.mps.is_available())


def build_training_arguments(
    training: TrainingConfig, out_dir: Path, *, has_eval: bool
) -> TrainingArguments:
    """Our :class:`TrainingConfig` as ``transformers.TrainingArguments``.

    Mixed precision follows ``training.dtype`` on a GPU: float16 weights train under fp16
    autocast (LoRA weights stay float32 for the gradient scaler), bfloat16 or float32
    weights under bf16 autocast where the GPU has it. ``training.trainer_args`` is applied
    last; a value ``TrainingArguments`` rejects is a :class:`ConfigError` naming the key.
    """
    from transformers import TrainingArguments

    from apidistill.errors import ConfigError
    from apidistill.trainer_args import apply_trainer_args

    on_gpu = torch.cuda.is_available()
    fp16 = on_gpu and training.dtype == "float16"
    bf16 = on_gpu and not fp16 and torch.cuda.is_bf16_supported()
    early = bool(training.early_stopping_patience) and has_eval
    eval_strategy = ("steps" if training.eval_steps else "epoch") if has_eval else "no"
    save_steps = training.save_steps or (training.eval_steps if early else None)
    save_strategy = "steps" if save_steps else "epoch"
    if early and save_strategy != eval_strategy:  # load_best_model_at_end needs them equal
        save_strategy, save_steps = eval_strategy, training.eval_steps
    kwargs: dict[str, Any] = dict(
        output_dir=str(out_dir / "checkpoints"),
        per_device_train_batch_size=training.batch_size,
        per_device_eval_batch_size=training.batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        num_train_epochs=training.epochs,
        max_steps=training.max_steps,
        learning_rate=training.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=training.warmup_ratio,  # a float in [0, 1) is a ratio of total steps
        weight_decay=0.0,
        optim="adamw_torch",
        logging_strategy="steps",
        logging_steps=1,
        save_strategy=save_strategy,
        save_steps=save_steps or 500,
        save_total_limit=2,
        eval_strategy=eval_strategy,
        eval_steps=training.eval_steps,
        load_best_model_at_end=early,
        metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None,
        prediction_loss_only=True,
        remove_unused_columns=False,
        label_names=["labels"],
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=on_gpu,
        seed=training.seed,
        data_seed=training.seed,
        bf16=bf16,
        fp16=fp16,
        activation_checkpointing=training.gradient_checkpointing,
        # non-reentrant checkpointing works with frozen inputs (LoRA) and with DDP
        activation_checkpointing_kwargs={"use_reentrant": False},
        use_cpu=no_accelerator(),
    )
    kwargs = apply_trainer_args(kwargs, training.trainer_args)
    try:
        return TrainingArguments(**kwargs)
    except (ValueError, TypeError) as exc:
        if not training.trainer_args:
            raise
        raise ConfigError(
            f"TrainingArguments rejected the settings: {exc}",
            key="training.trainer_args",
            hint="check the values against transformers' TrainingArguments documentation",
        ) from None


def run_training(
    built: BuiltDataset,
    val_built: BuiltDataset | None,
    *,
    tokenizer: PreTrainedTokenizerBase,
    student: StudentConfig,
    training: TrainingConfig,
    out_dir: Path,
    resume_from: Path | None,
    progress: bool,
) -> Outcome:
    from transformers import EarlyStoppingCallback, set_seed

    from apidistill.train.student_model import load_student_model
    from apidistill.train.trainer import DistillTrainer, RichProgressCallback, apply_lora

    rows = built.examples
    val_rows = val_built.examples if val_built and val_built.examples else None
    if training.packing:
        rows = pack_examples(rows, training.max_length)
    # the arguments first: a bad trainer_args value must fail before the model loads
    args = build_training_arguments(training, out_dir, has_eval=val_rows is not None)
    set_seed(training.seed)  # LoRA's random init must not depend on what ran before
    model = load_student_model(student, training)
    if not training.full_finetune:
        model = apply_lora(model, training.lora)
    callbacks: list[Any] = [RichProgressCallback()] if progress else []
    if training.early_stopping_patience and val_rows is not None:
        callbacks.append(EarlyStoppingCallback(training.early_stopping_patience))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    trainer = DistillTrainer(
        model=model,
        args=args,
        train_dataset=_Rows(rows),
        eval_dataset=_Rows(val_rows) if val_rows else None,
        data_collator=DistillCollator(int(pad), training.kd.top_k),
        callbacks=callbacks,
        kd=training.kd,
        use_kd=training.method == "logprob_kd",
    )
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    eval_metrics = _final_eval(trainer) if val_rows else {}
    final = out_dir / ("model" if training.full_finetune else "adapter")
    trainer.save_model(str(final))  # writes on the main process only
    main = trainer.is_world_process_zero()
    if main:
        tokenizer.save_pretrained(str(final))
    if main and not training.full_finetune:
        # adapter_config.json names the converted cache folder; this names what the user wrote
        (final / BASE_MODEL_FILE).write_text(student.model + "\n", encoding="utf-8")
    return Outcome(
        final_dir=final,
        steps=trainer.state.global_step,
        log_history=list(trainer.state.log_history),
        eval_metrics=eval_metrics,
        is_main_process=main,
        processes=int(trainer.args.world_size),
    )


def _final_eval(trainer: Any) -> dict[str, float]:
    """Metrics of the final weights: the last in-training evaluation when it ran at the last
    step (and no best checkpoint was reloaded), else a fresh one."""
    state = trainer.state
    for entry in reversed(state.log_history):
        if "eval_loss" in entry:
            if entry.get("step") == state.global_step and not trainer.args.load_best_model_at_end:
                return {k: float(v) for k, v in entry.items() if k.startswith("eval_")}
            break
    return {k: float(v) for k, v in trainer.evaluate().items()}
