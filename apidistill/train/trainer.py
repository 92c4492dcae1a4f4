"""The distillation trainer: ``transformers.Trainer`` with a KD loss, LoRA, and a progress bar.

Only ``compute_loss`` and ``log`` are overridden; the loop, gradient accumulation,
checkpointing (safetensors), resuming, evaluation, early stopping and ``accelerate launch``
(DDP/FSDP/DeepSpeed) are the Trainer's own, so there is no distributed code here.

Loss per micro-batch, over the assistant-turn positions only:

    sequence_kd:  L = CE(student, teacher tokens)
    logprob_kd:   L = (1 − α) · CE + α · T² · D(teacher top-k + tail ‖ student)

D is forward KL, reverse KL, generalized JSD(β) or the unbiased sampled-token CE
(``KDConfig.loss``), averaged over the positions that have teacher top-k targets. Both terms
are token means within the micro-batch and the Trainer divides by the accumulation steps.
The student's log-softmax over the vocabulary is computed once and shared by CE and KD
(at T = 1), which is why a logprob-KD step costs about what a sequence-KD step costs.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import PrinterCallback

from apidistill.config import KDConfig, LoraConfig
from apidistill.errors import TrainingError
from apidistill.progress import make_progress
from apidistill.train.distributed import reduce_sums
from apidistill.train.losses import (
    IGNORE_INDEX,
    bucket_divergence,
    kd_mix,
    masked_mean,
    sampled_token_ce,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["DistillTrainer", "RichProgressCallback", "apply_lora", "linear_module_names"]

_KD_KEYS = ("teacher_topk_ids", "teacher_topk_logprobs", "kd_mask")
_DIVERGENCE = {"forward_kl": "forward", "reverse_kl": "reverse", "jsd": "jsd"}


class DistillTrainer(Trainer):
    """``Trainer`` whose loss is sequence KD or logprob KD (see the module docstring).

    Extra batch keys (from :class:`~apidistill.train.collate.DistillCollator`) are popped
    before the forward pass. Logs gain ``ce``, ``kd``, ``top1_agreement`` (student argmax =
    teacher token) and ``tokens_per_s``; evaluation logs the same with an ``eval_`` prefix.
    """

    # compute_loss returns a per-micro-batch token mean: let the Trainer divide by the
    # accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, kd: KDConfig, use_kd: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kd = kd
        self.use_kd = use_kd
        self._sums: dict[str, defaultdict[str, float]] = {
            "train": defaultdict(float),
            "eval": defaultdict(float),
        }
        self._last_log_time: float | None = None
        self.remove_callback(PrinterCallback)  # progress has its own display; keep stdout clean

    # ------------------------------------------------------------------ loss

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        targets = {k: inputs.pop(k) for k in _KD_KEYS if k in inputs}
        outputs = model(**inputs, use_cache=False)
        labels = labels[:, 1:]
        sel = labels != IGNORE_INDEX
        logits = outputs.logits[:, :-1][sel].float()  # [N, V]: assistant positions only
        tgt = labels[sel]
        logq = logits.log_softmax(-1)
        picked = logq.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        ones = torch.ones_like(picked, dtype=torch.bool)
        ce = masked_mean(-picked, ones)
        loss, kd, n_kd = ce, None, 0
        if self.use_kd and targets:
            kd, n_kd = self._kd_term(
                logits, logq, tgt, {k: v[:, 1:][sel] for k, v in targets.items()}
            )
            loss = kd_mix(ce, kd, self.kd.alpha)
        self._accumulate(model, ce, kd, n_kd, logq, tgt, inputs)
        # The Trainer never needs the [B, T, V] logits back (prediction_loss_only).
        return (loss, {"loss": loss}) if return_outputs else loss

    def _kd_term(
        self,
        logits: torch.Tensor,
        logq: torch.Tensor,
        tgt: torch.Tensor,
        t: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, int]:
        temp = self.kd.temperature
        if self.kd.loss == "unbiased":
            value, has = sampled_token_ce(
                logq, t["teacher_topk_ids"], t["teacher_topk_logprobs"], tgt
            )
        else:
            lq = logq if temp == 1.0 else (logits / temp).log_softmax(-1)
            value, has = bucket_divergence(
                lq,
                t["teacher_topk_ids"],
                t["teacher_topk_logprobs"],
                kind=_DIVERGENCE[self.kd.loss],
                beta=self.kd.beta,
                teacher_temperature=temp,
            )
            value = value * temp**2
        mask = t["kd_mask"] & has
        return masked_mean(value, mask), int(mask.sum())

    # ------------------------------------------------------------------ metrics

    def _accumulate(
        self,
        model: torch.nn.Module,
        ce: torch.Tensor,
        kd: torch.Tensor | None,
        n_kd: int,
        logq: torch.Tensor,
        tgt: torch.Tensor,
        inputs: dict[str, Any],
    ) -> None:
        s = self._sums["train" if model.training else "eval"]
        n = int(tgt.numel())
        with torch.no_grad():
            s["ce"] += float(ce) * n
            s["n"] += n
            s["agree"] += float((logq.argmax(-1) == tgt).sum())
            if kd is not None:
                s["kd"] += float(kd) * n_kd
                s["n_kd"] += n_kd
        mask = inputs.get("attention_mask")
        s["tokens"] += float(mask.sum()) if mask is not None else inputs["input_ids"].numel()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        is_eval = any(k.startswith("eval_") for k in logs)
        s = self._sums["eval" if is_eval else "train"]
        reduce_sums(s, self.args.device)  # under a launcher: totals over every rank
        prefix = "eval_" if is_eval else ""
        if s["n"]:
            logs[f"{prefix}ce"] = round(s["ce"] / s["n"], 6)
            logs[f"{prefix}top1_agreement"] = round(s["agree"] / s["n"], 6)
        if s["n_kd"]:
            logs[f"{prefix}kd"] = round(s["kd"] / s["n_kd"], 6)
        now = time.perf_counter()
        if not is_eval and "loss" in logs:
            if self._last_log_time is not None and now > self._last_log_time:
                logs["tokens_per_s"] = round(s["tokens"] / (now - self._last_log_time), 2)
            self._last_log_time = now
        s.clear()
        super().log(logs, start_time)


# --------------------------------------------------------------------------- LoRA


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Leaf names of the model's linear layers (what LoRA ``target_modules`` may name)."""
    names = set()
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) or type(mod).__name__ == "Conv1D":
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def apply_lora(model: PreTrainedModel, lora: LoraConfig) -> torch.nn.Module:
    """Wrap ``model`` with a LoRA adapter, checking the targets exist before peft does.

    ``"all-linear"`` is peft's shorthand for every linear layer except the output head.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    from apidistill.models import peft_quiet

    targets = lora.target_modules
    if targets != "all-linear":
        module_names = [n for n, _ in model.named_modules()]
        missing = [
            t for t in targets if not any(n == t or n.endswith("." + t) for n in module_names)
        ]
        if missing or not targets:
            raise TrainingError(
                f"training.lora.target_modules {missing or targets!r} match no module of the "
                f"student ({type(model).__name__})",
                hint=f"use 'all-linear' or names from: {', '.join(linear_module_names(model))}",
            )
    cfg = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        with peft_quiet():
            return get_peft_model(model, cfg)
    except ValueError as exc:  # peft's own target check, e.g. a non-linear module named
        raise TrainingError(
            f"LoRA cannot wrap training.lora.target_modules {targets!r}: {exc}",
            hint=f"use 'all-linear' or names from: {', '.join(linear_module_names(model))}",
        ) from None


# --------------------------------------------------------------------------- progress


class RichProgressCallback(TrainerCallback):
    """One rich progress bar: steps, rate, ETA, and the latest loss / KD loss / tokens/s."""

    def __init__(self) -> None:
        self._progress = None
        self._task = None

    def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if not state.is_world_process_zero:
            return
        self._progress = make_progress("{task.fields[stats]}", unit="step")
        self._progress.start()
        self._task = self._progress.add_task(
            "train", total=state.max_steps or None, completed=state.global_step, stats=""
        )

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
        if self._progress is None or not logs:
            return
        parts = []
        for key, label in (
            ("loss", "loss"),
            ("kd", "kd"),
            ("tokens_per_s", "tok/s"),
            ("eval_loss", "eval"),
        ):
            if key in logs:
                parts.append(f"{label} {logs[key]:.4g}")
        if parts:
            self._progress.update(self._task, stats="  ".join(parts))

    def on_train_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step)
            self._progress.stop()
            self._progress = None
