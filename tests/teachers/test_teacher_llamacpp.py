"""The ``llamacpp`` profile: neutral sampling sent and kept, lossy token texts recovered.

The payloads here are built exactly as llama-cpp-python 0.3.36 builds them
(``llama_cpp/llama.py`` ``_create_completion``: each token is
``detokenize([id]).decode("utf-8", errors="ignore")``, the top list is a dict keyed by that
text with the sampled token written last; ``llama_chat_format.py``
``_convert_text_completion_logprobs_to_chat`` turns it into the chat shape with
``bytes: None``), over the real SmolLM2 vocabulary. The real server is exercised in
tests/conformance/test_llamacpp_teacher.py.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apidistill.records import GenerationParams, Message, TeacherRequest
from apidistill.teachers.logprobs import TokenVocab
from apidistill.teachers.openai import OpenAITeacher, build_openai_body, parse_openai_body
from apidistill.teachers.profiles import LLAMACPP_NEUTRAL_SAMPLING, server_profile
from apidistill.teachers.token_recovery import (
    lossy_text_warning,
    raw_token_constraints,
    recover_token_bytes,
)

LLAMACPP = server_profile("llamacpp")


@pytest.fixture(scope="module")
def smol():
    """The embedded SmolLM2 tokenizer and its vocabulary as bytes (what a GGUF run needs)."""
    from apidistill.model_loading import load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")
    return tok, TokenVocab.from_tokenizer(tok)


def _lossy(data: bytes) -> str:
    return data.decode("utf-8", errors="ignore")


def llama_cpp_python_choice(ids: list[int], vocab: TokenVocab, *, k: int = 5, seed: int = 0):
    """One chat choice as llama-cpp-python's server writes it for the sampled ``ids``."""
    rng = random.Random(seed)
    pool = sorted(vocab.id_to_bytes)
    content = []
    for tid in ids:
        sampled_lp = -rng.uniform(0.0, 0.3)
        others = [*rng.sample(pool, k - 1), rng.choice([228, 134, 179, 230, 131])]  # + a byte
        ranked = [(sampled_lp, tid)] + [(sampled_lp - 1.0 - j, o) for j, o in enumerate(others)]
        top = {_lossy(vocab.id_to_bytes[i]): lp for lp, i in ranked[:k]}
        token = _lossy(vocab.id_to_bytes[tid])
        top.update({token: sampled_lp})
        content.append(
            {
                "token": token,
                "bytes": None,
                "logprob": sampled_lp,
                "top_logprobs": [{"token": t, "logprob": v, "bytes": None} for t, v in top.items()],
            }
        )
    text = _lossy(b"".join(vocab.id_to_bytes[i] for i in ids))
    return {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "logprobs": {"content": content, "refusal": None},
        "finish_reason": "stop",
    }


def _parse(choice: dict, vocab: TokenVocab | None, *, quirks=LLAMACPP.capabilities.quirks):
    body = {"object": "chat.completion", "model": "smollm2", "choices": [choice]}
    completion, _ = parse_openai_body(
        body,
        chat=True,
        logprobs_requested=True,
        top_k=20,
        provider="openai_compatible",
        model="smollm2",
        quirks=quirks,
        vocab=vocab,
    )
    return completion


# --------------------------------------------------------------------------- sampling


def _request(**params) -> TeacherRequest:
    return TeacherRequest(
        messages=[Message(role="user", content="hi")],
        params=GenerationParams(logprobs=True, top_logprobs=20, **params),
    )


def test_llamacpp_profile_sends_neutral_sampling_and_extra_body_overrides_it():
    _, body = build_openai_body(_request(), model="smollm2", profile=LLAMACPP)
    assert body["repeat_penalty"] == 1.0  # the server's default is 1.1
    assert body["presence_penalty"] == 0.0 and body["frequency_penalty"] == 0.0
    assert body["top_k"] == 0 and body["min_p"] == 0.0  # no truncation (defaults 40 / 0.05)
    _, body = build_openai_body(
        _request(extra_body={"repeat_penalty": 1.3}), model="smollm2", profile=LLAMACPP
    )
    assert body["repeat_penalty"] == 1.3  # the run file's harvest.extra_body still wins
    for other in ("vllm", "generic", "apidistill"):
        _, body = build_openai_body(_request(), model="m", profile=server_profile(other))
        assert not set(LLAMACPP_NEUTRAL_SAMPLING) & set(body)


async def test_completion_and_record_keep_the_sampling_that_was_sent(provider):
    """The fake provider answers; the completion and the dataset record carry what was sent."""
    from apidistill.config import TeacherConfig
    from apidistill.harvest.results import HarvestResult
    from apidistill.pipeline.stages import record_from_result

    teacher = OpenAITeacher("smollm2", base_url=provider.openai_url, api_key="x", profile=LLAMACPP)
    req = _request(seed=3, top_p=0.9).model_copy(
        update={"metadata": {"student_messages": [{"role": "user", "content": "hi"}],
                             "prompt_id": "p1"}}
    )  # fmt: skip
    resp = await teacher.complete(req)
    sent = provider.seen[-1].body
    expected = {
        "temperature": 0.0, "top_p": 0.9, "seed": 3, **LLAMACPP_NEUTRAL_SAMPLING,
    }  # fmt: skip
    assert {k: sent[k] for k in expected} == expected
    assert resp.completion.sampling == expected
    result = HarvestResult(request=req, key="k" * 64, completion=resp.completion)
    rec = record_from_result(result, None, TeacherConfig(model="smollm2", base_url="http://x/v1"))
    assert rec.metadata["sampling"] == expected
    await teacher.aclose()


def test_the_profiles_sampling_is_part_of_the_teacher_identity():
    """An answer journaled under other sampling (the server's 1.1 penalty) is not reused."""
    url = "http://127.0.0.1:8080/v1"
    plain = OpenAITeacher("m", base_url=url, profile=server_profile("generic"))
    llama = OpenAITeacher("m", base_url=url, profile=LLAMACPP)
    assert plain.teacher_id == "openai_compatible@http://127.0.0.1:8080/v1"
    assert llama.teacher_id.startswith(plain.teacher_id + "+sampling:")
    req = _request()
    assert req.cache_key(plain.teacher_id, "m") != req.cache_key(llama.teacher_id, "m")


# --------------------------------------------------------------------------- token bytes

CASES = ["Sakura 抹茶", "Über", "🙂 Order shipped", " Ürün 抹茶ラテ, café", "naïve 東京タワー 🙂🙂"]


@pytest.mark.parametrize("text", CASES)
def test_lossy_tokens_get_their_bytes_and_ids_back(smol, text):
    tok, vocab = smol
    ids = tok.encode(text, add_special_tokens=False)
    choice = llama_cpp_python_choice(ids, vocab)
    sent = [e["token"].encode() for e in choice["logprobs"]["content"]]
    assert sent != [vocab.id_to_bytes[i] for i in ids]  # the quirk is there: "" or shortened

    before = _parse(choice, vocab, quirks=LLAMACPP.capabilities.quirks - {"lossy_token_text"})
    assert [p.token_id for p in before.logprobs] != ids  # what the harvest stored until now

    after = _parse(choice, vocab)
    assert [p.token_id for p in after.logprobs] == ids
    assert [bytes(p.bytes) for p in after.logprobs] == [vocab.id_to_bytes[i] for i in ids]
    assert b"".join(bytes(p.bytes) for p in after.logprobs) == after.text.encode("utf-8")
    for pos, tid in zip(after.logprobs, ids, strict=True):
        # the alternative under the sampled token's text is the sampled token
        same = [a for a in pos.top if a.token == pos.token]
        assert [(a.token_id, a.bytes, a.logprob) for a in same] == [(tid, pos.bytes, pos.logprob)]
        # "" alternatives that name no token are gone; every kept one has an identity
        assert all(a.token_id is not None or a.bytes for a in pos.top)


def test_without_a_vocabulary_nothing_is_invented(smol):
    tok, vocab = smol
    choice = llama_cpp_python_choice(tok.encode("Sakura 抹茶", add_special_tokens=False), vocab)
    lps = _parse(choice, None).logprobs
    assert [p.bytes for p in lps if p.token == ""] == [None] * 5


def test_a_text_the_tokens_cannot_spell_changes_nothing(smol):
    tok, vocab = smol
    ids = tok.encode("Sakura 抹茶", add_special_tokens=False)
    choice = llama_cpp_python_choice(ids, vocab)
    choice["message"]["content"] = "something else"
    lps = _parse(choice, vocab).logprobs
    assert lps[0].token == "S" and [p.bytes for p in lps if p.token == ""] == [None] * 5


def test_tokens_past_a_stop_cut_keep_their_own_text(smol):
    """llama-cpp-python cuts the text at a stop string but returns every generated token."""
    tok, vocab = smol
    ids = tok.encode("Über alles\n\nfin", add_special_tokens=False)
    choice = llama_cpp_python_choice(ids, vocab)
    choice["message"]["content"] = "Über alles"
    lps = _parse(choice, vocab).logprobs
    spelled = b"".join(bytes(p.bytes) for p in lps)
    assert spelled == "Über alles\n\nfin".encode()
    assert [p.token_id for p in lps] == ids


def test_legacy_completions_shape_is_recovered_too(smol):
    tok, vocab = smol
    ids = tok.encode("抹茶", add_special_tokens=False)
    chat = llama_cpp_python_choice(ids, vocab)["logprobs"]["content"]
    legacy = {
        "tokens": [e["token"] for e in chat],
        "token_logprobs": [e["logprob"] for e in chat],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in chat],
        "text_offset": [0] * len(chat),
    }
    body = {"object": "text_completion", "choices": [{"text": "抹茶", "logprobs": legacy}]}
    completion, _ = parse_openai_body(
        body,
        chat=False,
        logprobs_requested=True,
        top_k=5,
        provider="p",
        model="m",
        quirks=LLAMACPP.capabilities.quirks,
        vocab=vocab,
    )
    assert [p.token_id for p in completion.logprobs] == ids


def test_server_given_bytes_and_ids_are_kept():
    """llama.cpp's own llama-server sends ids and bytes: they constrain, never get replaced."""
    vocab = TokenVocab({1: b"\xe6", 2: b"\x8a\xb9", 3: b"\xe6\x8a", 4: b"\xb9"})
    content = [
        {"id": 3, "token": "", "bytes": [0xE6, 0x8A], "logprob": -0.1, "top_logprobs": []},
        {"id": 4, "token": "", "bytes": None, "logprob": -0.2, "top_logprobs": []},
    ]
    completion = _parse({"message": {"content": "抹"}, "logprobs": {"content": content}}, vocab)
    assert [(p.token_id, p.bytes) for p in completion.logprobs] == [(3, [0xE6, 0x8A]), (4, [0xB9])]


def test_two_equally_good_cuts_leave_the_positions_unknown():
    """Without a tokenizer to break the tie, "" + "" over three bytes is not guessed."""
    vocab = TokenVocab({1: b"\xe6", 2: b"\x8a\xb9", 3: b"\xe6\x8a", 4: b"\xb9", 5: b"!"})
    content = [
        {"token": "", "bytes": None, "logprob": -0.1, "top_logprobs": []},
        {"token": "", "bytes": None, "logprob": -0.2, "top_logprobs": []},
        {"token": "!", "bytes": None, "logprob": -0.2, "top_logprobs": []},
    ]
    lps = _parse({"message": {"content": "抹!"}, "logprobs": {"content": content}}, vocab).logprobs
    assert [(p.token_id, p.bytes) for p in lps] == [(None, None), (None, None), (5, [33])]


@st.composite
def sampled_cut(draw, tok, vocab):
    """A text mixing scripts, and a token sequence a model could sample for it: the
    tokenizer's own tokens, some of them split into smaller vocabulary pieces."""
    words = draw(
        st.lists(
            st.sampled_from(
                ["Sakura", " 抹茶", " Über", "🙂", " café", " 東京", "ラテ", " naïve", " ok", "\n"]
            ),
            min_size=1,
            max_size=6,
        )
    )
    text = "".join(words)
    ids: list[int] = []
    for tid in tok.encode(text, add_special_tokens=False):
        piece = vocab.id_to_bytes[tid]
        if len(piece) > 1 and draw(st.booleans()):
            cut = draw(st.integers(1, len(piece) - 1))
            left, right = vocab.id_for(piece[:cut]), vocab.id_for(piece[cut:])
            if left is not None and right is not None:
                ids += [left, right]
                continue
        ids.append(tid)
    return text, ids


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_recovery_always_spells_the_completion_and_is_exact_on_the_tokenizers_tokens(smol, data):
    tok, vocab = smol
    text, ids = data.draw(sampled_cut(tok, vocab))
    canonical = ids == tok.encode(text, add_special_tokens=False)
    choice = llama_cpp_python_choice(ids, vocab, seed=len(ids))
    lps = _parse(choice, vocab).logprobs
    assert len(lps) == len(ids)  # every position is kept
    if canonical:
        assert [p.token_id for p in lps] == ids
    for pos, tid in zip(lps, ids, strict=True):
        if pos.bytes is None:  # left unknown: only ever where two cuts tie
            assert pos.token_id is None
            continue
        assert _lossy(bytes(pos.bytes)) == _lossy(vocab.id_to_bytes[tid])  # fits the server
        assert pos.token_id == vocab.id_for(bytes(pos.bytes))
        assert math.isfinite(pos.logprob)
    if all(p.bytes is not None for p in lps):
        assert b"".join(bytes(p.bytes) for p in lps) == text.encode("utf-8")


def test_raw_constraints_refuse_shapes_they_do_not_know():
    assert raw_token_constraints(None) is None
    assert raw_token_constraints({"content": [{"token": 3}]}) is None
    assert raw_token_constraints({"tokens": ["a", None]}) is None
    assert recover_token_bytes([], "x", [], TokenVocab({})).aligned is False


def test_a_llamacpp_harvest_without_the_vocabulary_is_warned_about():
    quirks = LLAMACPP.capabilities.quirks
    warning = lossy_text_warning(quirks, None)
    assert warning and "teacher.tokenizer" in warning and "GGUF" in warning
    assert lossy_text_warning(quirks, "model.gguf") is None
    assert lossy_text_warning(server_profile("vllm").capabilities.quirks, None) is None


_SMALL = TokenVocab({i: bytes([b]) for i, b in enumerate(range(0xE0, 0xE8))} | {
    10: b"\xe6\x8a", 11: b"\x8a\xb9", 12: b" ", 13: b" \xe6", 14: b"a", 15: b"\x8a", 16: b"\xb9"
})  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    texts=st.lists(st.sampled_from(["", " ", "a", "抹", "\ufffd", "x"]), max_size=8),
    completion=st.text(alphabet="a 抹\ufffd", max_size=8),
)
def test_any_payload_is_read_without_error_and_only_filled_where_it_fits(texts, completion):
    content = [{"token": t, "bytes": None, "logprob": -0.5, "top_logprobs": []} for t in texts]
    choice = {"message": {"content": completion}, "logprobs": {"content": content}}
    lps = _parse(choice, _SMALL).logprobs
    assert len(lps) == len(texts)
    for pos, t in zip(lps, texts, strict=True):
        if pos.bytes is not None and pos.token_id is not None:
            assert _lossy(bytes(pos.bytes)) == t
