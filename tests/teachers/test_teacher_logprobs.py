"""Logprob normalization: one table row per provider quirk, plus a fuzz test on garbage."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apidistill.errors import DataError, TeacherError, TeacherUnavailable
from apidistill.teachers.logprobs import (
    MIN_LOGPROB,
    TokenVocab,
    extract_choice_logprobs,
    normalize_chat_logprobs,
    normalize_completion_logprobs,
)


def entry(token, logprob, top=(), bytes_=..., **extra):
    e = {"token": token, "logprob": logprob, "top_logprobs": list(top), **extra}
    if bytes_ is not ...:
        e["bytes"] = bytes_
    elif isinstance(token, str):
        e["bytes"] = list(token.encode())
    return e


def alt(token, logprob, **extra):
    return {"token": token, "logprob": logprob, "bytes": list(token.encode()), **extra}


def chat1(e, k=5, quirks=frozenset(), vocab=None):
    out = normalize_chat_logprobs([e], top_k=k, quirks=quirks, vocab=vocab)
    assert out.tokens is not None and len(out.tokens) == 1
    return out.tokens[0], out


def test_openai_chat_shape():
    pos, _ = chat1(entry("Hi", -0.1, [alt("Hi", -0.1), alt("Hello", -2.5)]), k=2)
    assert (pos.token, pos.bytes, pos.logprob, pos.token_id) == ("Hi", [72, 105], -0.1, None)
    assert [(t.token, t.logprob) for t in pos.top] == [("Hi", -0.1), ("Hello", -2.5)]


def test_top_sorted_descending_and_clipped_to_k():
    top = [alt("a", -3.0), alt("b", -0.5), alt("c", -1.0), alt("d", -0.7)]
    pos, _ = chat1(entry("b", -0.5, top), k=2)
    assert [t.token for t in pos.top] == ["b", "d"]


def test_masked_values_dropped_from_top_and_clamped_on_sampled():
    top = [
        alt("ok", -0.2),
        alt("masked", -9999.0),
        alt("inf", -math.inf),
        alt("nan", math.nan),
        alt("lowest", -3.4028234663852886e38),  # llama.cpp's p = 0
        alt("pos", 1e-6),
    ]
    pos, out = chat1(entry("x", -9999.0, top), k=10)
    assert pos.logprob == MIN_LOGPROB and out.clamped == 1
    assert (out.invalid, out.dropped) == (1, 4)  # counted, not hidden (issue 19 item 8)
    assert [(t.token, t.logprob) for t in pos.top] == [("pos", 0.0), ("ok", -0.2)]
    nan_pos, out2 = chat1(entry("y", math.nan), k=0)
    assert nan_pos.logprob == MIN_LOGPROB and out2.clamped == 1 and out2.invalid == 1
    positive, out3 = chat1(entry("z", 0.25), k=0)
    assert positive.logprob == 0.0 and out3.clamped == 1
    assert (out3.invalid, out3.dropped) == (0, 0)  # rounding noise, not a missing value
    zero, out4 = chat1(entry("w", 0.0), k=0)  # DeepSeek's 0: p = 1, valid
    assert zero.logprob == 0.0 and out4.clamped == 0


def test_duplicate_tokens_keep_max_llamacpp_sampled_appended():
    # llama.cpp appends the sampled token to the top list even when it is not in the top k.
    top = [alt("a", -0.1), alt("b", -0.9), alt("c", -1.2), alt("z", -4.0), alt("a", -0.3)]
    pos, _ = chat1(entry("z", -4.0, top), k=3, quirks=frozenset({"sampled_in_top"}))
    assert [(t.token, t.logprob) for t in pos.top] == [("a", -0.1), ("b", -0.9), ("c", -1.2)]
    assert pos.token == "z"


def test_llamacpp_ids_empty_tokens_and_null_bytes():
    # A partial UTF-8 character: llama.cpp sends "" as text with the real bytes, or null bytes.
    e = {
        "id": 226,
        "token": "",
        "bytes": [0xE2, 0x80],
        "logprob": -0.4,
        "top_logprobs": [
            {"id": 226, "token": "", "bytes": [0xE2, 0x80], "logprob": -0.4},
            {"id": 11, "token": ",", "bytes": None, "logprob": -1.5},
            {"id": 99, "token": "", "bytes": None, "logprob": -2.0},
        ],
    }
    pos, _ = chat1(e, k=5)
    assert (pos.token_id, pos.token, pos.bytes) == (226, "", [0xE2, 0x80])
    assert [(t.token_id, t.bytes) for t in pos.top] == [(226, [0xE2, 0x80]), (11, [44]), (99, None)]


def test_replacement_char_text_has_unknown_bytes():
    pos, _ = chat1(entry("\ufffd", -1.0, bytes_=None), k=0)
    assert pos.bytes is None and pos.token == "\ufffd"


def test_post_sampling_probs_are_converted():
    e = {
        "id": 5,
        "token": "a",
        "bytes": [97],
        "prob": 0.5,
        "top_probs": [
            {"id": 5, "token": "a", "bytes": [97], "prob": 0.5},
            {"id": 6, "token": "b", "bytes": [98], "prob": 0.0},
        ],
    }
    pos, _ = chat1(e, k=5)
    assert pos.logprob == pytest.approx(math.log(0.5))
    assert [t.token_id for t in pos.top] == [5]  # p = 0 carries nothing


def test_vllm_token_id_strings_with_and_without_vocab():
    e = {
        "token": "token_id:2",
        "logprob": -0.1,
        "bytes": list(b"token_id:2"),
        "top_logprobs": [
            {"token": "token_id:2", "logprob": -0.1, "bytes": list(b"token_id:2")},
            {"token": "token_id:3", "logprob": -2.0, "bytes": list(b"token_id:3")},
        ],
    }
    q = frozenset({"token_id_strings"})
    bare, _ = chat1(e, k=5, quirks=q)
    assert (bare.token_id, bare.token, bare.bytes) == (2, "", None)
    assert [t.token_id for t in bare.top] == [2, 3]
    vocab = TokenVocab({2: b" hi", 3: b"\xe2\x80"})
    full, _ = chat1(e, k=5, quirks=q, vocab=vocab)
    assert (full.token_id, full.token, full.bytes) == (2, " hi", list(b" hi"))
    assert full.top[1].bytes == [0xE2, 0x80]
    # Without the quirk a token that merely looks like an id is just text.
    plain, _ = chat1(e, k=5)
    assert plain.token_id is None and plain.token == "token_id:2"


def test_vocab_fills_ids_from_bytes_and_skips_ambiguous():
    vocab = TokenVocab({1: b"a", 2: b"b", 3: b"b"})
    pos, _ = chat1(entry("a", -0.1, [alt("a", -0.1), alt("b", -1.0)]), k=5, vocab=vocab)
    assert pos.token_id == 1
    assert [t.token_id for t in pos.top] == [1, None]  # "b" has two ids: left unknown


def test_vocab_from_byte_level_and_sentencepiece_pieces():
    byte_level = TokenVocab.from_pieces({"Ġhello": 0, "a": 1, "Ċ": 2, "<|endoftext|>": 3})
    assert byte_level.id_to_bytes[0] == b" hello" and byte_level.id_to_bytes[2] == b"\n"
    sp = TokenVocab.from_pieces({"▁hello": 0, "<0x0A>": 1, "é": 2})
    assert sp.id_to_bytes[0] == b" hello" and sp.id_to_bytes[1] == b"\n"
    assert sp.id_to_bytes[2] == "é".encode()


def test_legacy_completions_shape():
    payload = {
        "tokens": [" a", " b"],
        "token_logprobs": [-0.2, None],
        "top_logprobs": [{" a": -0.2, " c": -1.0, " bad": -9999.0}, None],
        "text_offset": [0, 2],
    }
    out = normalize_completion_logprobs(payload, top_k=5)
    assert out.tokens is not None
    a, b = out.tokens
    assert (a.token, a.bytes, [t.token for t in a.top]) == (" a", [32, 97], [" a", " c"])
    assert b.logprob == MIN_LOGPROB and b.top == [] and out.clamped == 1


def test_legacy_completions_llamacpp_answers_in_chat_shape():
    out = normalize_completion_logprobs({"content": [entry("x", -0.5)]}, top_k=1)
    assert out.tokens is not None and out.tokens[0].token == "x"


def test_missing_logprobs_has_reason_and_not_requested_is_silent():
    choice = {"message": {"content": "hi"}, "logprobs": None}
    got = extract_choice_logprobs(choice, requested=True, top_k=5, chat=True, model="o3")
    assert got.tokens is None and "o3" in (got.missing_reason or "")
    quiet = extract_choice_logprobs(choice, requested=False, top_k=5, chat=True)
    assert quiet.tokens is None and quiet.missing_reason is None
    refusal = extract_choice_logprobs(
        {"logprobs": {"content": None, "refusal": []}}, requested=True, top_k=5, chat=True
    )
    assert refusal.tokens is None and refusal.missing_reason


@pytest.mark.parametrize(
    "payload",
    [
        "nope",
        [1, 2],
        [{"token": 5, "logprob": -1.0}],
        [{"token": "a", "logprob": "high"}],
        [{"token": "a", "logprob": -1.0, "top_logprobs": "x"}],
        [None],
    ],
)
def test_structural_garbage_is_teacher_unavailable(payload):
    with pytest.raises(TeacherUnavailable) as info:
        normalize_chat_logprobs(payload, top_k=5)
    assert info.value.maybe_billed is True


def test_legacy_length_mismatch_is_teacher_unavailable():
    with pytest.raises(TeacherUnavailable, match="token_logprobs"):
        normalize_completion_logprobs({"tokens": ["a"], "token_logprobs": []}, top_k=1)


# ----------------------------------------------------------------------------- fuzz

_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=st.characters(blacklist_categories=()), max_size=8),
    st.sampled_from(["token_id:12", "token_id:x", "\udc80", "\ufffd", "", "-9999"]),
)
_json = st.recursive(
    _scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(
            st.sampled_from(
                [
                    "token",
                    "logprob",
                    "bytes",
                    "top_logprobs",
                    "id",
                    "prob",
                    "top_probs",
                    "content",
                    "tokens",
                    "token_logprobs",
                    "x",
                ]
            ),
            inner,
            max_size=6,
        ),
    ),
    max_leaves=40,
)
_entryish = st.fixed_dictionaries(
    {},
    optional={
        "token": _scalar,
        "logprob": _scalar,
        "bytes": st.one_of(_scalar, st.lists(st.integers(-5, 300), max_size=6)),
        "id": _scalar,
        "top_logprobs": st.one_of(_scalar, st.lists(_json, max_size=8)),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.one_of(_json, st.lists(_entryish, max_size=8)), k=st.integers(0, 20))
def test_fuzz_chat_never_raises_foreign_errors(payload, k):
    vocab = TokenVocab({12: b"ab", 1: b"a"})
    try:
        out = normalize_chat_logprobs(
            payload, top_k=k, quirks=frozenset({"token_id_strings"}), vocab=vocab
        )
    except (TeacherError, DataError):
        return
    assert out.tokens is not None
    for pos in out.tokens:
        assert math.isfinite(pos.logprob) and MIN_LOGPROB <= pos.logprob <= 0.0
        assert len(pos.top) <= k
        values = [t.logprob for t in pos.top]
        assert values == sorted(values, reverse=True)
        assert all(math.isfinite(v) and v <= 0.0 for v in values)
        pos.model_dump_json()  # storable: no lone surrogates


@settings(max_examples=200, deadline=None)
@given(payload=_json, k=st.integers(0, 20))
def test_fuzz_legacy_never_raises_foreign_errors(payload, k):
    try:
        out = normalize_completion_logprobs(payload, top_k=k)
    except (TeacherError, DataError):
        return
    assert out.tokens is not None
    assert all(MIN_LOGPROB <= p.logprob <= 0.0 and len(p.top) <= k for p in out.tokens)


def test_huge_arrays_are_fine():
    payload = [entry("a", -0.1, [alt(f"t{i}", -float(i)) for i in range(2000)])] * 100
    out = normalize_chat_logprobs(payload, top_k=20)
    assert out.tokens is not None and len(out.tokens) == 100
    assert all(len(p.top) == 20 for p in out.tokens)


@settings(max_examples=200, deadline=None)
@given(body=_json, chat=st.booleans(), requested=st.booleans())
def test_fuzz_whole_openai_body_only_teacher_errors(body, chat, requested):
    from apidistill.teachers.openai import parse_openai_body

    try:
        completion, _ = parse_openai_body(
            body, chat=chat, logprobs_requested=requested, top_k=5, provider="p", model="m"
        )
    except TeacherError as exc:
        assert exc.maybe_billed is True  # a 200 we cannot read may still have been billed
        return
    assert isinstance(completion.text, str)


@settings(max_examples=200, deadline=None)
@given(body=_json)
def test_fuzz_whole_anthropic_body_only_teacher_errors(body):
    from apidistill.teachers.anthropic import parse_anthropic_body

    try:
        completion = parse_anthropic_body(body, model="m")
    except TeacherError as exc:
        assert exc.maybe_billed is True
        return
    assert completion.usage.input_tokens >= completion.usage.cached_input_tokens
