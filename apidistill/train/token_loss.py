"""CE + KD per supervised position, as sums, from logits or from hidden states in chunks.

Why sums: the trainer divides by the number of supervised (and KD) tokens of the whole
optimizer step (every micro-batch of the gradient accumulation, every process), so a short
answer weighs what a long one does token for token; a mean per micro-batch would not.

Why chunks: the student's ``[N, V]`` logits and log-softmax cost 4·N·V bytes each in float32
(2.4 GB at N = 4,096 supervised tokens and a 150k vocabulary), several times over with the
KD buckets. :func:`chunked_loss_sums` applies the output head to ``chunk_rows`` positions at
a time under :func:`torch.utils.checkpoint.checkpoint`: each chunk's logits are freed after
its forward and recomputed during its backward, so the loss's transient memory is that of one
chunk whatever N is, at the price of one more head matmul per chunk.

The loss maths stays in :mod:`.losses` (pure tensor functions); this module only decides
which positions and how many at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from apidistill.train.losses import ce_and_kd

__all__ = [
    "DEFAULT_CHUNK_ELEMENTS",
    "LossSpec",
    "LossSums",
    "PositionScores",
    "TokenTargets",
    "chunk_rows_for",
    "chunked_loss_sums",
    "logits_loss_sums",
    "teacher_forced_scores",
]

KDLoss = Literal["forward_kl", "reverse_kl", "jsd", "unbiased"]
_KIND = {"forward_kl": "forward", "reverse_kl": "reverse", "jsd": "jsd", "unbiased": "unbiased"}

DEFAULT_CHUNK_ELEMENTS = 1 << 23
"""Logit elements per chunk (32 MiB per float32 ``[rows, V]`` copy): 55 rows at V = 151,936."""


@dataclass(frozen=True)
class LossSpec:
    """Which KD term to add to CE; ``kd=None`` is sequence KD (CE only)."""

    kd: KDLoss | None = None
    temperature: float = 1.0
    beta: float = 0.5


class TokenTargets(NamedTuple):
    """Targets of N supervised positions (rows of the hidden states / logits).

    ``kd_mask [N]`` is True where the position has a valid teacher top-k target; the
    top-k tensors are ``[N, K]``. They are None for sequence KD.
    """

    labels: Tensor
    topk_ids: Tensor | None = None
    topk_logprobs: Tensor | None = None
    kd_mask: Tensor | None = None

    def rows(self, start: int, stop: int) -> TokenTargets:
        return TokenTargets(*(None if t is None else t[start:stop] for t in self))


class LossSums(NamedTuple):
    """Sums over positions: CE, KD (with its T² factor), and top-1 agreement (a count)."""

    ce: Tensor
    kd: Tensor
    agree: Tensor

    def __add__(self, other: object) -> LossSums:  # type: ignore[override]
        if not isinstance(other, LossSums):
            return NotImplemented
        return LossSums(self.ce + other.ce, self.kd + other.kd, self.agree + other.agree)


def logits_loss_sums(logits: Tensor, targets: TokenTargets, spec: LossSpec) -> LossSums:
    """CE and KD sums for ``logits [n, V]`` (float32 maths whatever their dtype).

    ce    = −Σ_t log q(label_t)
    kd    = Σ_{t: kd_mask} T² · D_t        (D from :func:`.losses.bucket_divergence`)
          = Σ_{t: kd_mask} sampled_token_ce_t   for ``kd="unbiased"`` (no temperature)
    """
    labels = targets.labels
    kind = _KIND[spec.kd] if spec.kd is not None and targets.topk_ids is not None else None
    ce, kd, _ = ce_and_kd(
        logits,
        labels,
        targets.topk_ids,
        targets.topk_logprobs,
        kind=kind,
        beta=spec.beta,
        temperature=spec.temperature if kind != "unbiased" else 1.0,
    )
    with torch.no_grad():
        agree = (logits.argmax(-1) == labels).sum()
    kd_sum = (
        torch.where(targets.kd_mask, kd, torch.zeros_like(kd)).sum()
        if kind is not None and targets.kd_mask is not None
        else ce.new_zeros(())
    )
    return LossSums(ce.sum(), kd_sum, agree)


def chunk_rows_for(vocab_size: int, elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    """Positions per chunk so one ``[rows, V]`` tensor holds about ``elements`` values."""
    return max(1, elements // max(1, vocab_size))


def chunked_loss_sums(
    hidden: Tensor,
    head: Callable[[Tensor], Tensor],
    targets: TokenTargets,
    spec: LossSpec,
    chunk_rows: int,
) -> LossSums:
    """:func:`logits_loss_sums` of ``head(hidden)`` without ever holding all N rows' logits.

    ``hidden [N, H]`` are the final hidden states of the supervised positions; ``head`` maps
    ``[n, H]`` to ``[n, V]`` logits (the output layer, plus any logit soft-capping). Values
    and gradients equal the unchunked ones up to float summation order; with
    ``N ≤ chunk_rows`` it *is* the unchunked computation (nothing to save).
    """
    n = hidden.shape[0]
    if n <= chunk_rows:
        return logits_loss_sums(head(hidden), targets, spec)
    total: LossSums | None = None
    for start in range(0, n, chunk_rows):
        part = targets.rows(start, start + chunk_rows)

        def run(h: Tensor, part: TokenTargets = part) -> LossSums:
            return logits_loss_sums(head(h), part, spec)

        sums = LossSums(*checkpoint(run, hidden[start : start + chunk_rows], use_reentrant=False))
        total = sums if total is None else total + sums
    assert total is not None
    return total


class PositionScores(NamedTuple):
    """Per-position scores of a student against the teacher on the teacher's own answer.

    ``kl [N]`` is the forward top-k + tail KL (0 where ``has_kl`` is False), ``ce [N]`` the
    CE on the label, ``top1 [N]`` whether the student's argmax is the label.
    """

    kl: Tensor
    has_kl: Tensor
    ce: Tensor
    top1: Tensor


@torch.no_grad()
def teacher_forced_scores(
    logits: Tensor, rows: Tensor, targets: TokenTargets, *, chunk_rows: int | None = None
) -> PositionScores:
    """Held-out KL, CE and top-1 agreement of the positions ``rows`` of ``logits [..., V]``.

    The one held-out-KL computation: training's :func:`apidistill.train.heldout.teacher_fit`
    and eval's :func:`apidistill.eval.scoring.score_records` both call it, so the number the
    benchmark compares is the one the report shows. ``rows [N]`` index
    ``logits.reshape(-1, V)``; ``targets`` holds the N labels, the teacher's ``[N, K]`` top-k
    (``-inf`` for padded slots) and ``kd_mask [N]``. The KL is
    :func:`.losses.ce_and_kd`'s forward bucket divergence at T = 1, exactly what logprob KD
    trains on. Positions are taken ``chunk_rows`` at a time (default
    :func:`chunk_rows_for` V), so no ``[N, V]`` copy or log-softmax is ever held at once.
    """
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    step = chunk_rows or chunk_rows_for(vocab)
    parts: list[PositionScores] = []
    for start in range(0, rows.numel(), step):
        x = flat[rows[start : start + step]]
        part = targets.rows(start, start + step)
        ce, kl, has = ce_and_kd(
            x, part.labels, part.topk_ids, part.topk_logprobs, kind="forward", temperature=1.0
        )
        if part.kd_mask is not None:
            has = has & part.kd_mask
        parts.append(
            PositionScores(torch.where(has, kl, 0.0), has, ce, x.argmax(-1) == part.labels)
        )
    if not parts:
        empty = logits.new_zeros(0, dtype=torch.float32)
        return PositionScores(empty, empty.bool(), empty, empty.bool())
    return PositionScores(*(torch.cat(field) for field in zip(*parts, strict=True)))
