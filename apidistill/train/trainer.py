"""The distillation trainer: ``transformers.Trainer`` with a KD loss, LoRA, and a progress bar.

Only the loss, the per-step token counts and ``log`` are overridden; the loop, gradient
accumulation, checkpointing (safetensors), resuming, evaluation, early stopping and
``accelerate launch`` (DDP/FSDP/DeepSpeed) are the Trainer's own, so there is no distributed
code here.

Loss of one optimizer step, over the assistant-turn positions only:

    sequence_kd:  L = CE
    logprob_kd:   L = (1 − α) · CE + α · KD
    CE = −(1/N) Σ_t log q(y_t)              N   = supervised tokens of the whole step
    KD = (1/N_kd) Σ_t T² · D_t               N_kd = those with a teacher top-k target

D is forward KL, reverse KL, generalized JSD(β) or the unbiased sampled-token CE
(``KDConfig.loss``). N and N_kd count every micro-batch of the gradient accumulation (and,
with ``average_tokens_across_devices``, every process), like transformers' and TRL's
``num_items_in_batch``: each micro-batch contributes its *sums* divided by the step's
counts, so accumulation 4 × batch 2 gives the same gradient as batch 8 however uneven the
answers are (a mean of micro-batch means would weigh a short answer's tokens more).

Memory: the model runs with ``logits_to_keep=1`` and the loss is computed from the final
hidden states in chunks of positions (:mod:`.token_loss`), so the ``[N, V]`` logits are never
held whole. Models whose output head cannot be applied that way (checked once against the
model's own logits) fall back to the full logits.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import PrinterCallback

from apidistill.config import KDConfig, LoraConfig
from apidistill.errors import TrainingError
from apidistill.progress import make_progress
from apidistill.train.distributed import reduce_sums
from apidistill.train.losses import IGNORE_INDEX, kd_mix, teacher_target_mask
from apidistill.train.token_loss import (
    DEFAULT_CHUNK_ELEMENTS,
    LossSpec,
    LossSums,
    TokenTargets,
    chunk_rows_for,
    chunked_loss_sums,
    logits_loss_sums,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["DistillTrainer", "RichProgressCallback", "apply_lora", "linear_module_names"]

log = logging.getLogger(__name__)

_KD_KEYS = ("teacher_topk_ids", "teacher_topk_logprobs", "kd_mask")


class DistillTrainer(Trainer):
    """``Trainer`` whose loss is sequence KD or logprob KD (see the module docstring).

    Extra batch keys (from :class:`~apidistill.train.collate.DistillCollator`) are popped
    before the forward pass. Logs gain ``ce``, ``kd``, ``top1_agreement`` (student argmax =
    teacher token) and ``tokens_per_s``; evaluation logs the same with an ``eval_`` prefix.

    ``loss_chunk_elements``: logit elements per loss chunk (rows = elements // V); 0 turns
    chunking off (the full ``[B, T, V]`` logits, as before).
    """

    def __init__(
        self,
        *args: Any,
        kd: KDConfig,
        use_kd: bool,
        loss_chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.kd = kd
        self.use_kd = use_kd
        self.loss_chunk_elements = loss_chunk_elements
        self._spec = LossSpec(
            kd=kd.loss if use_kd else None, temperature=kd.temperature, beta=kd.beta
        )
        # (N, N_kd, scale) of the optimizer step in progress; set by get_batch_samples
        self._step_counts: tuple[float, float, float] | None = None
        self._chunk_ok: bool | None = None  # decided on the first training batch
        self._sums: dict[str, defaultdict[str, float]] = {
            "train": defaultdict(float),
            "eval": defaultdict(float),
        }
        self._last_log_time: float | None = None
        self.remove_callback(PrinterCallback)  # progress has its own display; keep stdout clean

    @property  # type: ignore[override]
    def loss_is_scaled_for_ga(self) -> bool:
        """True while the step's global token counts are known: compute_loss already
        divides by them, so the Trainer must not divide by the accumulation steps again."""
        return getattr(self, "_step_counts", None) is not None

    @loss_is_scaled_for_ga.setter
    def loss_is_scaled_for_ga(self, value: Any) -> None:  # the base class assigns None
        pass

    # ------------------------------------------------------------------ token counts

    def get_batch_samples(self, epoch_iterator, num_batches, device):  # type: ignore[no-untyped-def]
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._step_counts = self._count_step_tokens(batch_samples, device)
        return batch_samples, num_items

    def _count_step_tokens(
        self, batches: list[dict[str, Any]], device: torch.device
    ) -> tuple[float, float, float] | None:
        """(N, N_kd, scale) over the micro-batches of one optimizer step (and processes)."""
        if not batches or any("labels" not in b for b in batches):
            return None
        counts = torch.zeros(2, dtype=torch.long)  # int64 gathers on every backend
        for b in batches:
            sel = b["labels"][:, 1:] != IGNORE_INDEX
            counts[0] += int(sel.sum())
            if self.use_kd and all(k in b for k in _KD_KEYS):
                counts[1] += int(self._kd_positions(b, sel).sum())
        scale = 1.0
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            # DDP averages gradients over processes: sum the counts, scale the loss back up
            counts = self.accelerator.gather(counts.to(device)).view(-1, 2).sum(0).cpu()
            scale = float(self.args.world_size)
        return float(counts[0]), float(counts[1]), scale

    def _kd_positions(self, batch: dict[str, Any], sel: torch.Tensor) -> torch.Tensor:
        """Bools over the selected positions: KD mask and a valid teacher slot."""
        ids = batch["teacher_topk_ids"][:, 1:][sel]
        lps = batch["teacher_topk_logprobs"][:, 1:][sel]
        mask = batch["kd_mask"][:, 1:][sel].bool()
        return mask & teacher_target_mask(ids, lps, self._vocab_size())

    def _vocab_size(self) -> int:
        head = self.model.get_output_embeddings()
        size = getattr(head, "out_features", None)
        return int(size if size is not None else self.model.config.vocab_size)

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
        raw = {k: inputs.pop(k) for k in _KD_KEYS if k in inputs}
        sel = labels[:, 1:] != IGNORE_INDEX
        targets = TokenTargets(labels[:, 1:][sel])
        if self.use_kd and len(raw) == len(_KD_KEYS):
            targets = TokenTargets(
                targets.labels,
                raw["teacher_topk_ids"][:, 1:][sel],
                raw["teacher_topk_logprobs"][:, 1:][sel],
                self._kd_positions(raw, sel),
            )
        sums = self._loss_sums(model, inputs, sel, targets)
        n, n_kd = (
            int(targets.labels.numel()),
            int(targets.kd_mask.sum()) if targets.kd_mask is not None else 0,
        )
        counts = self._step_counts if model.training else None
        if counts is not None:
            denom_ce, denom_kd, scale = counts
        else:  # evaluation, or a step outside Trainer.train: this micro-batch's means
            denom_ce, denom_kd, scale = n, n_kd, 1.0
        ce = sums.ce / max(denom_ce, 1.0)
        loss = ce
        if self._spec.kd is not None and targets.kd_mask is not None:
            loss = kd_mix(ce, sums.kd / max(denom_kd, 1.0), self.kd.alpha)
        loss = loss * scale
        self._accumulate(model, sums, n, n_kd if targets.kd_mask is not None else None, inputs)
        # The Trainer never needs the [B, T, V] logits back (prediction_loss_only).
        return (loss, {"loss": loss}) if return_outputs else loss

    def _loss_sums(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        sel: torch.Tensor,
        targets: TokenTargets,
    ) -> LossSums:
        head = self._chunk_head(model) if self.loss_chunk_elements > 0 else None
        if head is not None:
            out = model(**inputs, use_cache=False, logits_to_keep=1, output_hidden_states=True)
            last = out.hidden_states[-1]
            if self._chunk_ok is None:
                self._chunk_ok = _head_matches(head, last[:, -1], out.logits[:, -1])
                if not self._chunk_ok:
                    log.warning(
                        "the student's output head could not be reproduced from its hidden "
                        "states; computing the loss from the full logits (more memory)"
                    )
            if self._chunk_ok:
                rows = chunk_rows_for(self._vocab_size(), self.loss_chunk_elements)
                hidden = last[:, :-1][sel]
                return chunked_loss_sums(hidden, head, targets, self._spec, rows)
        out = model(**inputs, use_cache=False)
        return logits_loss_sums(out.logits[:, :-1][sel], targets, self._spec)

    def _chunk_head(self, model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """hidden → logits as the model computes them, or None when that is not possible
        here: no ``logits_to_keep`` argument, or a sharded head (FSDP DTensor, ZeRO-3)."""
        if self._chunk_ok is False:
            return None
        base = self.model
        forward = getattr(getattr(base, "get_base_model", lambda: base)(), "forward", None)
        if forward is None or "logits_to_keep" not in inspect.signature(forward).parameters:
            return None
        head = base.get_output_embeddings()
        weight = getattr(head, "weight", None)
        if head is None or weight is None or type(weight).__name__ == "DTensor":
            return None
        if hasattr(weight, "ds_id"):  # DeepSpeed ZeRO-3 partitions it
            return None
        config = getattr(base, "config", None)
        cap = getattr(
            getattr(config, "get_text_config", lambda: config)(), "final_logit_softcapping", None
        )
        if not cap:
            return head
        return lambda h: torch.tanh(head(h) / cap) * cap

    # ------------------------------------------------------------------ metrics

    def _accumulate(
        self,
        model: torch.nn.Module,
        sums: LossSums,
        n: int,
        n_kd: int | None,
        inputs: dict[str, Any],
    ) -> None:
        s = self._sums["train" if model.training else "eval"]
        s["ce"] += float(sums.ce.detach())
        s["n"] += n
        s["agree"] += float(sums.agree)
        if n_kd is not None and self._spec.kd is not None:
            s["kd"] += float(sums.kd.detach())
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

    from apidistill.model_loading import peft_quiet

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


def _head_matches(
    head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, logits: torch.Tensor
) -> bool:
    """Whether ``head(hidden)`` reproduces the model's own logits (one position per row)."""
    with torch.no_grad():
        mine = head(hidden).float()
    theirs = logits.float()
    if mine.shape != theirs.shape:
        return False
    tol = 1e-4 if logits.dtype == torch.float32 else 5e-2
    return bool(torch.allclose(mine, theirs, atol=tol, rtol=tol))
