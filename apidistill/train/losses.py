"""Distillation losses as pure tensor functions (no I/O, no model, no config).

Notation (ARCHITECTURE.md, "Distillation losses"): the student distribution is q, the
teacher's is p, T is the temperature. API teachers give only the teacher's top-k
log-probabilities at each position, so every divergence here is taken over k + 1 *buckets*:
the teacher's top-k set S and one tail bucket holding the rest of the vocabulary,

    p_tail = 1 − Σ_{i∈S} p_i          q_tail = 1 − Σ_{i∈S} q_i = Σ_{j∉S} q_j

The top-k alone is never renormalized: doing so tells the student the teacher put zero mass
outside S, which pushes it toward over-confidence. With k = vocabulary the tail is empty and
every bucket loss equals the exact full-distribution loss (the unit tests check this against
``torch.nn.functional.kl_div``).

Shapes: any leading dimensions work; the docs write ``[B, T]``. Logits are ``[B, T, V]``;
teacher ids / log-probs are ``[B, T, K]``; masks are ``[B, T]`` bools. Slots of the teacher's
top-k that are padding are recognised by a non-finite log-prob or an id outside ``[0, V)``;
a repeated id keeps its first occurrence. Padded slots may therefore hold any id.

Reductions: ``"mean"`` is the mean over supervised positions (a token mean), so adding
padding to a batch never changes the loss scale; ``"none"`` returns the per-position value
``[B, T]`` with 0 at unsupervised positions. :func:`masked_mean` also offers a
per-sequence mean. A loss over zero supervised positions is 0 (with a gradient graph), never
NaN.

Numerics: everything is computed in float32 whatever the logits' dtype; the student's tail
is a log-sum-exp over the complement of S (exact even when q_tail is tiny, where
``1 − Σ q_i`` would cancel); the teacher's tail is treated as empty below
:data:`TEACHER_TAIL_EPS`, because stored top-k log-probs carry rounding of that order; bucket
log-probabilities are floored at :data:`LOG_FLOOR` so gradients stay finite.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "LOG_FLOOR",
    "TEACHER_TAIL_EPS",
    "bucket_divergence",
    "generalized_jsd",
    "kd_mix",
    "masked_mean",
    "sampled_token_ce",
    "sequence_ce",
    "topk_tail_kl",
    "unbiased_sampled_token_loss",
]

Reduction = Literal["mean", "none"]

LOG_FLOOR = math.log(1e-12)
"""Smallest log-probability a bucket may take; keeps log(0) and its gradient finite."""

TEACHER_TAIL_EPS = 1e-6
"""A teacher tail below this is rounding of the stored top-k log-probs, not real mass."""

IGNORE_INDEX = -100


# --------------------------------------------------------------------------- reductions


def masked_mean(
    values: Tensor, mask: Tensor, *, per: Literal["token", "sequence"] = "token"
) -> Tensor:
    """Mean of ``values`` over ``mask`` (both ``[B, T]``).

    ``per="token"``: Σ values·mask / Σ mask — every supervised token weighs the same.
    ``per="sequence"``: the token mean inside each sequence, then the mean over the sequences
    that have at least one supervised token — every example weighs the same.
    Neither changes with padding; an empty mask gives 0 (keeping the graph).
    """
    mask = mask.bool()
    zero = (values * 0).nan_to_num().sum()
    values = torch.where(mask, values, torch.zeros_like(values))
    m = mask.to(values.dtype)
    if per == "token":
        n = m.sum()
        return torch.where(n > 0, (values * m).sum() / n.clamp_min(1), zero)
    flat_v = values.reshape(-1, values.shape[-1]) if values.dim() > 1 else values[None]
    flat_m = m.reshape(flat_v.shape)
    per_seq_n = flat_m.sum(-1)
    per_seq = (flat_v * flat_m).sum(-1) / per_seq_n.clamp_min(1)
    has = (per_seq_n > 0).to(values.dtype)
    n_seq = has.sum()
    return torch.where(n_seq > 0, (per_seq * has).sum() / n_seq.clamp_min(1), zero)


def _reduce(per_position: Tensor, mask: Tensor, reduction: Reduction) -> Tensor:
    per_position = torch.where(mask, per_position, torch.zeros_like(per_position))
    if reduction == "none":
        return per_position
    if reduction == "mean":
        return masked_mean(per_position, mask)
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


# --------------------------------------------------------------------------- sequence KD


def sequence_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Sequence KD: token-mean cross-entropy on the teacher's tokens.

    ``logits [B, T, V]``, ``labels [B, T]`` with -100 where no loss is wanted (prompt,
    padding). ``labels[b, t]`` is the target of ``logits[b, t]``: shift before calling
    (``logits[:, :-1]``, ``labels[:, 1:]`` for a causal LM).

        L = −(1/N) Σ_{(b,t): label ≠ −100} log softmax(logits[b, t])[label[b, t]]
    """
    valid = labels != IGNORE_INDEX
    logq = logits.float().log_softmax(-1)
    picked = logq.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return masked_mean(-picked, valid)


def kd_mix(ce: Tensor, kd: Tensor, alpha: float) -> Tensor:
    """α mix: ``alpha · kd + (1 − alpha) · ce`` (α = 0 is pure sequence KD)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return alpha * kd + (1.0 - alpha) * ce


# --------------------------------------------------------------------------- buckets


def _valid_slots(ids: Tensor, logprobs: Tensor, vocab_size: int) -> Tensor:
    """``[..., K]`` bools: finite log-prob, id in range, first occurrence of its id."""
    valid = torch.isfinite(logprobs) & (ids >= 0) & (ids < vocab_size)
    k = ids.shape[-1]
    if k > 1:
        same = ids.unsqueeze(-1) == ids.unsqueeze(-2)  # [..., K(i), K(j)]
        earlier = torch.ones(k, k, dtype=torch.bool, device=ids.device).tril(-1)  # j < i
        dup = (same & earlier & valid.unsqueeze(-2)).any(-1)
        valid = valid & ~dup
    return valid


def _student_buckets(student_logprobs: Tensor, ids: Tensor, valid: Tensor) -> Tensor:
    """Student log-probs on the k + 1 buckets ``[..., K+1]`` (invalid slots at the floor).

    The tail is the log-sum-exp over the complement of S, with S's entries replaced by the
    most negative float (not −inf) so a row whose complement is empty stays finite.
    """
    vocab = student_logprobs.shape[-1]
    safe_ids = torch.where(valid, ids, torch.zeros_like(ids)).clamp(0, vocab - 1)
    # scatter_add, not scatter: a padded slot may repeat a valid id and must not unset it
    hits = torch.zeros(student_logprobs.shape, dtype=torch.uint8, device=ids.device)
    in_s = hits.scatter_add_(-1, safe_ids, valid.to(torch.uint8)) > 0
    fill = torch.finfo(student_logprobs.dtype).min
    tail = torch.logsumexp(student_logprobs.masked_fill(in_s, fill), dim=-1, keepdim=True)
    top = student_logprobs.gather(-1, safe_ids)
    floor = torch.full_like(top, LOG_FLOOR)
    top = torch.where(valid, top.clamp_min(LOG_FLOOR), floor)
    return torch.cat([top, tail.clamp_min(LOG_FLOOR)], dim=-1)


def _teacher_buckets(logprobs: Tensor, valid: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Teacher log-probs on the k + 1 buckets, and which buckets carry mass ``[..., K+1]``.

    At temperature T the k + 1 bucket probabilities are raised to 1/T and renormalized.
    The tail is one atom there, so this is exact only when the tail is empty (k = vocabulary)
    or T = 1; for a top-20 teacher the tail mass is small and the error with it.
    """
    lp = torch.where(valid, logprobs.float(), torch.zeros_like(logprobs, dtype=torch.float32))
    p_top = lp.exp() * valid
    p_tail = (1.0 - p_top.sum(-1, keepdim=True)).clamp_min(0.0)
    tail_ok = p_tail > TEACHER_TAIL_EPS
    lp_tail = torch.where(
        tail_ok, p_tail.clamp_min(1e-30).log(), torch.full_like(p_tail, LOG_FLOOR)
    )
    lp_all = torch.cat([torch.where(valid, lp, torch.full_like(lp, LOG_FLOOR)), lp_tail], dim=-1)
    has_mass = torch.cat([valid, tail_ok], dim=-1)
    if temperature != 1.0:
        scaled = torch.where(has_mass, lp_all / temperature, torch.full_like(lp_all, -math.inf))
        norm = torch.logsumexp(scaled, dim=-1, keepdim=True)
        norm = torch.where(torch.isfinite(norm), norm, torch.zeros_like(norm))
        lp_all = torch.where(has_mass, scaled - norm, torch.full_like(lp_all, LOG_FLOOR))
    return lp_all.clamp_min(LOG_FLOOR), has_mass


def bucket_divergence(
    student_logprobs: Tensor,
    teacher_topk_ids: Tensor,
    teacher_topk_logprobs: Tensor,
    *,
    kind: Literal["forward", "reverse", "jsd"] = "forward",
    beta: float = 0.5,
    teacher_temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Per-position divergence over the k + 1 buckets, from student *log-probs*.

    The building block of the public losses, exposed so a trainer that already holds
    ``log_softmax(logits / T)`` (shared with the CE term) does not compute it twice.
    Returns ``(value [...], has_target [...])``; ``has_target`` is False where the teacher
    gave no valid top-k slot. No T² factor and no reduction here.

        forward:  KL(p‖q) = Σ_b p_b (log p_b − log q_b)
        reverse:  KL(q‖p) = Σ_b q_b (log q_b − log p_b)
        jsd:      M = β p + (1 − β) q;  JSD_β = β KL(p‖M) + (1 − β) KL(q‖M)
    """
    valid = _valid_slots(teacher_topk_ids, teacher_topk_logprobs, student_logprobs.shape[-1])
    lq = _student_buckets(student_logprobs.float(), teacher_topk_ids, valid)
    lp, p_mass = _teacher_buckets(teacher_topk_logprobs, valid, teacher_temperature)
    slots = torch.cat([valid, torch.ones_like(valid[..., :1])], dim=-1)  # tail always a bucket
    p = lp.exp() * p_mass
    q = lq.exp() * slots
    if kind == "forward":
        value = (p * (lp - lq)).sum(-1)
    elif kind == "reverse":
        value = (q * (lq - lp)).sum(-1)
    elif kind == "jsd":
        if not 0.0 < beta < 1.0:
            raise ValueError(f"beta must be in (0, 1), got {beta}")
        lm = torch.logaddexp(lp + math.log(beta), lq + math.log(1.0 - beta))
        value = beta * (p * (lp - lm)).sum(-1) + (1.0 - beta) * (q * (lq - lm)).sum(-1)
    else:
        raise ValueError(f"kind must be 'forward', 'reverse' or 'jsd', got {kind!r}")
    return value, valid.any(-1)


def _tempered_logprobs(logits: Tensor, temperature: float) -> Tensor:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    x = logits.float()
    return (x / temperature).log_softmax(-1) if temperature != 1.0 else x.log_softmax(-1)


def topk_tail_kl(
    student_logits: Tensor,
    teacher_topk_ids: Tensor,
    teacher_topk_logprobs: Tensor,
    mask: Tensor,
    *,
    temperature: float = 1.0,
    direction: Literal["forward", "reverse"] = "forward",
    reduction: Reduction = "mean",
) -> Tensor:
    """Sparse top-k KD with a tail bucket.

    ``student_logits [B, T, V]``; ``teacher_topk_ids [B, T, K]`` (long);
    ``teacher_topk_logprobs [B, T, K]`` (teacher log-probs at T = 1, −inf for padded
    slots); ``mask [B, T]`` (bool, True = supervise). ``student_logits[b, t]`` and the
    teacher's top-k at ``[b, t]`` describe the same next token.

        q = softmax(student_logits / T) on buckets S ∪ {tail};  p = teacher buckets at T
        forward:  L_t = T² · Σ_{b ∈ S∪tail} p_b (log p_b − log q_b)
        reverse:  L_t = T² · Σ_{b ∈ S∪tail} q_b (log q_b − log p_b)

    Positions without a valid teacher slot are dropped from the mean as if masked.
    Returns a scalar (``"mean"``) or ``[B, T]`` (``"none"``, 0 where unsupervised).
    """
    logq = _tempered_logprobs(student_logits, temperature)
    value, has = bucket_divergence(
        logq,
        teacher_topk_ids,
        teacher_topk_logprobs,
        kind=direction,
        teacher_temperature=temperature,
    )
    return _reduce(value * temperature**2, mask.bool() & has, reduction)


def generalized_jsd(
    student_logits: Tensor,
    teacher_topk_ids: Tensor,
    teacher_topk_logprobs: Tensor,
    mask: Tensor,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    """Generalized Jensen-Shannon divergence (Agarwal et al., GKD) on the k + 1 buckets.

        M = β p + (1 − β) q
        L_t = T² · [β KL(p‖M) + (1 − β) KL(q‖M)]

    β = 0.5 is the symmetric JSD; β → 0 behaves like forward KL scaled by β, β → 1 like
    reverse KL scaled by 1 − β. Bounded by log 2 per position (times T²), so it tolerates a
    noisy teacher better than KL. Shapes and reductions as :func:`topk_tail_kl`.
    """
    logq = _tempered_logprobs(student_logits, temperature)
    value, has = bucket_divergence(
        logq,
        teacher_topk_ids,
        teacher_topk_logprobs,
        kind="jsd",
        beta=beta,
        teacher_temperature=temperature,
    )
    return _reduce(value * temperature**2, mask.bool() & has, reduction)


def unbiased_sampled_token_loss(
    student_logits: Tensor,
    teacher_topk_ids: Tensor,
    teacher_topk_logprobs: Tensor,
    sampled_ids: Tensor,
    mask: Tensor,
    *,
    reduction: Reduction = "mean",
) -> Tensor:
    """Cross-entropy to the teacher, unbiased, from its top-k and the token it sampled.

    ``sampled_ids [B, T]`` is the token y the teacher sampled at T = 1 (the record's own
    token); other shapes as :func:`topk_tail_kl`.

        L_t = −Σ_{i∈S} p_i log q_i − 1[y ∉ S] · log q_y

    Since P(y = j) = p_j, E_y[1[y ∉ S] log q_y] = Σ_{j∉S} p_j log q_j, so E[L_t] equals the
    full cross-entropy −Σ_j p_j log q_j: the tail is covered by the sample instead of being
    lumped into one bucket. (The tail weight on the sampled token is therefore 1; weighting
    it by p_tail would count the tail mass twice, since the indicator already fires with
    probability p_tail.) This is a cross-entropy, i.e. KL plus the teacher's entropy: its
    value does not go to 0 but its gradient is the KL's. Valid only for a teacher sampled at
    T = 1; for greedy teachers use :func:`topk_tail_kl`.
    """
    logq = student_logits.float().log_softmax(-1)
    value, has = sampled_token_ce(logq, teacher_topk_ids, teacher_topk_logprobs, sampled_ids)
    return _reduce(value, mask.bool() & has, reduction)


def sampled_token_ce(
    student_logprobs: Tensor,
    teacher_topk_ids: Tensor,
    teacher_topk_logprobs: Tensor,
    sampled_ids: Tensor,
) -> tuple[Tensor, Tensor]:
    """Per-position value of :func:`unbiased_sampled_token_loss` from student *log-probs*.

    Returns ``(value [...], has_target [...])`` like :func:`bucket_divergence`.
    """
    vocab = student_logprobs.shape[-1]
    valid = _valid_slots(teacher_topk_ids, teacher_topk_logprobs, vocab)
    safe_ids = torch.where(valid, teacher_topk_ids, torch.zeros_like(teacher_topk_ids))
    lq_top = student_logprobs.gather(-1, safe_ids.clamp(0, vocab - 1))
    lp = torch.where(valid, teacher_topk_logprobs.float(), torch.zeros_like(lq_top))
    p = lp.exp() * valid
    top_term = -(p * torch.where(valid, lq_top, torch.zeros_like(lq_top))).sum(-1)
    y = sampled_ids.long()
    y_ok = (y >= 0) & (y < vocab)
    lq_y = student_logprobs.gather(-1, y.clamp(0, vocab - 1).unsqueeze(-1)).squeeze(-1)
    y_in_s = ((teacher_topk_ids == y.unsqueeze(-1)) & valid).any(-1)
    tail_term = -torch.where(y_ok & ~y_in_s, lq_y, torch.zeros_like(lq_y))
    return top_term + tail_term, valid.any(-1)
