"""Token bytes come from the vocabulary, so split UTF-8 characters keep their real bytes."""

from __future__ import annotations

from apidistill.serve.tokens import TokenRenderer
from apidistill.vocab import BYTE_LEVEL_ALPHABET


def test_byte_level_alphabet_is_a_bijection_over_bytes():
    table = BYTE_LEVEL_ALPHABET
    assert sorted(table.values()) == list(range(256))
    assert table["A"] == 65 and table["\u0120"] == 32  # 'Ġ' stands for a space


def test_byte_level_tokens_give_exact_bytes(byte_tokenizer):
    r = TokenRenderer(byte_tokenizer)
    text = "Grüße, 日本!"
    ids = byte_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert b"".join(r.bytes_of(i) for i in ids) == text.encode("utf-8")
    assert r.bytes_of(byte_tokenizer.eos_token_id) == b"<|im_end|>"
    half = byte_tokenizer("ü", add_special_tokens=False)["input_ids"][0]
    assert r.bytes_of(half) == b"\xc3" and r.text_of(half) == "\ufffd"


def test_sentencepiece_tokens_map_spaces_and_byte_fallback():
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "\u2581hi": 1, "<0xC3>": 2, "<0xA9>": 3, "there": 4}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    backend.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    r = TokenRenderer(tok)
    assert r.bytes_of(1) == b" hi"
    assert r.bytes_of(2) + r.bytes_of(3) == "é".encode()
    assert r.text_of(4) == "there"
