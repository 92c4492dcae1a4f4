"""One vocabulary module (issue #21 item 4): the byte alphabet, token ↔ bytes, one detection rule.

The property: for a real tokenizer, the bytes of the tokens of any text concatenate to the
text's UTF-8. It is checked over arbitrary Unicode for the embedded SmolLM2 tokenizer
(byte-level BPE, read from its GGUF through transformers, and cross-checked against
llama.cpp's own reading of the same GGUF) and for a SentencePiece-style tokenizer with byte
fallback built with the ``tokenizers`` library, and for OpenAI's o200k_base and
cl100k_base as the bpe-openai package ships them (tiktoken's encodings download at first
use; bpe-openai's are inside the package).
Teachers, training and serving all read the one table, so they agree on every id.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apidistill.vocab import (
    BYTE_LEVEL_ALPHABET,
    decoder_types,
    detect_scheme,
    piece_bytes,
    scheme_of_pieces,
    token_bytes_table,
    unique_index,
)

PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# --------------------------------------------------------------------------- tokenizers


@pytest.fixture(scope="module")
def smollm2():
    from apidistill.model_loading import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


def _sentencepiece_tokenizer():
    """A Llama-2-style vocabulary: ``▁`` for spaces, ``<0xNN>`` byte fallback, a few merges.
    ``prepend_scheme="never"`` so the tokens spell the text exactly (Llama prepends a space)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    pieces += ["▁", *"abcdefghijklmnopqrstuvwxyzé", "▁t", "he", "▁the", "▁a", "in", "ét"]
    vocab = {p: i for i, p in enumerate(dict.fromkeys(pieces))}
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("▁", "a"), ("i", "n"), ("é", "t")]
    backend = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True)
    )
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def _byte_level_with_spaced_added_tokens():
    """Byte-level BPE whose added tokens hold plain spaces (more than 1 % of the vocabulary):
    the pieces-only guess calls it not byte-level; its declared ByteLevel decoder says it is."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(BYTE_LEVEL_ALPHABET.items(), key=lambda kv: kv[1])
    vocab = {ch: i for i, (ch, _) in enumerate(alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    tok.add_tokens([f"<tool call {n}>" for n in range(6)])
    return tok


def _spelled(table: list[bytes | None], ids: list[int]) -> bytes:
    return b"".join(table[i] or b"" for i in ids)


# --------------------------------------------------------------------------- the alphabet


def test_byte_level_alphabet_is_a_bijection_onto_all_bytes():
    assert sorted(BYTE_LEVEL_ALPHABET.values()) == list(range(256))
    assert BYTE_LEVEL_ALPHABET["A"] == 65 and BYTE_LEVEL_ALPHABET["Ġ"] == 32
    assert BYTE_LEVEL_ALPHABET["Ċ"] == 10 and BYTE_LEVEL_ALPHABET["é"] == 0xE9


def test_piece_bytes_per_scheme():
    assert piece_bytes("Ġhé", "byte_level") == b" h\xe9"
    assert piece_bytes("<|im end|>", "byte_level") == b"<|im end|>"  # added token: literal
    assert piece_bytes("▁hi", "sentencepiece") == b" hi"
    assert piece_bytes("<0xC3>", "sentencepiece") == b"\xc3"
    assert piece_bytes("<0xC3>", "byte_level") == b"<0xC3>"
    assert piece_bytes("é", "plain") == "é".encode()


def test_unique_index_marks_shared_spellings_ambiguous():
    assert unique_index([(1, b"a"), (2, b"b"), (3, b"b"), (4, None), (5, b"")]) == {
        b"a": 1,
        b"b": None,
    }


# --------------------------------------------------------------------------- one rule


def test_scheme_of_bare_pieces():
    assert scheme_of_pieces(["Ġhello", "a", "Ċ", "<|endoftext|>"]) == "byte_level"
    assert scheme_of_pieces(["▁hello", "<0x0A>", "é", "hello world"]) == "sentencepiece"
    assert scheme_of_pieces(["hello world", "a b", "c"]) == "plain"


def test_declared_decoder_decides(smollm2):
    from apidistill.testing.tiny_tokenizer import char_tokenizer

    assert decoder_types(smollm2) == {"ByteLevel"}
    assert detect_scheme(smollm2) == "byte_level"
    assert detect_scheme(_sentencepiece_tokenizer()) == "sentencepiece"
    assert detect_scheme(char_tokenizer()) == "plain"  # WordLevel + Fuse decoder
    assert detect_scheme(_byte_level_with_spaced_added_tokens()) == "byte_level"


def test_the_declared_decoder_beats_the_pieces_guess():
    """Six spaced added tokens are > 1 % of 262 pieces: the pieces alone would say 'not
    byte-level' and read 'Ġ' as the two bytes of U+0120 instead of a space (the teacher's
    copy of the rule did that); the declared ByteLevel decoder wins."""
    from apidistill.teachers.logprobs import TokenVocab

    tok = _byte_level_with_spaced_added_tokens()
    assert scheme_of_pieces(tok.get_vocab()) != "byte_level"
    vocab = TokenVocab.from_tokenizer(tok)
    assert vocab.id_to_bytes[tok.convert_tokens_to_ids("Ġ")] == b" "
    assert vocab.id_to_bytes[tok.convert_tokens_to_ids("<tool call 3>")] == b"<tool call 3>"


def test_teachers_training_and_serving_read_the_same_bytes(smollm2):
    """The three former copies now agree on every id (special tokens are blank for the
    student only: a teacher string spelling ``<|im_end|>`` is text there)."""
    from apidistill.serve.tokens import TokenRenderer
    from apidistill.teachers.logprobs import TokenVocab
    from apidistill.train.align import StudentVocab

    for tok in (smollm2, _sentencepiece_tokenizer()):
        table = token_bytes_table(tok)
        teacher = TokenVocab.from_tokenizer(tok)
        student = StudentVocab.build(tok)
        renderer = TokenRenderer(tok)
        for i, data in enumerate(table.table):
            assert teacher.id_to_bytes.get(i) == data
            assert renderer.bytes_of(i) == (data or b"")
            assert student.token_bytes[i] == (None if i in table.special else data)


def test_smollm2_table_matches_llama_cpp_reading_of_the_gguf(smollm2):
    """An independent reader of the same GGUF: llama.cpp's own token → bytes. (llama-cpp-
    python detokenizes into a 32-byte buffer, so longer pieces come back empty there.)"""
    llama_cpp = pytest.importorskip("llama_cpp")
    from apidistill.model_loading import resolve_model

    src = resolve_model("smollm2-135m-instruct")
    llm = llama_cpp.Llama(
        os.path.join(src.folder, src.gguf_file or ""), vocab_only=True, verbose=False
    )
    try:
        table = token_bytes_table(smollm2).table
        compared = 0
        for i in range(llm.n_vocab()):
            theirs = llm.detokenize([i], special=True)
            if theirs == b"" and len(table[i] or b"") >= 32:
                continue
            assert table[i] == theirs, i
            compared += 1
        assert compared > 49_000
    finally:
        llm.close()


# --------------------------------------------------------------------------- properties


@pytest.fixture(scope="module")
def smollm2_table(smollm2):
    return token_bytes_table(smollm2).table


@PROPERTY
@given(text=st.text(max_size=64))
def test_smollm2_token_bytes_spell_any_text(smollm2, smollm2_table, text):
    """SmolLM2's vocabulary has no token for 21 byte values (0xF1, 0xF2, 0xF5-0xFF, 0xC0,
    0xC1 and five control bytes); its tokenizer drops those bytes, so the tokens spell the
    text's UTF-8 less exactly those bytes (the whole text whenever it holds none of them)."""
    covered = {b[0] for b in smollm2_table if b is not None and len(b) == 1}
    assert len(covered) == 256 - 21
    ids = smollm2.encode(text, add_special_tokens=False)
    expected = bytes(b for b in text.encode("utf-8") if b in covered)
    assert _spelled(smollm2_table, ids) == expected


_SP_TOKENIZER = None


@PROPERTY
@given(text=st.text(alphabet=st.characters(exclude_characters="▁", codec="utf-8"), max_size=64))
def test_sentencepiece_token_bytes_spell_any_text(text):
    """Any text but U+2581 itself, which SentencePiece cannot tell from a space."""
    global _SP_TOKENIZER
    if _SP_TOKENIZER is None:
        tok = _sentencepiece_tokenizer()
        _SP_TOKENIZER = tok, token_bytes_table(tok).table
    tok, table = _SP_TOKENIZER
    ids = tok.encode(text, add_special_tokens=False)
    assert _spelled(table, ids) == text.encode("utf-8")


@pytest.fixture(scope="module", params=["o200k_base", "cl100k_base"])
def openai_encoding(request):
    """OpenAI's encodings as bpe-openai ships them (tiktoken-compatible, no download)."""
    bpe_openai = pytest.importorskip("bpe_openai")
    return bpe_openai.get_encoding(request.param)


_TO_CHAR = {b: ch for ch, b in BYTE_LEVEL_ALPHABET.items()}


def _piece(enc, i: int) -> str:
    """Token ``i`` spelled as a GPT-2-style vocabulary piece (what its HF export holds)."""
    return "".join(_TO_CHAR[b] for b in enc.decode_single_token_bytes(i))


def test_openai_encodings_read_as_byte_level(openai_encoding):
    enc = openai_encoding
    pieces = {}
    for i in range(enc.n_vocab):
        try:
            pieces[_piece(enc, i)] = i
        except (KeyError, ValueError):  # ids with no token (gaps before the specials)
            continue
    assert len(pieces) > 100_000
    assert scheme_of_pieces(pieces) == "byte_level"


@PROPERTY
@given(text=st.text(max_size=64))
def test_openai_token_bytes_spell_any_text(openai_encoding, text):
    ids = openai_encoding.encode_ordinary(text)
    spelled = b"".join(piece_bytes(_piece(openai_encoding, i), "byte_level") for i in ids)
    assert spelled == text.encode("utf-8")
