"""Held-out KL for teachers whose tokens are not the student's (issue 18, item 1).

An API teacher (``o200k_base`` tokens, ``bytes`` but no ids) is scored on the positions where
byte alignment (:mod:`apidistill.train.align`) finds the same token in both tokenizations,
with the share of scored positions reported; a teacher without logprobs yields a one-line
reason instead of an error. The student is a tiny random Llama over SmolLM2's real tokenizer,
so alignment, prompt rendering and the vocabulary are the real ones.
"""

from __future__ import annotations

import math

import pytest
import torch

from apidistill.eval.scoring import (
    NothingToScore,
    kl_unavailable_reason,
    record_targets,
    score_records,
    summarize_scores,
)
from apidistill.records import Message, Provenance, Record, TokenLogprob, TopLogprob
from apidistill.testing.o200k_teacher import o200k_tokens
from apidistill.train.align import StudentVocab, align_completion
from apidistill.train.collate import record_messages, render_student_prompt

ANSWER = "order_id: 5041-6582\nproduct: Café Kettle"


@pytest.fixture(scope="module")
def smol():
    """SmolLM2's tokenizer and vocabulary, and a tiny random Llama of the same vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from apidistill.model_loading import load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
    )
    return tok, StudentVocab.build(tok), LlamaForCausalLM(cfg).eval()


def _o200k_record(rid: str = "a", answer: str = ANSWER, *, ids: list[int] | None = None) -> Record:
    """A record as harvested from OpenAI: o200k token bytes, no ids, top-3 per position."""
    toks = o200k_tokens(answer)
    logprobs = []
    for j, b in enumerate(toks):
        top = [TopLogprob(token=b.decode("utf-8", "replace"), bytes=list(b), logprob=-0.4)]
        top += [
            TopLogprob(token=alt, bytes=list(alt.encode()), logprob=-2.0 - k)
            for k, alt in enumerate([" the", "order"])
        ]
        logprobs.append(
            TokenLogprob(
                token=b.decode("utf-8", "replace"),
                bytes=list(b),
                logprob=-0.4,
                token_id=ids[j] if ids else None,
                top=top,
            )
        )
    return Record(
        id=rid,
        messages=[Message(role="user", content="ticket text")],
        completion=answer,
        logprobs=logprobs,
        provenance=Provenance(provider="openai", model="gpt-4o-mini"),
    )


def _expected_kl(model, tok, vocab, rec: Record) -> list[float]:
    """top-k + tail KL (teacher ‖ student) at every byte-aligned position, by hand."""
    al = align_completion(rec.completion, rec.logprobs, tok, vocab, top_k=20)
    prompt = render_student_prompt(tok, record_messages(rec), None)
    with torch.inference_mode():
        logits = model(torch.tensor([prompt + al.student_ids])).logits[0]
    lq = logits[len(prompt) - 1 : len(prompt) - 1 + len(al.student_ids)].log_softmax(-1)
    out = []
    for t, top in enumerate(al.topk):
        if not top:
            continue
        p = [math.exp(lp) for _, lp in top]
        q = [math.exp(float(lq[t, i])) for i, _ in top]
        kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
        tail_p, tail_q = 1 - sum(p), 1 - sum(q)
        out.append(kl + tail_p * math.log(tail_p / tail_q))
    return out


def test_an_api_teachers_answer_is_scored_on_byte_aligned_positions(smol) -> None:
    tok, vocab, model = smol
    rec = _o200k_record()
    (s,) = score_records(model, tok, [rec], vocab=vocab)
    al = align_completion(rec.completion, rec.logprobs, tok, vocab)
    assert s.aligned
    assert s.top1.size == len(al.student_ids)  # every student position counts for top-1
    assert 0 < s.kl.size == al.supervised < len(al.student_ids)  # numbers split differently
    assert s.kl.tolist() == pytest.approx(_expected_kl(model, tok, vocab, rec), rel=1e-4)
    summary = summarize_scores([s], total_records=1, samples=200)
    assert summary.records_aligned == 1 and summary.records_skipped == 0
    assert summary.coverage == pytest.approx(al.supervised / len(al.student_ids))
    assert summary.kl_nats_per_token.value == pytest.approx(float(s.kl.mean()), rel=1e-6)


def test_without_the_student_vocabulary_ids_less_records_stay_unscored(smol) -> None:
    tok, _, model = smol
    assert score_records(model, tok, [_o200k_record()]) == []


def test_ids_from_another_vocabulary_are_aligned_by_bytes_not_read_as_student_ids(smol) -> None:
    tok, vocab, model = smol
    # in-range ids that are not SmolLM2's tokens of this answer (another model's tokenizer)
    wrong = _o200k_record(ids=list(range(100, 100 + len(o200k_tokens(ANSWER)))))
    target = record_targets(wrong, tok, vocab)
    assert target is not None and target.aligned
    (s,) = score_records(model, tok, [wrong], vocab=vocab)
    assert s.aligned and s.kl.tolist() == pytest.approx(
        _expected_kl(model, tok, vocab, wrong), rel=1e-4
    )


def test_student_ids_that_spell_the_answer_are_used_as_they_are(smol) -> None:
    tok, vocab, _ = smol
    ids = tok(ANSWER, add_special_tokens=False)["input_ids"]
    pieces = [vocab.token_bytes[i] for i in ids]
    rec = Record(
        id="same",
        messages=[Message(role="user", content="t")],
        completion=ANSWER,
        logprobs=[
            TokenLogprob(
                token=p.decode("utf-8", "replace"),
                token_id=i,
                logprob=-0.1,
                top=[TopLogprob(token="x", token_id=i, logprob=-0.1)],
            )
            for i, p in zip(ids, pieces, strict=True)
        ],
    )
    direct = record_targets(rec, tok, vocab)
    assert direct is not None and not direct.aligned and direct.ids == ids
    # a run file naming another teacher tokenizer scores the same record by bytes
    forced = record_targets(rec, tok, vocab, same_vocab=False)
    assert forced is not None and forced.aligned and forced.ids == ids


def test_logprob_tokens_that_do_not_spell_the_answer_are_skipped(smol) -> None:
    tok, vocab, model = smol
    edited = _o200k_record().model_copy(update={"completion": "order_id: 1\nproduct: Mug"})
    assert record_targets(edited, tok, vocab) is None
    assert score_records(model, tok, [edited], vocab=vocab) == []
    with pytest.raises(NothingToScore, match="none of the 1 test records"):
        summarize_scores([], total_records=1)


def test_a_teacher_without_logprobs_gets_one_line_saying_why() -> None:
    rec = Record(
        id="c",
        messages=[Message(role="user", content="t")],
        completion="order_id: 1",
        provenance=Provenance(provider="anthropic", model="claude-haiku-4-5"),
    )
    why = kl_unavailable_reason([rec, rec.model_copy(update={"id": "d"})])
    assert why is not None and "\n" not in why
    assert "anthropic:claude-haiku-4-5" in why and "none of the 2 test answers" in why
    assert "verdict uses agreement, task score and latency" in why
    assert kl_unavailable_reason([_o200k_record()]) is None
