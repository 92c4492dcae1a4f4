"""Held-out KL of a local student to the teacher, on the teacher's answer.

Exact match hides how close a student's distribution is to the teacher's: the demo's logprob-KD
student matched seq-KD on exact match but halved held-out KL (0.041 vs 0.098 nats/token). This
needs the student's logits, so it runs the model locally (an HTTP endpoint gives only top
logprobs of its own tokens): for each test record the student sees its short prompt followed by
the teacher's answer, one forward pass, and the same top-k + tail KL that logprob KD trains on
is read per position by :func:`apidistill.train.token_loss.teacher_forced_scores` (the one
held-out-KL computation; training's ``teacher_fit`` uses it too), a chunk of positions at a
time so no ``[N, V]`` log-softmax is held at once.

Which positions can be scored honestly depends on the teacher, exactly as in training
(:func:`apidistill.train.collate.build_examples`):

- same tokenizer, token ids that spell the answer (self-hosted teacher): every position with a
  top-k, on the teacher's own tokens;
- another tokenizer (an API teacher's ``o200k_base``, ids missing or from another vocabulary):
  the answer is tokenized for the student and the teacher's top-k is attached by UTF-8 byte
  alignment (:func:`apidistill.train.align.align_completion`); only positions where both
  tokenizers cut at the same byte into the same token are scored, and the share of scored
  positions (``coverage``) is reported next to the number;
- no logprobs at all (Anthropic, a reasoning model, sequence KD on text): nothing to compare
  with; :class:`NothingToScore` says so and the report carries that line instead of a number.

Forward passes block, so :func:`heldout_kl` is synchronous; the runner calls it in a thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from apidistill.errors import EvalError
from apidistill.eval.metrics import Estimate, token_kl_estimates
from apidistill.records import Message, Record

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from apidistill.train.align import StudentVocab

__all__ = [
    "KLSummary",
    "NothingToScore",
    "TeacherTargets",
    "TokenScores",
    "heldout_kl",
    "kl_unavailable_reason",
    "record_targets",
    "score_records",
    "teacher_targets",
]

# Alternatives kept per aligned position: every provider gives at most 20.
_ALIGN_TOP_K = 20


class NothingToScore(EvalError):
    """No test record carries a teacher distribution the student can be compared with."""


ScoreFn = Callable[..., Any]
RenderFn = Callable[[Any, list[Message], str | None], list[int]]


@dataclass(frozen=True)
class TeacherTargets:
    """The teacher's tokens of one answer and its top-k at each position (``None`` = no ids)."""

    ids: list[int]
    topk: list[list[tuple[int, float]] | None]
    aligned: bool = False  # student tokens with the teacher's top-k attached by bytes


@dataclass(frozen=True)
class TokenScores:
    """Per-position KL (scored positions only) and top-1 hits (every position) of one record."""

    record_id: str
    kl: np.ndarray
    top1: np.ndarray
    aligned: bool = False


@dataclass(frozen=True)
class KLSummary:
    kl_nats_per_token: Estimate
    top1_agreement: Estimate
    records_scored: int
    records_skipped: int
    positions: int
    scored_positions: int = 0  # positions with a teacher top-k (KL is their mean)
    records_aligned: int = 0  # records scored on byte-aligned positions

    @property
    def coverage(self) -> float:
        """Share of answer positions the KL was measured on."""
        return self.scored_positions / self.positions if self.positions else 0.0


def teacher_targets(record: Record) -> TeacherTargets | None:
    """Token ids and top-k of the teacher's answer, or ``None`` when the record lacks ids
    (no logprobs harvested, or an API teacher whose tokenizer is unknown)."""
    if not record.logprobs or any(t.token_id is None for t in record.logprobs):
        return None
    topk: list[list[tuple[int, float]] | None] = []
    for tok in record.logprobs:
        alts = [(a.token_id, a.logprob) for a in tok.top if a.token_id is not None]
        if not alts or len(alts) != len(tok.top):
            topk.append(None)
            continue
        topk.append(sorted(alts, key=lambda a: -a[1]))
    return TeacherTargets([int(t.token_id) for t in record.logprobs], topk)  # type: ignore[arg-type]


def _spells(ids: Sequence[int], text: str, vocab: StudentVocab) -> bool:
    """Whether student-vocabulary ``ids`` spell ``text`` (special tokens, such as a trailing
    end-of-turn, spell nothing): the proof that teacher ids are student ids."""
    pieces = []
    for i in ids:
        if not 0 <= i < len(vocab.token_bytes):
            return False
        piece = vocab.token_bytes[i]
        if piece is not None:
            pieces.append(piece)
    return b"".join(pieces) == text.encode("utf-8")


def record_targets(
    record: Record,
    tokenizer: Any,
    vocab: StudentVocab | None,
    *,
    same_vocab: bool = True,
) -> TeacherTargets | None:
    """What the student is scored against on ``record``, or ``None`` when nothing honest is
    left: teacher ids when they are student ids (``same_vocab`` and, given ``vocab``, they
    spell the answer), else the student's tokens with byte-aligned teacher top-k (needs
    ``vocab``), else nothing (no logprobs, or logprob tokens that do not spell the answer)."""
    direct = teacher_targets(record) if same_vocab else None
    if direct is not None and (vocab is None or _spells(direct.ids, record.completion, vocab)):
        return direct
    if not record.logprobs or vocab is None:
        return None
    from apidistill.train.align import align_completion

    al = align_completion(record.completion, record.logprobs, tokenizer, vocab, top_k=_ALIGN_TOP_K)
    if not al.teacher_text_ok or not al.student_ids:
        return None
    return TeacherTargets(al.student_ids, [t or None for t in al.topk], aligned=True)


def kl_unavailable_reason(records: Sequence[Record]) -> str | None:
    """One line saying why held-out KL cannot be measured on ``records`` at all (no record
    carries teacher logprobs), or ``None`` when some may be scored."""
    if any(r.logprobs for r in records):
        return None
    prov = next((r.provenance for r in records if r.provenance), None)
    who = f"{prov.provider}:{prov.model}" if prov else "the teacher"
    return (
        f"held-out KL not measured: none of the {len(records)} test answers of {who} carries "
        "logprobs (the teacher gives none, or the run harvested text for sequence KD), so "
        "there is no teacher distribution to compare with; the verdict uses agreement, task "
        "score and latency"
    )


def _prompt_ids(
    tokenizer: Any, record: Record, system_prompt: str | None, render: RenderFn
) -> list[int]:
    from apidistill.train.collate import record_messages

    return list(render(tokenizer, record_messages(record), system_prompt))


def _defaults(render: RenderFn | None) -> tuple[ScoreFn, RenderFn]:
    """Training's scoring function and prompt renderer (eval measures what training
    optimizes), or an :class:`EvalError` saying to install them."""
    try:
        from apidistill.train.token_loss import teacher_forced_scores

        if render is None:
            from apidistill.train.collate import render_student_prompt as render
    except ImportError as exc:
        raise EvalError(
            f"held-out KL needs apidistill.train ({exc})",
            hint="install apidistill[train], or evaluate without a local model",
        ) from None
    return teacher_forced_scores, render


def score_records(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[Record],
    *,
    system_prompt: str | None = None,
    batch_size: int = 4,
    render_prompt: RenderFn | None = None,
    vocab: StudentVocab | None = None,
    same_vocab: bool = True,
) -> list[TokenScores]:
    """Score every record with targets (:func:`record_targets`); others are left out.

    The KL is training's :func:`apidistill.train.token_loss.teacher_forced_scores` (the one
    held-out-KL computation) and ``render_prompt`` defaults to ``render_student_prompt``, so
    eval measures exactly what training optimizes. Without
    ``vocab`` (the student's vocabulary as bytes) only teacher token ids can be scored.
    """
    import torch

    score_fn, render = _defaults(render_prompt)
    items = [
        (r, t)
        for r in records
        if (t := record_targets(r, tokenizer, vocab, same_vocab=same_vocab)) is not None
    ]
    out: list[TokenScores] = []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        prompts = [_prompt_ids(tokenizer, r, system_prompt, render) for r, _ in batch]
        out.extend(_score_batch(model, tokenizer, batch, prompts, score_fn, torch))
    return out


def _check_vocab(batch: Sequence[tuple[Record, TeacherTargets]], vocab: int) -> None:
    for rec, tgt in batch:
        alts = [a for kk in tgt.topk if kk for a, _ in kk]
        if max(tgt.ids, default=0) >= vocab or max(alts, default=0) >= vocab:
            raise EvalError(
                f"record {rec.id!r}: teacher token ids do not fit the student's vocabulary "
                f"({vocab} tokens)",
                hint="held-out KL needs teacher and student to share a tokenizer",
            )


def _teacher_tensors(
    batch: Sequence[tuple[Record, TeacherTargets]], torch: Any
) -> tuple[Any, Any, Any]:
    """``[B, T, K]`` ids and log-probs plus the ``[B, T]`` mask of positions with a top-k.

    Positions may carry different numbers of alternatives (llama.cpp adds the sampled token);
    shorter ones are padded with -inf log-probs, which ``topk_tail_kl`` ignores."""
    t_max = max(len(t.ids) for _, t in batch)
    k = max([len(kk) for _, t in batch for kk in t.topk if kk is not None] or [1])
    top_ids = torch.zeros((len(batch), t_max, k), dtype=torch.long)
    top_lp = torch.full((len(batch), t_max, k), float("-inf"))
    mask = torch.zeros((len(batch), t_max), dtype=torch.bool)
    for i, (_, tgt) in enumerate(batch):
        for j, alts in enumerate(tgt.topk):
            if alts is not None:
                top_ids[i, j, : len(alts)] = torch.tensor([a for a, _ in alts])
                top_lp[i, j, : len(alts)] = torch.tensor([lp for _, lp in alts])
                mask[i, j] = True
    return top_ids, top_lp, mask


def _score_batch(model, tokenizer, batch, prompts, score_fn, torch) -> list[TokenScores]:
    _check_vocab(batch, model.get_input_embeddings().num_embeddings)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    seqs = [p + t.ids for p, (_, t) in zip(prompts, batch, strict=True)]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attn = torch.zeros_like(input_ids)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
    dev = next(model.parameters()).device
    with torch.inference_mode():
        out = model(input_ids=input_ids.to(dev), attention_mask=attn.to(dev))
        logits = out.logits.cpu()  # the scoring below indexes with CPU tensors
    top_ids, top_lp, mask = _teacher_tensors(batch, torch)
    # Logits at row i, position P-1+t predict the teacher's token t (right padding keeps P).
    rows, at = [], []
    for i, ((_, tgt), p) in enumerate(zip(batch, prompts, strict=True)):
        rows.extend(i * width + len(p) - 1 + j for j in range(len(tgt.ids)))
        at.extend((i, j) for j in range(len(tgt.ids)))
    b, t = torch.tensor(at).T
    from apidistill.train.token_loss import TokenTargets

    labels = torch.tensor([x for _, tgt in batch for x in tgt.ids])
    with torch.inference_mode():
        scores = score_fn(
            logits,
            torch.tensor(rows),
            TokenTargets(labels, top_ids[b, t], top_lp[b, t], mask[b, t]),
        )
    result, start = [], 0
    for rec, tgt in batch:
        end = start + len(tgt.ids)
        hits = scores.top1[start:end].numpy().astype(float)
        kept = scores.kl[start:end].double().numpy()[mask[b[start:end], t[start:end]].numpy()]
        result.append(TokenScores(rec.id, kept, hits, aligned=tgt.aligned))
        start = end
    return result


def heldout_kl(
    model_spec: str,
    records: Sequence[Record],
    *,
    adapter: str | None = None,
    system_prompt: str | None = None,
    batch_size: int = 4,
    samples: int = 1000,
    seed: int = 0,
    render_prompt: RenderFn | None = None,
    same_vocab: bool = True,
    device: str = "auto",
    dtype: str = "auto",
) -> KLSummary:
    """Load ``model_spec`` (+ ``adapter``) and measure its KL to the teacher on ``records``.

    ``same_vocab=False`` says the teacher's tokenizer is another one (its ids, if any, are
    not student ids): every record is then scored on byte-aligned positions.
    ``device``/``dtype``: ``auto`` is bfloat16 on a CUDA GPU, float32 on CPU
    (:func:`apidistill.devices.select_device`). Raises :class:`NothingToScore` when no
    record can be scored.
    """
    from apidistill.devices import select_device
    from apidistill.model_loading import load_model, load_tokenizer
    from apidistill.train.align import StudentVocab

    _, render = _defaults(render_prompt)
    tokenizer = load_tokenizer(model_spec)
    dev, dt = select_device(device, dtype, key="eval.device")
    model = load_model(model_spec, adapter=adapter, dtype=dt).to(dev)
    scores = score_records(
        model,
        tokenizer,
        records,
        system_prompt=system_prompt,
        batch_size=batch_size,
        render_prompt=render,
        vocab=StudentVocab.build(tokenizer),
        same_vocab=same_vocab,
    )
    return summarize_scores(scores, len(records), samples=samples, seed=seed)


def summarize_scores(
    scores: Sequence[TokenScores], total_records: int, *, samples: int = 1000, seed: int = 0
) -> KLSummary:
    if not scores:
        raise NothingToScore(
            f"none of the {total_records} test records has teacher token ids or logprob "
            "tokens that spell its answer, so held-out KL has nothing to score",
            hint="harvest with logprobs: true (top_logprobs: 20) from a teacher that returns "
            "them; the other metrics do not need them",
        )
    kl, top1 = token_kl_estimates(
        [s.kl for s in scores], [s.top1 for s in scores], samples=samples, seed=seed
    )
    return KLSummary(
        kl_nats_per_token=kl,
        top1_agreement=top1,
        records_scored=len(scores),
        records_skipped=total_records - len(scores),
        positions=int(sum(s.top1.size for s in scores)),
        scored_positions=int(sum(s.kl.size for s in scores)),
        records_aligned=sum(s.aligned for s in scores),
    )
