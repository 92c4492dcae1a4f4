"""Token ids → the text and UTF-8 bytes an API reports for them.

OpenAI's logprob entries carry ``bytes`` so that a client can rebuild text across tokens that
split a UTF-8 character; distillation across tokenizers aligns on exactly those bytes. A
token's bytes are not ``decode([id]).encode()``: decoding one byte of a two-byte character
gives U+FFFD. So the bytes are read from the vocabulary itself: byte-level BPE vocabularies
(GPT-2, SmolLM2, Llama 3, Qwen) spell each byte as one printable character, SentencePiece
vocabularies spell spaces as U+2581 and raw bytes as ``<0xNN>``, and added/special tokens
are their literal text.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["TokenRenderer"]

_HEX_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _byte_level_alphabet() -> dict[str, int]:
    """The printable character GPT-2's byte-level BPE uses for each byte value.

    Bytes that are visible Latin-1 characters stand for themselves; the others (controls,
    space, a few more) are shifted to code points from 256 upwards, in byte order.
    """
    visible = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table: dict[str, int] = {chr(b): b for b in visible}
    shifted = 0
    for b in range(256):
        if b not in table.values():
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


class TokenRenderer:
    """Text and bytes of single tokens, cached per id."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, tuple[str, bytes]] = {}
        self._added = {
            int(i): str(getattr(t, "content", t))
            for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()
        }
        self._style = self._detect_style()
        self._alphabet = _byte_level_alphabet() if self._style == "byte_level" else {}

    def _detect_style(self) -> str:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return "decode"
        try:
            spec = json.loads(backend.to_str())
        except Exception:
            return "decode"
        blob = json.dumps(spec.get("decoder") or {})
        if '"ByteLevel"' in blob:
            return "byte_level"
        if '"ByteFallback"' in blob or "\u2581" in blob or "\\u2581" in blob:
            return "sentencepiece"
        return "decode"

    def bytes_of(self, token_id: int) -> bytes:
        return self._lookup(token_id)[1]

    def text_of(self, token_id: int) -> str:
        """The token's bytes as text; an incomplete UTF-8 character shows as U+FFFD."""
        return self._lookup(token_id)[0]

    def _lookup(self, token_id: int) -> tuple[str, bytes]:
        hit = self._cache.get(token_id)
        if hit is None:
            raw = self._raw_bytes(token_id)
            hit = (raw.decode("utf-8", errors="replace"), raw)
            self._cache[token_id] = hit
        return hit

    def _raw_bytes(self, token_id: int) -> bytes:
        if token_id in self._added:
            return self._added[token_id].encode("utf-8")
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if piece is None:
            return b""
        if self._style == "byte_level" and all(c in self._alphabet for c in piece):
            return bytes(self._alphabet[c] for c in piece)
        if self._style == "sentencepiece":
            m = _HEX_BYTE.match(piece)
            if m:
                return bytes([int(m.group(1), 16)])
            return piece.replace("\u2581", " ").encode("utf-8")
        return self.tokenizer.decode([token_id], skip_special_tokens=False).encode("utf-8")
