"""Cross-tokenizer alignment with two different tokenizers built in code."""

from __future__ import annotations

import pytest

from apidistill.records import TokenLogprob, TopLogprob
from apidistill.train.align import (
    StudentVocab,
    align_completion,
    number_split_difference,
    student_spans,
)

TEXT = "Order 1234 shipped"


def _split_tokenizer(pattern: str, words: list[str]):
    """A word-level tokenizer whose pieces are the regex matches (text is never lost)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<|im_end|>", *words])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<|im_end|>")


@pytest.fixture(scope="module")
def student():
    # digits one by one, words with their leading space
    words = ["Order", " 1", "2", "3", "4", " shipped", " Ord", "er", " Ship", "ped", "!"]
    return _split_tokenizer(r" ?[A-Za-z]+| ?\d|\S", words)


@pytest.fixture(scope="module")
def teacher_tok():
    # digits in pairs
    return _split_tokenizer(r" ?[A-Za-z]+| ?\d\d?|\S", ["Order", " 12", "34", " shipped"])


def _teacher_logprobs(teacher_tok, text: str, alternatives: dict[str, list[tuple[str, float]]]):
    """API-style teacher tokens: strings (no ids), with top alternatives as strings."""
    enc = teacher_tok(text, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for s, e in enc["offset_mapping"]:
        piece = text[s:e]
        alts = alternatives.get(piece, [(piece, -0.1)])
        top = [TopLogprob(token=t, logprob=lp) for t, lp in alts]
        out.append(TokenLogprob(token=piece, logprob=alts[0][1], top=top))
    return out


def test_hand_checked_alignment(student, teacher_tok):
    vocab = StudentVocab.build(student)
    ids, starts = student_spans(student, TEXT, vocab)
    assert student.convert_ids_to_tokens(ids) == ["Order", " 1", "2", "3", "4", " shipped"]
    assert starts == [0, 5, 7, 8, 9, 10]
    teacher = _teacher_logprobs(
        teacher_tok,
        TEXT,
        {
            "Order": [("Order", -0.2), (" Ord", -2.0), ("Ord", -3.0)],  # "Ord" → no student id
            " shipped": [(" shipped", -0.05), (" Ship", -3.5)],
        },
    )
    assert [t.token for t in teacher] == ["Order", " 12", "34", " shipped"]
    al = align_completion(TEXT, teacher, student, vocab, top_k=20)
    # teacher starts {0, 5, 8, 10}, student starts {0, 5, 7, 8, 9, 10}, end 18
    assert al.shared == [0, 5, 8, 10, 18]
    assert al.teacher_text_ok
    sid = {t: i for t, i in student.get_vocab().items()}
    # supervised: "Order" (teacher "Order" is one student token) and " shipped"
    assert al.topk[0] == [(sid["Order"], -0.2), (sid[" Ord"], -2.0)]  # "Ord" left to the tail
    assert al.topk[5] == [(sid[" shipped"], -0.05), (sid[" Ship"], -3.5)]
    # " 12" and "34" start on shared boundaries but are not single student tokens
    assert al.topk[1] == [] and al.topk[3] == []
    assert al.topk[2] == [] and al.topk[4] == []  # not teacher boundaries
    assert al.supervised == 2
    assert al.number_split == "'1234': teacher ['12', '34'], student ['1', '2', '3', '4']"


def test_identical_tokenizations_supervise_everything(student):
    vocab = StudentVocab.build(student)
    teacher = _teacher_logprobs(student, TEXT, {})
    al = align_completion(TEXT, teacher, student, vocab)
    assert al.supervised == len(al.student_ids) == 6
    assert al.shared == [0, 5, 7, 8, 9, 10, 18]
    assert al.number_split is None


def test_trailing_end_of_turn_and_empty_tokens_are_ignored(student, teacher_tok):
    vocab = StudentVocab.build(student)
    teacher = _teacher_logprobs(teacher_tok, TEXT, {})
    teacher.insert(1, TokenLogprob(token="", bytes=None, logprob=-0.5))  # llama.cpp quirk
    teacher.append(TokenLogprob(token="<|eot_id|>", logprob=-0.01))  # end-of-turn entry
    al = align_completion(TEXT, teacher, student, vocab)
    assert al.teacher_text_ok and al.supervised == 2


def test_teacher_bytes_that_do_not_spell_the_text_supervise_nothing(student, teacher_tok):
    vocab = StudentVocab.build(student)
    teacher = _teacher_logprobs(teacher_tok, "Order 1234 shipped!", {})
    al = align_completion("Order 1235 shipped", teacher, student, vocab)
    assert not al.teacher_text_ok and al.supervised == 0
    assert len(al.student_ids) == 6  # the sequence loss still gets its targets


def test_bytes_field_wins_over_token_text(student):
    vocab = StudentVocab.build(student)
    # a provider whose token strings are mangled but whose bytes are right
    teacher = [
        TokenLogprob(
            token="Ord?",
            bytes=list(b"Order"),
            logprob=-0.1,
            top=[TopLogprob(token="x", bytes=list(b"Order"), logprob=-0.1)],
        ),
        TokenLogprob(token=" shipped", logprob=-0.1),
    ]
    al = align_completion("Order shipped", teacher, student, vocab)
    assert al.topk[0] == [(student.get_vocab()["Order"], -0.1)]


def test_byte_level_vocab_decodes_smollm2_tokens(smollm2):
    vocab = StudentVocab.build(smollm2)
    text = "Préçis 1234567 €12.50\n  ok"
    ids, starts = student_spans(smollm2, text, vocab)
    assert b"".join(vocab.token_bytes[i] for i in ids) == text.encode()
    assert starts[0] == 0 and len(starts) == len(ids)
    assert vocab.index[b" price"] == smollm2.convert_tokens_to_ids("Ġprice")


def test_number_split_difference_none_when_equal():
    raw = b"id 12345"
    assert number_split_difference(raw, [0, 2, 3, 6], [0, 2, 3, 6]) is None
    assert "12345" in (number_split_difference(raw, [0, 2, 3, 6], [0, 2, 3, 4]) or "")
