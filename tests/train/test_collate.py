"""Prompt rendering, assistant-only labels, teacher targets on the right positions, packing."""

from __future__ import annotations

import math

import pytest
import torch

from apidistill.errors import TrainingError
from apidistill.records import Message, Record, TokenLogprob, TopLogprob
from apidistill.train.align import StudentVocab
from apidistill.train.collate import (
    DistillCollator,
    build_examples,
    pack_examples,
    render_student_prompt,
)

from .helpers import char_tokenizer

USER = [Message(role="user", content="Order #123: blue mug")]


def test_render_uses_template_default_when_no_system_prompt(smollm2):
    ids = render_student_prompt(smollm2, USER, None)
    text = smollm2.decode(ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>assistant\n")
    # identical to what a server applying the chat template to the same messages renders
    served = smollm2.apply_chat_template(
        [m.model_dump() for m in USER], tokenize=False, add_generation_prompt=True
    )
    assert ids == smollm2(served, add_special_tokens=False)["input_ids"]


def test_render_with_system_prompt_and_existing_system_turn(smollm2):
    text = smollm2.decode(render_student_prompt(smollm2, USER, "Extract order_id."))
    assert text.startswith("<|im_start|>system\nExtract order_id.<|im_end|>\n<|im_start|>user")
    assert "SmolLM" not in text
    own = [Message(role="system", content="Mine."), *USER]
    text = smollm2.decode(render_student_prompt(smollm2, own, "Extract order_id."))
    assert "Mine." in text and "Extract" not in text


def test_no_chat_template_is_a_training_error():
    tok = char_tokenizer(chat_template=None)
    with pytest.raises(TrainingError, match="no chat template"):
        render_student_prompt(tok, USER, None)


def _record(tok, completion: str, *, with_eot: bool, top_k: int = 3) -> Record:
    """A same-vocabulary teacher record with ids, bytes and made-up alternatives."""
    vocab = StudentVocab.build(tok)
    ids = tok(completion, add_special_tokens=False)["input_ids"]
    if with_eot:
        ids = [*ids, tok.eos_token_id]
    entries = []
    for j, i in enumerate(ids):
        alts = [i, *(a for a in (5, 6, 7) if a != i)][:top_k]
        top = [
            TopLogprob(token_id=a, token="?", logprob=-0.1 * (n + 1) - j)
            for n, a in enumerate(alts)
        ]
        raw = vocab.token_bytes[i]
        entries.append(
            TokenLogprob(
                token_id=i,
                token=(raw or b"").decode(),
                bytes=list(raw) if raw else None,
                logprob=top[0].logprob,
                top=top,
            )
        )
    return Record(id="r1", messages=USER, completion=completion, logprobs=entries)


@pytest.mark.parametrize("with_eot", [False, True])
def test_labels_cover_only_the_answer_and_targets_sit_on_their_tokens(smollm2, with_eot):
    rec = _record(smollm2, "order_id: 123", with_eot=with_eot)
    built = build_examples(
        [rec], smollm2, system_prompt=None, max_length=256, top_k=3, with_kd=True
    )
    ex = built.examples[0]
    prompt = render_student_prompt(smollm2, USER, None)
    answer = [t.token_id for t in rec.logprobs if t.token_id != smollm2.eos_token_id]
    assert ex.input_ids.tolist() == [*prompt, *answer, smollm2.eos_token_id]  # teacher ids
    assert (ex.labels[: len(prompt)] == -100).all()
    assert ex.labels[len(prompt) :].tolist() == [*answer, smollm2.eos_token_id]
    for j, tok in enumerate(rec.logprobs[: len(answer)]):
        pos = len(prompt) + j
        assert ex.topk_ids[pos].tolist() == [a.token_id for a in tok.top]
        assert ex.topk_logprobs[pos].tolist() == pytest.approx([a.logprob for a in tok.top])
    assert not ex.kd_mask[: len(prompt)].any()
    assert ex.kd_mask[len(prompt) : len(prompt) + len(answer)].all()
    # the end-of-turn position is KD-supervised only when the teacher listed it
    assert bool(ex.kd_mask[-1]) is with_eot
    assert built.supervised_share == 1.0


def test_sequence_kd_without_logprobs_tokenizes_the_completion(smollm2):
    rec = Record(id="a", prompt="hi", completion="order_id: 7")
    built = build_examples([rec], smollm2, system_prompt="S", max_length=128)
    ex = built.examples[0]
    want = smollm2("order_id: 7", add_special_tokens=False)["input_ids"] + [smollm2.eos_token_id]
    assert ex.labels[ex.labels != -100].tolist() == want
    assert ex.topk_ids is None


def test_teacher_ids_from_another_vocabulary_fall_back_to_byte_alignment(smollm2):
    rec = _record(smollm2, "order_id: 123", with_eot=False)
    for t in rec.logprobs:  # pretend a foreign vocabulary: same strings, other ids
        t.token_id = t.token_id + 7
    built = build_examples(
        [rec], smollm2, system_prompt=None, max_length=256, with_kd=True, top_k=3
    )
    ex = built.examples[0]
    want = smollm2("order_id: 123", add_special_tokens=False)["input_ids"]
    assert ex.labels[ex.labels != -100].tolist()[:-1] == want
    assert built.cross_tokenizer_records == 1


def test_long_prompts_dropped_and_long_answers_cut(smollm2):
    long_prompt = Record(id="p", prompt="word " * 200, completion="x")
    long_answer = Record(id="a", prompt="hi", completion="word " * 200)
    built = build_examples([long_prompt, long_answer], smollm2, system_prompt=None, max_length=64)
    assert built.dropped_long_prompt == 1 and built.truncated == 1
    assert len(built.examples) == 1 and len(built.examples[0]) == 64
    assert len(built.warnings) == 2 and "training.max_length" in built.warnings[0]


def test_collator_pads_right_and_masks_padding():
    tok = char_tokenizer()
    recs = [
        _record(tok, "ab", with_eot=False, top_k=2),
        _record(tok, "abcdef", with_eot=True, top_k=2),
    ]
    built = build_examples(recs, tok, system_prompt=None, max_length=128, top_k=2, with_kd=True)
    batch = DistillCollator(tok.pad_token_id, 2)(built.examples)
    n0 = len(built.examples[0])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["teacher_topk_ids"].shape == (*batch["input_ids"].shape, 2)
    assert (batch["input_ids"][0, n0:] == tok.pad_token_id).all()
    assert (batch["labels"][0, n0:] == -100).all() and (batch["attention_mask"][0, n0:] == 0).all()
    assert not batch["kd_mask"][0, n0:].any()
    assert torch.isinf(batch["teacher_topk_logprobs"][0, n0:]).all()


def test_packing_restarts_positions_and_blocks_attention(tiny_chat_dir):
    from transformers import AutoModelForCausalLM

    tok = char_tokenizer()
    recs = [
        Record(id=str(i), prompt=p, completion=c)
        for i, (p, c) in enumerate([("hi", "ab"), ("hello there", "xyz"), ("q", "r")])
    ]
    built = build_examples(recs, tok, system_prompt=None, max_length=128)
    packed = pack_examples(built.examples, max_length=128)
    assert len(packed) == 1
    row = packed[0]
    lens = [len(e) for e in built.examples]
    assert row.position_ids.tolist() == [i for n in lens for i in range(n)]
    batch = DistillCollator(tok.pad_token_id, 2)(packed)
    assert "attention_mask" not in batch
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_dir).eval()
    with torch.no_grad():
        packed_logits = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits
        second = built.examples[1].input_ids[None]
        alone = model(input_ids=second).logits
    start = lens[0]
    torch.testing.assert_close(
        packed_logits[0, start : start + lens[1]], alone[0], atol=1e-5, rtol=1e-4
    )


def test_padded_teacher_slots_are_minus_inf():
    tok = char_tokenizer()
    rec = _record(tok, "ab", with_eot=False, top_k=2)
    built = build_examples([rec], tok, system_prompt=None, max_length=64, top_k=5, with_kd=True)
    lps = built.examples[0].topk_logprobs
    answer_pos = built.examples[0].kd_mask.nonzero().flatten()
    assert all(math.isinf(v) for v in lps[answer_pos, 2:].flatten().tolist())


def test_cut_off_answer_gets_no_end_of_turn(smollm2):
    rec = Record(id="a", prompt="hi", completion="order_id: 7", finish_reason="length")
    built = build_examples([rec], smollm2, system_prompt=None, max_length=128)
    targets = built.examples[0].labels[built.examples[0].labels != -100].tolist()
    assert targets == smollm2("order_id: 7", add_special_tokens=False)["input_ids"]
    assert smollm2.eos_token_id not in targets
