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

Temperature: tempering a k + 1-bucket target needs an assumption about the teacher's tail,
whose shape is unknown; :func:`bucket_divergence` derives the definition used here (the teacher's
tail is taken to have the student's tail shape, so the bucket loss is exactly the full tempered
divergence to that completed teacher) and the tests check it against full-vocabulary references.

Numerics: everything is computed in float32 whatever the logits' dtype; the student's tail
is a log-sum-exp over the complement of S (exact even when q_tail is tiny, where
``1 − Σ q_i`` would cancel); the teacher's tail is treated as empty below
:data:`TEACHER_TAIL_EPS`, because stored top-k log-probs carry rounding of that order. The
student's bucket log-probs are never floored (a ``clamp_min`` floor has zero gradient below
it, so KL would stop pulling up a top-k token the student all but excludes); only a teacher
bucket without mass reads as :data:`LOG_FLOOR`, where reverse KL and JSD need a finite log.
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
    "ce_and_kd",
    "generalized_jsd",
    "kd_mix",
    "masked_mean",
    "sampled_token_ce",
    "sequence_ce",
    "teacher_target_mask",
    "topk_tail_kl",
    "unbiased_sampled_token_loss",
]

Reduction = Literal["mean", "none"]

LOG_FLOOR = math.log(1e-12)
"""Log-probability read for a *teacher* bucket without mass (reverse KL / JSD need a finite
log there); the student's log-probs are never floored."""

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


def teacher_target_mask(ids: Tensor, logprobs: Tensor, vocab_size: int) -> Tensor:
    """``[...]`` bools: the position has at least one valid teacher top-k slot.

    The positions every KD loss here averages over; a trainer counts them with this to
    normalize by the KD tokens of a whole optimizer step.
    """
    return _valid_slots(ids, logprobs, vocab_size).any(-1)


def _scatter_ids(ids: Tensor, valid: Tensor, vocab: int) -> tuple[Tensor, Tensor]:
    """``(safe_ids, row_has_valid)``: ids to write S's entries through, race-free.

    Invalid slots point at the row's first valid id (written with the same value), or, in a
    row without any valid slot, all at one in-range id that keeps its own value — so no two
    writes of one scatter ever disagree.
    """
    if ids.shape[-1] == 0:
        return ids, valid.any(-1, keepdim=True)
    first = ids.gather(-1, valid.to(torch.uint8).argmax(-1, keepdim=True))
    safe = torch.where(valid, ids, first).clamp(0, vocab - 1)
    return safe, valid.any(-1, keepdim=True)


def _tail_lse(values: Tensor, safe_ids: Tensor, row_has_valid: Tensor) -> Tensor:
    """log Σ_{j∉S} exp(values_j) ``[..., 1]``: a log-sum-exp over the complement of S.

    One copy of ``values`` with S's entries set to the most negative float (not −inf), so
    a row whose complement is empty stays finite (about −3.4e38, i.e. probability 0) and its
    gradient is 0, not NaN.
    """
    fill = torch.full_like(safe_ids, torch.finfo(values.dtype).min, dtype=values.dtype)
    src = torch.where(row_has_valid, fill, values.gather(-1, safe_ids))
    return torch.logsumexp(values.scatter(-1, safe_ids, src), dim=-1, keepdim=True)


def _student_buckets(
    student_logprobs: Tensor, ids: Tensor, valid: Tensor, temperature: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Student log-probs on the k + 1 buckets ``[..., K+1]``, exact (no floor).

    Returns ``(log Q, tail_ok, log ρ)``. log Q is taken straight from the log-softmax, which
    is finite for finite logits however small q is, so the gradient of every bucket is the
    exact one (a floor such as ``clamp_min`` would zero it below the floor). Invalid slots
    hold 0 and are masked out by the caller. ``tail_ok`` is False where the complement of S
    is empty (k = vocabulary). log ρ is the tail's shape factor (see
    :func:`bucket_divergence`), detached: it shapes the teacher's target, which is a constant.
    """
    vocab = student_logprobs.shape[-1]
    safe_ids, row_has_valid = _scatter_ids(ids, valid, vocab)
    tail = _tail_lse(student_logprobs, safe_ids, row_has_valid)
    tail_ok = valid.sum(-1, keepdim=True) < vocab  # valid slots hold distinct ids
    top = torch.where(
        valid,
        student_logprobs.gather(-1, safe_ids),
        torch.zeros_like(ids, dtype=student_logprobs.dtype),
    )
    if temperature == 1.0:
        log_rho = torch.zeros_like(tail)
    else:
        with torch.no_grad():
            tempered_back = _tail_lse(student_logprobs * temperature, safe_ids, row_has_valid)
            log_rho = tail - tempered_back / temperature
            log_rho = torch.where(tail_ok, log_rho, torch.zeros_like(log_rho))
    tail = torch.where(tail_ok, tail, torch.zeros_like(tail))
    return torch.cat([top, tail], dim=-1), tail_ok, log_rho


_TINY_TAIL_LOG = math.log(1e-20)
"""Below this student tail the fused path hands the row to the exact log-sum-exp path."""


class _GatherLogSoftmax(torch.autograd.Function):
    """log_softmax(x / T) at ``safe_ids`` ``[n, M]`` (+ the log-mass outside them), and
    log_softmax(x) at ``labels`` ``[n]``, without an ``[n, V]`` output or saved copy.

    Why: with a 150k–260k vocabulary the loss, not the model, dominates a small student's
    step. Autograd through log_softmax → masked copy → logsumexp keeps three ``[n, V]``
    tensors and walks V about a dozen times; here forward walks V four times (max, exp, two
    sums) and backward twice, saving only the logits, which exist anyway. Gradient, with
    G = the sum of the incoming gradients over the outputs that share one softmax:

        ∂ log Q_b / ∂x_j = (1/T) · (1[j ∈ b] · Q_j / Q_b − Q_j)

    Rows whose tail is below 1e-20 are recomputed by the caller on the exact path.
    """

    @staticmethod
    def forward(ctx, x, safe_ids, slot_ok, labels, temperature, with_tail):  # type: ignore[no-untyped-def]
        t = float(temperature)
        xt = x if t == 1.0 else x / t
        m = xt.amax(-1, keepdim=True)
        buf = (xt - m).exp_()
        lse = m + buf.sum(-1, keepdim=True).log()
        lq = xt.gather(-1, safe_ids) - lse
        row_has = slot_ok.any(-1, keepdim=True)
        log_rho = torch.zeros_like(lse)
        if with_tail:
            keep = buf.gather(-1, safe_ids)
            buf.scatter_(-1, safe_ids, torch.where(row_has, torch.zeros_like(keep), keep))
            tail_t = buf.sum(-1, keepdim=True).log() + m  # log Σ_{j∉S} exp(x_j / T)
            lq = torch.cat([lq, tail_t - lse], dim=-1)
        del buf
        lse1 = lse
        if t != 1.0 and (with_tail or labels.numel()):
            m1 = x.amax(-1, keepdim=True)
            buf = (x - m1).exp_()
            lse1 = m1 + buf.sum(-1, keepdim=True).log()
            if with_tail:  # log ρ = LSE_tail(x / T) − LSE_tail(x) / T
                keep = buf.gather(-1, safe_ids)
                buf.scatter_(-1, safe_ids, torch.where(row_has, torch.zeros_like(keep), keep))
                tail_1 = buf.sum(-1, keepdim=True).log() + m1
                log_rho = (tail_t - tail_1 / t).nan_to_num(0.0, 0.0, 0.0)
            del buf
        lq_y = (
            x.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - lse1.squeeze(-1)
            if labels.numel()
            else x.new_zeros(x.shape[0])
        )
        ctx.save_for_backward(x, safe_ids, slot_ok, labels, lse, lse1, lq)
        ctx.t, ctx.with_tail = t, bool(with_tail)
        ctx.mark_non_differentiable(log_rho)
        return lq, lq_y, log_rho

    @staticmethod
    def backward(ctx, g_lq, g_y, _g_rho):  # type: ignore[no-untyped-def]
        x, safe_ids, slot_ok, labels, lse, lse1, lq = ctx.saved_tensors
        t, k = ctx.t, safe_ids.shape[-1]
        has_y = labels.numel() > 0
        g_top = g_lq[:, :k]
        total = g_lq.sum(-1, keepdim=True)
        if has_y and t == 1.0:  # one softmax: fold the CE term's −g_y · q into G
            total = total + g_y.unsqueeze(-1)
        if ctx.with_tail:
            inv_tail = (-lq[:, k:].clamp_min(-80.0)).exp()  # 1 / Q_tail, finite
            coef = g_lq[:, k:] * inv_tail - total
        else:
            coef = -total
        xt = x if t == 1.0 else x / t
        buf = (xt - lse).exp_()  # Q
        q_top = buf.gather(-1, safe_ids)
        buf.mul_(coef)
        if k:
            vals = g_top - total * q_top  # S entries: g_i − G · Q_i
            first = slot_ok.to(torch.uint8).argmax(-1, keepdim=True)
            vals = torch.where(slot_ok, vals, vals.gather(-1, first))  # same write for a repeat
            row_has = slot_ok.any(-1, keepdim=True)
            vals = torch.where(row_has, vals, buf.gather(-1, safe_ids))  # no S: keep as is
            buf.scatter_(-1, safe_ids, vals)
        if t != 1.0:
            buf.div_(t)
            if has_y:
                buf.sub_((x - lse1).exp_().mul_(g_y.unsqueeze(-1)))
        if has_y:
            buf.scatter_add_(-1, labels.unsqueeze(-1), g_y.unsqueeze(-1))
        return buf, None, None, None, None, None


def _fused_buckets(
    x: Tensor,
    ids: Tensor,
    valid: Tensor,
    temperature: float,
    labels: Tensor | None,
    with_tail: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Rows ``[n, V]``: (student bucket log-probs, log ρ, log q(label)) via the fused op.

    A row whose tail is below 1e-20 (a student all but certain inside S) is recomputed on
    the exact log-sum-exp path, so no value and no gradient is ever floored.
    """
    vocab = x.shape[-1]
    safe, _ = _scatter_ids(ids, valid, vocab)
    y = labels.clamp(0, vocab - 1) if labels is not None else ids.new_zeros(0)
    lq, lq_y, log_rho = _GatherLogSoftmax.apply(x, safe, valid, y, temperature, with_tail)
    if with_tail:
        bad = (lq[:, -1] < _TINY_TAIL_LOG).nonzero().squeeze(-1)
        if bad.numel():
            exact, _, rho = _student_buckets(
                _tempered_logprobs(x[bad], temperature), ids[bad], valid[bad], temperature
            )
            lq = lq.index_put((bad,), exact)
            log_rho = log_rho.index_put((bad,), rho)
    return lq, log_rho, lq_y


def _teacher_buckets(
    logprobs: Tensor, valid: Tensor, tail_exists: Tensor, temperature: float, log_rho: Tensor
) -> tuple[Tensor, Tensor]:
    """Teacher log-probs on the k + 1 buckets at temperature T, and which carry mass.

        log P_i    = log p_i / T − log Z                   (i ∈ S)
        log P_tail = log p_tail / T + log ρ − log Z
        Z          = Σ_{i∈S} p_i^{1/T} + p_tail^{1/T} · ρ

    (see :func:`bucket_divergence` for ρ). Buckets without mass hold :data:`LOG_FLOOR`
    (only reverse KL and JSD read them; the teacher is a constant, so this floor costs the
    student no gradient). A tail below :data:`TEACHER_TAIL_EPS` or with an empty complement
    has no mass; normalizing over the buckets with mass also absorbs the rounding of stored
    log-probs that sum to slightly more than 1.
    """
    lp = torch.where(valid, logprobs.float(), torch.zeros_like(logprobs, dtype=torch.float32))
    p_top = lp.exp() * valid
    p_tail = (1.0 - p_top.sum(-1, keepdim=True)).clamp_min(0.0)
    tail_ok = (p_tail > TEACHER_TAIL_EPS) & tail_exists
    lp_tail = p_tail.clamp_min(1e-30).log() / temperature + log_rho
    scaled = torch.cat([lp / temperature, lp_tail], dim=-1)
    has_mass = torch.cat([valid, tail_ok], dim=-1)
    scaled = torch.where(has_mass, scaled, torch.full_like(scaled, -math.inf))
    norm = torch.logsumexp(scaled, dim=-1, keepdim=True)
    norm = torch.where(torch.isfinite(norm), norm, torch.zeros_like(norm))
    lp_all = torch.where(has_mass, scaled - norm, torch.full_like(scaled, LOG_FLOOR))
    return lp_all, has_mass


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
    ``log_softmax(logits / T)`` does not compute it twice. ``student_logprobs`` must be the
    student's log-softmax *at the temperature* ``teacher_temperature`` (the full vocabulary
    tempered, then bucketed). Returns ``(value [...], has_target [...])``; ``has_target``
    is False where the teacher gave no valid top-k slot. No T² factor and no reduction here.

        forward:  KL(P‖Q) = Σ_b P_b (log P_b − log Q_b)
        reverse:  KL(Q‖P) = Σ_b Q_b (log Q_b − log P_b)
        jsd:      M = β P + (1 − β) Q;  JSD_β = β KL(P‖M) + (1 − β) KL(Q‖M)

    **What temperature means with a top-k + tail teacher.** Tempering a distribution raises
    every token's probability to 1/T and renormalizes. The student's full vocabulary is
    tempered exactly and then bucketed: Q_i = q_i^{1/T} / Z_q for i ∈ S and
    Q_tail = Σ_{j∉S} q_j^{1/T} / Z_q. The teacher's tail is one number, p_tail, of unknown
    shape, and tempering depends on the shape: writing the tail as p_tail · w_j (w sums to 1),
    Σ_{j∉S} (p_tail w_j)^{1/T} = p_tail^{1/T} · ρ(w) with ρ(w) = Σ_{j∉S} w_j^{1/T}
    (ρ = 1 for a single token, m^{1 − 1/T} for m equal tokens — about 222 at m = 49,132 and T = 2).
    **Assumption: the teacher's tail has the student's tail shape**, w_j = q_j / q_tail
    (probabilities at T = 1). Then both sides temper the tail with the same ρ and

        P_i = p_i^{1/T} / Z_p (i ∈ S),   P_tail = p_tail^{1/T} · ρ / Z_p,
        ρ = Σ_{j∉S} (q_j / q_tail)^{1/T}   (computed from the student, held constant)

    and the bucket divergence *equals* the full-vocabulary divergence between the tempered
    student and the tempered teacher completed this way, because inside the tail the two
    differ by a constant factor. This is the same assumption that makes the T = 1 bucket KL
    the full KL (the tail's inner shape gets no gradient); at T = 1, ρ = 1 and nothing
    changes. A student equal to the teacher scores 0 at every T. Tempering the student's
    vocabulary while the teacher's tail stays one atom (ρ = 1 on one side only) is wrong by
    orders of magnitude at T = 2–4 with a large vocabulary.

    Numerics: the student's bucket log-probs are the exact log-softmax values (finite, never
    floored), so forward KL keeps pulling up a top-k token the student gives 1e-19.
    """
    temperature = float(teacher_temperature)
    valid = _valid_slots(teacher_topk_ids, teacher_topk_logprobs, student_logprobs.shape[-1])
    lq, tail_exists, log_rho = _student_buckets(
        student_logprobs.float(), teacher_topk_ids, valid, temperature
    )
    value = _bucket_value(
        lq, tail_exists, log_rho, teacher_topk_logprobs, valid, kind, beta, temperature
    )
    return value, valid.any(-1)


def _bucket_value(
    lq: Tensor,
    tail_exists: Tensor,
    log_rho: Tensor,
    teacher_logprobs: Tensor,
    valid: Tensor,
    kind: str,
    beta: float,
    temperature: float,
) -> Tensor:
    """The divergence of :func:`bucket_divergence` from the student's bucket log-probs."""
    lp, p_mass = _teacher_buckets(teacher_logprobs, valid, tail_exists, temperature, log_rho)
    slots = torch.cat([valid, tail_exists], dim=-1)
    lq = torch.where(slots, lq, torch.zeros_like(lq))
    p = lp.exp() * p_mass
    q = lq.exp() * slots
    if kind == "forward":
        return (p * (lp - lq)).sum(-1)
    if kind == "reverse":
        return (q * (lq - lp)).sum(-1)
    if kind == "jsd":
        if not 0.0 < beta < 1.0:
            raise ValueError(f"beta must be in (0, 1), got {beta}")
        lm = torch.logaddexp(lp + math.log(beta), lq + math.log(1.0 - beta))
        return beta * (p * (lp - lm)).sum(-1) + (1.0 - beta) * (q * (lq - lm)).sum(-1)
    raise ValueError(f"kind must be 'forward', 'reverse' or 'jsd', got {kind!r}")


KDKind = Literal["forward", "reverse", "jsd", "unbiased"]


def ce_and_kd(
    logits: Tensor,
    labels: Tensor | None,
    teacher_topk_ids: Tensor | None = None,
    teacher_topk_logprobs: Tensor | None = None,
    *,
    kind: KDKind | None = None,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-position CE and KD terms straight from ``logits [..., V]``, in one fused pass.

    Returns ``(ce [...], kd [...], has_target [...])``: ``ce = −log softmax(logits)[label]``
    (0 without labels), ``kd = T² · D`` of :func:`bucket_divergence` (``kind`` forward /
    reverse / jsd) or the sampled-token CE of :func:`sampled_token_ce` with the labels as
    the sampled tokens (``kind="unbiased"``, no temperature), 0 with ``kind=None``. Values
    and gradients equal the log-softmax formulation (tests); the ``[..., V]`` log-softmax is
    never materialized (see :class:`_GatherLogSoftmax`).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    lead, vocab = logits.shape[:-1], logits.shape[-1]
    x = logits.float().reshape(-1, vocab)
    y = labels.reshape(-1).long() if labels is not None else None
    n = x.shape[0]
    if kind is None or teacher_topk_ids is None or teacher_topk_logprobs is None:
        empty = torch.zeros(n, 0, dtype=torch.long, device=x.device)
        _, _, lq_y = _fused_buckets(x, empty, empty.bool(), 1.0, y, with_tail=False)
        ce = -lq_y if y is not None else x.new_zeros(n)
        zeros = torch.zeros_like(ce)
        return ce.reshape(lead), zeros.reshape(lead), zeros.bool().reshape(lead)
    k = teacher_topk_ids.shape[-1]
    ids = teacher_topk_ids.reshape(-1, k).long()
    lps = teacher_topk_logprobs.reshape(-1, k)
    valid = _valid_slots(ids, lps, vocab)
    if kind == "unbiased":
        if y is None:
            raise ValueError("kind='unbiased' needs the sampled tokens as labels")
        lq_top, _, lq_y = _fused_buckets(x, ids, valid, 1.0, y, with_tail=False)
        kd = _sampled_value(lq_top, lq_y, ids, lps, valid, y, vocab)
        ce = -lq_y
    else:
        t = float(temperature)
        lq, log_rho, lq_y = _fused_buckets(x, ids, valid, t, y, with_tail=True)
        tail_exists = valid.sum(-1, keepdim=True) < vocab
        d = _bucket_value(lq, tail_exists, log_rho, lps, valid, _KIND[kind], beta, t)
        kd = d * t**2
        ce = -lq_y if y is not None else torch.zeros_like(kd)
    return ce.reshape(lead), kd.reshape(lead), valid.any(-1).reshape(lead)


_KIND = {"forward": "forward", "reverse": "reverse", "jsd": "jsd"}


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

        Q = softmax(student_logits / T) over the vocabulary, then summed into S ∪ {tail}
        P = the teacher's buckets tempered with the same tail factor ρ (bucket_divergence)
        forward:  L_t = T² · Σ_{b ∈ S∪tail} P_b (log P_b − log Q_b)
        reverse:  L_t = T² · Σ_{b ∈ S∪tail} Q_b (log Q_b − log P_b)

    T² keeps the gradient's scale as T changes (Hinton et al.): the gradient of the tempered
    KL with respect to a logit is (Q − P)/T, so T² · KL has gradient T · (Q − P).
    Positions without a valid teacher slot are dropped from the mean as if masked.
    Returns a scalar (``"mean"``) or ``[B, T]`` (``"none"``, 0 where unsupervised).
    """
    _, value, has = ce_and_kd(
        student_logits,
        None,
        teacher_topk_ids,
        teacher_topk_logprobs,
        kind=direction,
        temperature=temperature,
    )
    return _reduce(value, mask.bool() & has, reduction)


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
    _, value, has = ce_and_kd(
        student_logits,
        None,
        teacher_topk_ids,
        teacher_topk_logprobs,
        kind="jsd",
        beta=beta,
        temperature=temperature,
    )
    return _reduce(value, mask.bool() & has, reduction)


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
    _, value, has = ce_and_kd(
        student_logits, sampled_ids, teacher_topk_ids, teacher_topk_logprobs, kind="unbiased"
    )
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
    y = sampled_ids.long()
    lq_y = student_logprobs.gather(-1, y.clamp(0, vocab - 1).unsqueeze(-1)).squeeze(-1)
    value = _sampled_value(lq_top, lq_y, teacher_topk_ids, teacher_topk_logprobs, valid, y, vocab)
    return value, valid.any(-1)


def _sampled_value(
    lq_top: Tensor,
    lq_y: Tensor,
    ids: Tensor,
    lps: Tensor,
    valid: Tensor,
    y: Tensor,
    vocab: int,
) -> Tensor:
    """−Σ_{i∈S} p_i log q_i − 1[y ∉ S] · log q_y from the gathered student log-probs."""
    lp = torch.where(valid, lps.float(), torch.zeros_like(lq_top))
    p = lp.exp() * valid
    top_term = -(p * torch.where(valid, lq_top, torch.zeros_like(lq_top))).sum(-1)
    y_ok = (y >= 0) & (y < vocab)
    y_in_s = ((ids == y.unsqueeze(-1)) & valid).any(-1)
    return top_term - torch.where(y_ok & ~y_in_s, lq_y, torch.zeros_like(lq_y))
