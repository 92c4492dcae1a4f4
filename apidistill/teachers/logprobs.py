"""Every provider's logprob payload becomes one ``list[TokenLogprob]``.

Shapes read here:

- Chat Completions (OpenAI, vLLM, llama.cpp, Ollama, TGI, SGLang): ``choices[].logprobs`` =
  ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}, ...]}``; llama.cpp
  adds ``"id"`` per entry and, with ``post_sampling_probs``, gives ``prob``/``top_probs``.
- Legacy Completions: ``{"tokens": [...], "token_logprobs": [...], "top_logprobs": [{tok:
  lp}, ...]}`` (llama.cpp answers /v1/completions in the chat shape; both are accepted).

Rules, applied to every provider (each is harmless where its quirk does not occur):

- ``"token_id:<n>"`` tokens (quirk ``token_id_strings``) give ``token_id=n``; their ``bytes``
  describe the placeholder string, so they are dropped and refilled from the vocabulary.
- A value that is NaN, ±inf or ≤ -9999 (OpenAI's and DeepSeek's mask, llama.cpp's lowest
  float for p=0) carries no probability: such entries are **dropped from the top list**; on
  the sampled token it is **clamped to** :data:`MIN_LOGPROB` so the position is kept (as is
  any sampled value below it: p < e^-100 is zero for every loss).
  A value > 0 is rounding noise around p=1 and is clamped to 0.0.
- Duplicate tokens in a top list (llama.cpp appends the sampled token) keep their largest
  value; the list is sorted descending and clipped to the requested k.
- ``bytes: null`` is unknown, not empty: bytes come from the token text unless the text is
  empty or holds U+FFFD (a partial UTF-8 character), then from the vocabulary, else None.
- A known vocabulary (self-hosted teacher) fills ``token_id`` from bytes when unambiguous.

A sampled token without a usable value is clamped like a masked one (``clamped`` counts
them). Values with no probability in them are counted, not hidden: ``invalid`` (sampled
tokens stored as -100) and ``dropped`` (alternatives left out) reach the completion, the
dataset record's metadata and the harvest summary. Anything structurally wrong (a list where an object belongs, a position without a
token) raises :class:`~apidistill.errors.TeacherUnavailable` with ``maybe_billed``
set: the provider answered 200 and the body cannot be used.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from apidistill.errors import TeacherUnavailable
from apidistill.records import TokenLogprob, TopLogprob
from apidistill.teachers.failures import malformed_body
from apidistill.vocab import piece_bytes, scheme_of_pieces, token_bytes_table, unique_index

__all__ = [
    "MASK_THRESHOLD",
    "MIN_LOGPROB",
    "NormalizedLogprobs",
    "TokenVocab",
    "extract_choice_logprobs",
    "normalize_chat_logprobs",
    "normalize_completion_logprobs",
]

MIN_LOGPROB = -100.0  # clamp for a sampled token whose reported value is masked or missing
MASK_THRESHOLD = -9999.0  # at or below: masked / p = 0
_TOKEN_ID = re.compile(r"token_id:(\d{1,12})")


@dataclass(frozen=True)
class NormalizedLogprobs:
    """Normalized positions, or None with the reason they are missing."""

    tokens: list[TokenLogprob] | None
    missing_reason: str | None = None
    clamped: int = 0  # sampled-token values that were masked/NaN/positive and were clamped
    # Counted, not hidden (they reach the record and the harvest summary):
    invalid: int = 0  # sampled values NaN/±inf/masked/missing, stored as MIN_LOGPROB
    dropped: int = 0  # top-list alternatives dropped for a NaN/±inf/masked/missing value


# ----------------------------------------------------------------------------- vocabulary


@dataclass
class TokenVocab:
    """A teacher's vocabulary as bytes, to turn provider strings into token ids and back."""

    id_to_bytes: dict[int, bytes]
    # ``bytes -> id``; None marks a spelling two ids share (no id can be read from it).
    bytes_to_id: dict[bytes, int | None] = field(default_factory=dict)
    # The tokenizer's own tokenization (text -> ids), when built from one: it breaks ties
    # when a lossy server's token texts fit the completion more than one way.
    encode: Callable[[str], list[int]] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.bytes_to_id:
            self.bytes_to_id = unique_index(self.id_to_bytes.items())

    @classmethod
    def from_pieces(cls, pieces: Mapping[str, int]) -> TokenVocab:
        """Build from ``{token string: id}`` as ``tokenizer.get_vocab()`` gives it, in the
        scheme the pieces are written in (:func:`apidistill.vocab.scheme_of_pieces`)."""
        scheme = scheme_of_pieces(pieces)
        return cls({tid: piece_bytes(text, scheme) for text, tid in pieces.items()})

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> TokenVocab:
        """From a transformers tokenizer, by :func:`apidistill.vocab.token_bytes_table`."""
        table = token_bytes_table(tokenizer).table
        vocab = cls({tid: b for tid, b in enumerate(table) if b is not None})
        vocab.encode = lambda text: list(tokenizer.encode(text, add_special_tokens=False))
        return vocab

    def id_for(self, data: bytes | None) -> int | None:
        if data is None:
            return None
        return self.bytes_to_id.get(data)


# ----------------------------------------------------------------------------- one entry


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _value(entry: Mapping[str, Any]) -> float | None:
    """The entry's logprob; a post-sampling ``prob`` is converted. None if not numeric."""
    v = entry.get("logprob")
    if _is_number(v):
        return float(v)
    p = entry.get("prob")
    if _is_number(p):
        p = float(p)
        return math.log(p) if p > 0 else -math.inf
    return None


def _masked(v: float) -> bool:
    return not math.isfinite(v) or v <= MASK_THRESHOLD


def _unusable(v: float | None) -> bool:
    """No probability in it: missing, NaN, ±inf or the provider's mask."""
    return v is None or _masked(v)


def _valid_bytes(raw: object) -> bytes | None:
    if not isinstance(raw, list) or len(raw) > 1024:
        return None
    if not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in raw):
        return None
    return bytes(raw)


def _clean_text(text: str) -> tuple[str, bytes | None]:
    """Text safe to store, and its bytes when the text is a faithful spelling."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: the provider's text is broken
        return text.encode("utf-8", "replace").decode("utf-8"), None
    if not text or "\ufffd" in text:
        return text, None
    return text, data


@dataclass
class _Entry:
    token_id: int | None
    token: str
    data: bytes | None
    logprob: float | None


def _read_entry(
    raw: object, quirks: frozenset[str], vocab: TokenVocab | None, token: object = None
) -> _Entry | None:
    """One position or alternative; None when it cannot be identified at all."""
    if isinstance(raw, Mapping):
        token = raw.get("token", raw.get("tok_str"))
        value = _value(raw)
        given_bytes = _valid_bytes(raw.get("bytes"))
        rid = raw.get("id")
        token_id = rid if isinstance(rid, int) and not isinstance(rid, bool) and rid >= 0 else None
    else:
        value = float(raw) if _is_number(raw) else None
        given_bytes, token_id = None, None
    if token is not None and not isinstance(token, str):
        return None
    text = token if isinstance(token, str) else ""
    id_string = "token_id_strings" in quirks and (m := _TOKEN_ID.fullmatch(text)) is not None
    if id_string:
        token_id, text, given_bytes = int(m.group(1)), "", None
    text, text_bytes = _clean_text(text)
    data = given_bytes if given_bytes is not None else text_bytes
    if data is None and vocab is not None and token_id is not None:
        data = vocab.id_to_bytes.get(token_id)
    if id_string and data is not None:
        text = data.decode("utf-8", "replace")
    if token_id is None and vocab is not None:
        token_id = vocab.id_for(data)
    if token is None and token_id is None and data is None:
        return None
    return _Entry(token_id, text, data, value)


def _identity(e: _Entry) -> object:
    if e.token_id is not None:
        return ("id", e.token_id)
    if e.data is not None:
        return ("b", e.data)
    return ("t", e.token)


def _top_list(entries: Iterable[_Entry], k: int) -> tuple[list[TopLogprob], int]:
    """The ranked top-``k`` list, and how many entries were dropped for an unusable value."""
    best: dict[object, _Entry] = {}
    dropped = 0
    for e in entries:
        if e.logprob is None or _masked(e.logprob):
            dropped += 1
            continue
        e.logprob = min(e.logprob, 0.0)
        key = _identity(e)
        if key not in best or e.logprob > (best[key].logprob or -math.inf):
            best[key] = e
    ranked = sorted(best.values(), key=lambda e: -(e.logprob or 0.0))[:k]
    top = [
        TopLogprob(
            token_id=e.token_id,
            token=e.token,
            bytes=list(e.data) if e.data is not None else None,
            logprob=float(e.logprob or 0.0),
        )
        for e in ranked
    ]
    return top, dropped


def _position(sampled: _Entry, top: list[TopLogprob]) -> tuple[TokenLogprob, bool]:
    value = sampled.logprob
    clamped = value is None or _masked(value) or value > 0 or value < MIN_LOGPROB
    if value is None or _masked(value):
        value = MIN_LOGPROB
    value = min(max(value, MIN_LOGPROB), 0.0)
    return (
        TokenLogprob(
            token_id=sampled.token_id,
            token=sampled.token,
            bytes=list(sampled.data) if sampled.data is not None else None,
            logprob=value,
            top=top,
        ),
        clamped,
    )


def _bad(what: str) -> TeacherUnavailable:
    return malformed_body("teacher", f"logprobs: {what}")


# ----------------------------------------------------------------------------- payloads


def normalize_chat_logprobs(
    content: object,
    *,
    top_k: int,
    quirks: frozenset[str] = frozenset(),
    vocab: TokenVocab | None = None,
) -> NormalizedLogprobs:
    """``choices[i].logprobs.content`` (a list of token entries) → positions."""
    if not isinstance(content, list):
        raise _bad(f"'content' must be a list, got {type(content).__name__}")
    out: list[TokenLogprob] = []
    clamped = invalid = dropped = 0
    for i, raw in enumerate(content):
        if not isinstance(raw, Mapping):
            raise _bad(f"position {i} must be an object, got {type(raw).__name__}")
        sampled = _read_entry(raw, quirks, vocab)
        if sampled is None:
            raise _bad(f"position {i} has no usable 'token'")
        if raw.get("logprob") is not None and not _is_number(raw.get("logprob")):
            raise _bad(f"position {i}: 'logprob' must be a number")
        alts_raw = raw.get("top_logprobs", raw.get("top_probs")) or []
        if not isinstance(alts_raw, list):
            raise _bad(f"position {i}: 'top_logprobs' must be a list")
        alts = [a for a in (_read_entry(x, quirks, vocab) for x in alts_raw) if a is not None]
        top, n_dropped = _top_list(alts, top_k)
        pos, was_clamped = _position(sampled, top)
        clamped += was_clamped
        invalid += _unusable(sampled.logprob)
        dropped += n_dropped
        out.append(pos)
    return NormalizedLogprobs(out, clamped=clamped, invalid=invalid, dropped=dropped)


def normalize_completion_logprobs(
    payload: object,
    *,
    top_k: int,
    quirks: frozenset[str] = frozenset(),
    vocab: TokenVocab | None = None,
) -> NormalizedLogprobs:
    """Legacy ``choices[i].logprobs`` = ``{tokens, token_logprobs, top_logprobs}``."""
    if isinstance(payload, Mapping) and "content" in payload and "tokens" not in payload:
        return normalize_chat_logprobs(payload["content"], top_k=top_k, quirks=quirks, vocab=vocab)
    if not isinstance(payload, Mapping):
        raise _bad(f"expected an object, got {type(payload).__name__}")
    tokens = payload.get("tokens")
    values = payload.get("token_logprobs")
    tops = payload.get("top_logprobs")
    if not isinstance(tokens, list) or not isinstance(values, list):
        raise _bad("'tokens' and 'token_logprobs' must be lists")
    if len(tokens) != len(values):
        raise _bad(f"{len(tokens)} tokens but {len(values)} token_logprobs")
    if tops is not None and (not isinstance(tops, list) or len(tops) != len(tokens)):
        raise _bad("'top_logprobs' must be a list as long as 'tokens'")
    out: list[TokenLogprob] = []
    clamped = invalid = dropped = 0
    for i, (tok, val) in enumerate(zip(tokens, values, strict=True)):
        sampled = _read_entry(val, quirks, vocab, token=tok)
        if sampled is None or not isinstance(tok, str):
            raise _bad(f"position {i}: token must be a string, got {type(tok).__name__}")
        if val is not None and not _is_number(val):
            raise _bad(f"position {i}: token_logprob must be a number")
        alt_map = tops[i] if tops is not None else None
        alts: list[_Entry] = []
        if isinstance(alt_map, Mapping):
            for alt_tok, alt_val in alt_map.items():
                e = _read_entry(alt_val, quirks, vocab, token=alt_tok)
                if e is not None:
                    alts.append(e)
        elif alt_map is not None:
            raise _bad(f"position {i}: top_logprobs entry must be an object or null")
        top, n_dropped = _top_list(alts, top_k)
        pos, was_clamped = _position(sampled, top)
        clamped += was_clamped
        invalid += _unusable(sampled.logprob)
        dropped += n_dropped
        out.append(pos)
    return NormalizedLogprobs(out, clamped=clamped, invalid=invalid, dropped=dropped)


def extract_choice_logprobs(
    choice: Mapping[str, Any],
    *,
    requested: bool,
    top_k: int,
    chat: bool,
    quirks: frozenset[str] = frozenset(),
    vocab: TokenVocab | None = None,
    model: str = "",
) -> NormalizedLogprobs:
    """The logprobs of one returned choice, or None with the reason they are missing."""
    if not requested:
        return NormalizedLogprobs(None)
    payload = choice.get("logprobs")
    if payload is None:
        return NormalizedLogprobs(
            None, f"the teacher {model!r} returned no logprobs although they were requested"
        )
    if chat:
        if not isinstance(payload, Mapping):
            raise _bad(f"'logprobs' must be an object, got {type(payload).__name__}")
        content = payload.get("content")
        if content is None:
            return NormalizedLogprobs(
                None, f"the teacher {model!r} returned logprobs without 'content'"
            )
        return normalize_chat_logprobs(content, top_k=top_k, quirks=quirks, vocab=vocab)
    return normalize_completion_logprobs(payload, top_k=top_k, quirks=quirks, vocab=vocab)


def positions_text(tokens: Sequence[TokenLogprob]) -> bytes | None:
    """The bytes the positions spell, when every position's bytes are known."""
    parts: list[bytes] = []
    for t in tokens:
        if t.bytes is None:
            return None
        parts.append(bytes(t.bytes))
    return b"".join(parts)
