"""One held-out KL (issue #21 item 4): training's ``teacher_fit`` and eval's
``score_records`` measure the same number on the same records, through the one
:func:`apidistill.train.token_loss.teacher_forced_scores` (tested there against a
full-vocabulary reference)."""

from __future__ import annotations

import numpy as np
import pytest


def test_teacher_fit_and_eval_scoring_give_the_same_kl(tiny_chat_dir, tiny_teacher_records):
    from transformers import LlamaForCausalLM

    from apidistill.eval.scoring import score_records
    from apidistill.model_loading import load_tokenizer
    from apidistill.train.align import StudentVocab
    from apidistill.train.heldout import teacher_fit

    tok = load_tokenizer(str(tiny_chat_dir))
    student = LlamaForCausalLM.from_pretrained(tiny_chat_dir).eval()
    records = tiny_teacher_records[:6]
    fit = teacher_fit(student, tok, records, system_prompt=None, top_k=5, batch_size=4)
    scores = score_records(student, tok, records, vocab=StudentVocab.build(tok), batch_size=3)
    assert len(scores) == len(records)
    kl = np.concatenate([s.kl for s in scores])
    assert fit["kl"] > 0
    assert fit["kl"] == pytest.approx(float(kl.mean()), rel=1e-5)
    assert fit["tokens"] == sum(len(r.logprobs or []) for r in records)
