"""Held-out KL on teacher tokens with a tiny random Llama (root conftest's ``tiny_llama``).

``render_student_prompt`` (apidistill.train.collate) has a pinned signature; until it lands
these tests pass their own renderer, which is also what makes the prompt ids predictable here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from apidistill.errors import EvalError
from apidistill.eval.scoring import score_records, summarize_scores, teacher_targets
from apidistill.records import Message, Record, TokenLogprob, TopLogprob

PROMPT = [1, 2, 3]


class _Tok:
    pad_token_id = 0


def _render(tokenizer, messages: list[Message], system_prompt: str | None) -> list[int]:
    return ([7] if system_prompt else []) + PROMPT


def _greedy(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


def _student_logprobs(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        logits = model(torch.tensor([prompt + completion])).logits[0]
    return logits[len(prompt) - 1 : len(prompt) - 1 + len(completion)].log_softmax(-1)


def _record(rid: str, ids: list[int], tops: list[list[tuple[int, float]]]) -> Record:
    return Record(
        id=rid,
        messages=[Message(role="user", content="ticket")],
        completion="x",
        logprobs=[
            TokenLogprob(
                token_id=t,
                token=str(t),
                logprob=top[0][1] if top else 0.0,
                top=[TopLogprob(token_id=i, token=str(i), logprob=lp) for i, lp in top],
            )
            for t, top in zip(ids, tops, strict=True)
        ],
    )


def test_student_scored_against_itself_has_zero_kl_and_full_top1(tiny_llama) -> None:
    ids = _greedy(tiny_llama, PROMPT, 4)
    lp = _student_logprobs(tiny_llama, PROMPT, ids)
    # The teacher's "top-k" is the student's whole distribution: no tail, KL must be 0.
    tops = [[(i, float(lp[t, i])) for i in range(lp.shape[-1])] for t in range(len(ids))]
    scores = score_records(tiny_llama, _Tok(), [_record("a", ids, tops)], render_prompt=_render)
    assert len(scores) == 1
    assert scores[0].kl == pytest.approx(np.zeros(4), abs=1e-5)
    assert scores[0].top1.tolist() == [1.0, 1.0, 1.0, 1.0]


def test_kl_matches_the_top_k_plus_tail_formula(tiny_llama) -> None:
    ids = [5, 9, 17]
    p = [0.5, 0.2, 0.1]  # teacher tail = 0.2 at every position
    tops = [
        [(a, math.log(p[0])), (b, math.log(p[1])), (c, math.log(p[2]))]
        for a, b, c in [(5, 6, 7), (9, 1, 2), (17, 30, 40)]
    ]
    lq = _student_logprobs(tiny_llama, PROMPT, ids)
    want = []
    for t, top in enumerate(tops):
        q = [math.exp(float(lq[t, i])) for i, _ in top]
        kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
        kl += 0.2 * math.log(0.2 / (1 - sum(q)))
        want.append(kl)
    # A second record in the same batch with a different length exercises the padding.
    short = _record("b", ids[:1], tops[:1])
    scores = score_records(
        tiny_llama, _Tok(), [_record("a", ids, tops), short], render_prompt=_render, batch_size=2
    )
    assert scores[0].kl == pytest.approx(want, rel=1e-4)
    assert scores[1].kl == pytest.approx(want[:1], rel=1e-4)
    argmax = lq.argmax(-1).tolist()
    assert scores[0].top1.tolist() == [float(a == b) for a, b in zip(argmax, ids, strict=True)]
    summary = summarize_scores(scores, total_records=3, samples=200, seed=0)
    assert summary.kl_nats_per_token.value == pytest.approx((sum(want) + want[0]) / 4, rel=1e-4)
    assert summary.records_scored == 2 and summary.records_skipped == 1 and summary.positions == 4


def test_system_prompt_changes_what_the_student_sees(tiny_llama) -> None:
    ids = [5, 9]
    tops = [[(5, math.log(0.6))], [(9, math.log(0.6))]]
    rec = _record("a", ids, tops)
    plain = score_records(tiny_llama, _Tok(), [rec], render_prompt=_render)[0].kl
    with_system = score_records(
        tiny_llama, _Tok(), [rec], system_prompt="be brief", render_prompt=_render
    )[0].kl
    assert not np.allclose(plain, with_system)


def test_positions_without_top_are_left_out_of_kl_but_not_top1(tiny_llama) -> None:
    rec = _record("a", [5, 9], [[(5, math.log(0.6))], []])
    (s,) = score_records(tiny_llama, _Tok(), [rec], render_prompt=_render)
    assert s.kl.shape == (1,) and s.top1.shape == (2,)


def test_records_without_token_ids_are_skipped_and_none_is_an_error(tiny_llama) -> None:
    no_ids = Record(id="x", messages=[Message(role="user", content="t")], completion="c")
    assert teacher_targets(no_ids) is None
    assert score_records(tiny_llama, _Tok(), [no_ids], render_prompt=_render) == []
    with pytest.raises(EvalError, match="none of the 1 test records has teacher token ids"):
        summarize_scores([], total_records=1)


def test_teacher_ids_outside_the_student_vocab_are_a_clear_error(tiny_llama) -> None:
    rec = _record("big", [500], [[(500, math.log(0.9))]])
    with pytest.raises(EvalError, match="share a tokenizer"):
        score_records(tiny_llama, _Tok(), [rec], render_prompt=_render)
