"""Token ids → the text and UTF-8 bytes an API reports for them.

OpenAI's logprob entries carry ``bytes`` so that a client can rebuild text across tokens that
split a UTF-8 character; distillation across tokenizers aligns on exactly those bytes. A
token's bytes are not ``decode([id]).encode()`` (decoding one byte of a two-byte character
gives U+FFFD), so they are read from the vocabulary by :mod:`apidistill.vocab`, the one place
that knows how byte-level, SentencePiece and plain vocabularies spell bytes.
"""

from __future__ import annotations

from typing import Any

from apidistill.vocab import token_bytes_table

__all__ = ["TokenRenderer"]


class TokenRenderer:
    """Text and bytes of single tokens; the byte table is built once, the text cached per id."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._table = token_bytes_table(tokenizer).table
        self._text: dict[int, str] = {}

    def bytes_of(self, token_id: int) -> bytes:
        """The token's bytes; an id outside the vocabulary spells nothing."""
        if 0 <= token_id < len(self._table):
            return self._table[token_id] or b""
        return b""

    def text_of(self, token_id: int) -> str:
        """The token's bytes as text; an incomplete UTF-8 character shows as U+FFFD."""
        hit = self._text.get(token_id)
        if hit is None:
            hit = self._text[token_id] = self.bytes_of(token_id).decode("utf-8", "replace")
        return hit
