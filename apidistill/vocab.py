"""A tokenizer's vocabulary as UTF-8 bytes: the one place that knows how pieces spell bytes.

Teachers (reading provider logprobs), training (aligning a teacher's tokens to the student's),
serving (reporting ``bytes`` per token) and cost estimates all need the bytes a token id
stands for. Those bytes are not ``decode([id]).encode()``: decoding one byte of a two-byte
character gives U+FFFD. They are read from the vocabulary pieces, whose spelling depends on
the tokenizer's **scheme**:

- ``byte_level`` (GPT-2, SmolLM2, Llama 3, Qwen): every byte is one printable character;
  printable Latin-1 bytes stand for themselves, the 68 others are shifted, in byte order, to
  code points from 256 up (:data:`BYTE_LEVEL_ALPHABET`).
- ``sentencepiece`` (Llama 2, Mistral, Gemma): U+2581 ``▁`` spells a space and ``<0xNN>``
  pieces are raw bytes (byte fallback).
- ``plain`` (word- and character-level vocabularies): a piece is its own UTF-8 text.

Added and special tokens are their literal text in every scheme.

**The one detection rule** (:func:`detect_scheme`): a tokenizer that declares its decoder
(a ``tokenizers`` backend) is believed: a ``ByteLevel`` decoder means ``byte_level``; a
``ByteFallback``/``Metaspace`` decoder or one that replaces ``▁`` means ``sentencepiece``;
any other decoder means ``plain``. Without a declared decoder (a bare ``{piece: id}`` map,
a slow tokenizer) the pieces decide (:func:`scheme_of_pieces`): at least 99 % of them
written in the byte-level alphabet means ``byte_level``, any ``▁`` or ``<0xNN>`` piece means
``sentencepiece``, else ``plain``.

This module imports nothing of the project, so every stage may use it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "BYTE_LEVEL_ALPHABET",
    "Scheme",
    "TokenBytes",
    "decoder_types",
    "detect_scheme",
    "piece_bytes",
    "scheme_of_pieces",
    "token_bytes_table",
    "unique_index",
]

Scheme = Literal["byte_level", "sentencepiece", "plain"]

_SP_SPACE = "\u2581"
_SP_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
# Share of pieces that must be written in the byte-level alphabet to call a bare map
# byte-level: added tokens like "<|im end|>" may hold a plain space, ordinary pieces never do.
_BYTE_LEVEL_SHARE = 0.99


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted (character → byte)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    kept = set(printable)
    table = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in kept:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


BYTE_LEVEL_ALPHABET: Mapping[str, int] = _byte_level_alphabet()


def decoder_types(tokenizer: Any) -> set[str] | None:
    """The ``type`` of every decoder a fast tokenizer declares (nested sequences included);
    None when the tokenizer declares none (no ``tokenizers`` backend, or no decoder)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        spec = json.loads(backend.to_str()).get("decoder")
    except (ValueError, AttributeError, TypeError):
        return None
    if not spec:
        return None
    found: set[str] = set()
    stack: list[Any] = [spec]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        kind = str(node.get("type", ""))
        found.add(kind)
        if kind == "Replace" and _SP_SPACE in json.dumps(node, ensure_ascii=False):
            found.add("ReplaceMetaspace")
        stack.extend(node.get("decoders") or [])
    return found


def scheme_of_pieces(pieces: Iterable[str]) -> Scheme:
    """The scheme a bare list of vocabulary pieces is written in (see the module docstring)."""
    total = in_alphabet = 0
    sentencepiece = False
    for piece in pieces:
        total += 1
        in_alphabet += all(c in BYTE_LEVEL_ALPHABET for c in piece)
        sentencepiece = sentencepiece or _SP_SPACE in piece or bool(_SP_BYTE.fullmatch(piece))
    if total and in_alphabet >= _BYTE_LEVEL_SHARE * total:
        return "byte_level"
    return "sentencepiece" if sentencepiece else "plain"


def detect_scheme(tokenizer: Any) -> Scheme:
    """The tokenizer's scheme: its declared decoder when it has one, else its pieces."""
    kinds = decoder_types(tokenizer)
    if kinds is not None:
        if "ByteLevel" in kinds:
            return "byte_level"
        if kinds & {"ByteFallback", "Metaspace", "ReplaceMetaspace"}:
            return "sentencepiece"
        return "plain"
    return scheme_of_pieces(tokenizer.get_vocab())


def piece_bytes(piece: str, scheme: Scheme) -> bytes:
    """The bytes one vocabulary piece stands for under ``scheme``.

    A byte-level piece with a character outside the alphabet (an added token) is its literal
    UTF-8; a lone surrogate (a broken piece) is replaced rather than raised.
    """
    if scheme == "byte_level":
        try:
            return bytes(BYTE_LEVEL_ALPHABET[c] for c in piece)
        except KeyError:
            pass
    elif scheme == "sentencepiece":
        if m := _SP_BYTE.fullmatch(piece):
            return bytes([int(m.group(1), 16)])
        piece = piece.replace(_SP_SPACE, " ")
    return piece.encode("utf-8", "replace")


@dataclass(frozen=True)
class TokenBytes:
    """Every id of a tokenizer (``0 .. len(tokenizer) - 1``) as bytes, and which are special.

    ``table[i]`` is None only for an id the tokenizer has no piece for (a gap in the ids).
    """

    table: list[bytes | None]
    special: frozenset[int]
    scheme: Scheme


def _added_tokens(tokenizer: Any) -> dict[int, str]:
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return {int(i): str(getattr(t, "content", t)) for i, t in added.items()}


def token_bytes_table(tokenizer: Any) -> TokenBytes:
    """Token id → bytes for a ``transformers`` tokenizer (built once: ~0.2 s for 49k ids)."""
    scheme = detect_scheme(tokenizer)
    size = len(tokenizer)
    added = _added_tokens(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    table: list[bytes | None] = []
    for i, piece in enumerate(pieces):
        if i in added:
            table.append(added[i].encode("utf-8", "replace"))
        elif piece is None:
            table.append(None)
        else:
            table.append(piece_bytes(piece, scheme))
    special = frozenset(int(i) for i in getattr(tokenizer, "all_special_ids", None) or [])
    return TokenBytes(table, special, scheme)


def unique_index(entries: Iterable[tuple[int, bytes | None]]) -> dict[bytes, int | None]:
    """``bytes → id`` over ``(id, bytes)`` pairs; a spelling two ids share maps to None
    (ambiguous: no id can be read from it). Empty and None bytes are left out."""
    index: dict[bytes, int | None] = {}
    for tid, data in entries:
        if data:
            index[data] = None if data in index else tid
    return index
