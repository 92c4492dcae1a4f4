"""How close a model is to the teacher on held-out records, by teacher forcing.

One forward pass per batch over the teacher's own answers gives, at every answer token:
the top-k + tail KL to the teacher (the DEMO-NOTES "held-out KL", nats/token), whether the
student's argmax is the teacher's token (top-1 agreement), and the CE on the teacher's
tokens. Cheap next to generation, and the number the logprob-KD benchmark compares. The
per-position maths is :func:`apidistill.train.token_loss.teacher_forced_scores`, the same
function eval's held-out KL uses, chunked so no ``[N, V]`` log-softmax is held at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from apidistill.records import Record
from apidistill.train.collate import DistillCollator, build_examples
from apidistill.train.losses import IGNORE_INDEX
from apidistill.train.token_loss import TokenTargets, teacher_forced_scores

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["teacher_fit"]


@torch.no_grad()
def teacher_fit(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[Record],
    *,
    system_prompt: str | None,
    top_k: int = 20,
    batch_size: int = 8,
    max_length: int = 1024,
) -> dict[str, float]:
    """``{"kl", "top1_agreement", "ce", "tokens"}`` of ``model`` against the records' teacher.

    KL is averaged over answer tokens that carry teacher top-k; agreement and CE over all
    answer tokens (end-of-turn included).
    """
    built = build_examples(
        records,
        tokenizer,
        system_prompt=system_prompt,
        max_length=max_length,
        top_k=top_k,
        with_kd=True,
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collate = DistillCollator(int(pad), top_k)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    kl_sum = ce_sum = agree = n = n_kl = 0.0
    for start in range(0, len(built.examples), batch_size):
        batch = collate(built.examples[start : start + batch_size])
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # Logits at (b, t) predict the token at (b, t + 1): shift the targets, not the logits.
        sel = batch["labels"][:, 1:] != IGNORE_INDEX
        b, t = sel.nonzero(as_tuple=True)
        scores = teacher_forced_scores(
            logits,
            b * logits.shape[1] + t,
            TokenTargets(
                batch["labels"][:, 1:][sel],
                batch["teacher_topk_ids"][:, 1:][sel],
                batch["teacher_topk_logprobs"][:, 1:][sel],
                batch["kd_mask"][:, 1:][sel],
            ),
        )
        ce_sum += float(scores.ce.sum())
        agree += float(scores.top1.sum())
        n += int(sel.sum())
        kl_sum += float(scores.kl.sum())
        n_kl += float(scores.has_kl.sum())
    if was_training:
        model.train()
    return {
        "kl": kl_sum / n_kl if n_kl else float("nan"),
        "top1_agreement": agree / n if n else float("nan"),
        "ce": ce_sum / n if n else float("nan"),
        "tokens": n,
    }
