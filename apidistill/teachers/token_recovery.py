"""Recover the bytes and ids of tokens a server spelled lossily, from the completion text.

llama-cpp-python's server (``python -m llama_cpp.server``) writes each logprob token as
``detokenize([id]).decode("utf-8", errors="ignore")`` and sends ``bytes: null`` and no id.
A token that holds part of a multi-byte character (CJK, accented letters, emoji) therefore
comes back as ``""``, or shortened (``" \\xe6\\x8a"`` arrives as ``" "``), so the stored tokens
would not spell the completion and those positions would lose their ids and supervision.

The completion text is exact, and the teacher's vocabulary is known (``teacher.tokenizer``,
e.g. the GGUF file the server runs). Each position's bytes are therefore the piece of the
completion's UTF-8 that (a) is one vocabulary token and (b) decodes, with errors ignored, to
the text the server sent. :func:`recover_token_bytes` finds every way to cut the completion
into such pieces, one per position. Byte-level vocabularies hold single bytes and many byte
pairs, so a run of ``""`` tokens inside a CJK word often fits more than one cut; the cut
closest to the tokenizer's own tokenization of the text wins (the model was trained on, and
samples, those tokens), and where even that leaves a choice the position's bytes and id are
left unknown rather than read from the lossy text. Bytes the server itself gave (``bytes``, or an ``id``) are kept as
constraints. When no cut exists at all (the text is not what the tokens spell), nothing is
changed.

Top alternatives come keyed by the same lossy text, so the server's list holds one entry per
distinct text: the entry under the sampled token's text carries the sampled token's value
(the server writes it last), and takes its recovered id and bytes; the other ``""`` entries
stand for several partial tokens at once and name none of them, so they are dropped (their
probability is left to the tail bucket in training).

Tokens past the end of the text (a stop string cut the answer, or ``max_tokens`` cut a
character) cannot be checked against it; they keep what their own text says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from apidistill.records import TokenLogprob
from apidistill.teachers.logprobs import TokenVocab

__all__ = ["Recovery", "lossy_text_warning", "raw_token_constraints", "recover_token_bytes"]

# Longest vocabulary piece tried at one offset (SentencePiece and BPE pieces are far shorter).
_MAX_PIECE = 128
_END = -1  # state: past the end of the completion text


@dataclass(frozen=True)
class Recovery:
    """What :func:`recover_token_bytes` changed: counts for the harvest's notes and tests."""

    filled: int = 0  # positions whose bytes were missing or lossy and now come from the text
    ambiguous: int = 0  # positions two cuts of the text disagree on (left unknown)
    dropped_alternatives: int = 0  # ``""`` alternatives that named no single token
    aligned: bool = False  # one consistent cut of the whole text exists


@dataclass(frozen=True)
class _Given:
    """What the server said about one position: its text and, when sent, bytes or id."""

    text: str
    data: bytes | None = None
    token_id: int | None = None


def raw_token_constraints(payload: object) -> list[_Given] | None:
    """The per-position text/bytes/id the server sent, from a chat ``logprobs.content`` list or
    a legacy ``{tokens: [...]}`` object; None when the shape is neither (nothing to recover)."""
    if isinstance(payload, Mapping) and isinstance(payload.get("tokens"), list):
        tokens = payload["tokens"]
        if not all(isinstance(t, str) for t in tokens):
            return None
        return [_Given(t) for t in tokens]
    if isinstance(payload, Mapping):
        payload = payload.get("content")
    if not isinstance(payload, list):
        return None
    out: list[_Given] = []
    for raw in payload:
        if not isinstance(raw, Mapping) or not isinstance(raw.get("token"), str):
            return None
        b = raw.get("bytes")
        data = (
            bytes(b)
            if isinstance(b, list) and all(isinstance(x, int) and 0 <= x <= 255 for x in b)
            else None
        )
        rid = raw.get("id")
        tid = rid if isinstance(rid, int) and not isinstance(rid, bool) and rid >= 0 else None
        out.append(_Given(raw["token"], data, tid))
    return out


def lossy_text_warning(quirks: frozenset[str], tokenizer: str | None) -> str | None:
    """What a logprob harvest loses on a lossy server without the teacher's vocabulary."""
    if "lossy_token_text" not in quirks or tokenizer:
        return None
    return (
        "the llamacpp profile without teacher.tokenizer: llama-cpp-python's server sends no "
        "token ids, and tokens holding part of a CJK, accented or emoji character come as '' "
        "without bytes; set teacher.tokenizer to the GGUF file the server runs to recover "
        "both (llama.cpp's own llama-server sends ids and bytes and needs none)"
    )


def _lossy(data: bytes) -> str:
    return data.decode("utf-8", errors="ignore")


class _Cutter:
    """The pieces each position may take at each offset of the completion's bytes."""

    def __init__(self, text: bytes, given: Sequence[_Given], vocab: TokenVocab) -> None:
        self.text, self.given, self.vocab = text, given, vocab

    def _fixed(self, g: _Given) -> bytes | None:
        """Bytes the server pinned down (its own bytes, or its id looked up)."""
        if g.data is not None:
            return g.data
        if g.token_id is not None:
            return self.vocab.id_to_bytes.get(g.token_id)
        return None

    def steps(self, i: int, state: int) -> list[tuple[int, bytes | None]]:
        """``(next state, bytes)`` for position ``i`` starting at ``state``."""
        g, text, n = self.given[i], self.text, len(self.text)
        fixed = self._fixed(g)
        if state in (_END, n):  # past the text: only the position's own word counts
            if fixed is not None:
                return [(_END, fixed)]
            own = g.text.encode("utf-8", "surrogatepass") if g.text else None
            return [(_END, own if own and own in self.vocab.bytes_to_id else None)]
        out: list[tuple[int, bytes | None]] = []
        if fixed is not None:
            if text.startswith(fixed, state):
                out.append((state + len(fixed), fixed))
            elif fixed.startswith(text[state:]):  # the text ends inside this token
                out.append((_END, fixed))
            return out
        for length in range(1, min(_MAX_PIECE, n - state) + 1):
            piece = text[state : state + length]
            if piece in self.vocab.bytes_to_id and _lossy(piece) == g.text:
                out.append((state + length, piece))
        own = g.text.encode("utf-8", "surrogatepass") if g.text else b""
        if own and len(own) > n - state and own.startswith(text[state:]):
            out.append((_END, own))  # a stop string cut the answer inside this token
        return out


def _canonical_spans(text: bytes, completion: str, vocab: TokenVocab) -> frozenset[tuple[int, int]]:
    """Byte spans of the tokenizer's own tokenization of the completion (empty if unknown)."""
    if vocab.encode is None:
        return frozenset()
    spans, at = set(), 0
    for tid in vocab.encode(completion):
        piece = vocab.id_to_bytes.get(tid)
        if piece is None or not text.startswith(piece, at):
            return frozenset()
        spans.add((at, at + len(piece)))
        at += len(piece)
    return frozenset(spans) if at == len(text) else frozenset()


Step = tuple[int, int, bytes | None]  # (state, next state, bytes)


def _solve(cutter: _Cutter, count: int, n: int, canonical: frozenset[tuple[int, int]]):
    """For each position, the steps that lie on a best complete cut, or None when no cut
    exists. A cut costs one for each piece that is not a token of the canonical tokenization
    (a model samples its tokenizer's tokens far more often than other spellings)."""
    steps = [dict[int, list[tuple[int, bytes | None]]]() for _ in range(count)]
    best: list[dict[int, int]] = [{0: 0}]
    for i in range(count):
        nxt_best: dict[int, int] = {}
        for s, cost in best[i].items():
            steps[i][s] = cutter.steps(i, s)
            for nxt, _ in steps[i][s]:
                c = cost + (nxt != _END and (s, nxt) not in canonical)
                if c < nxt_best.get(nxt, 1 << 30):
                    nxt_best[nxt] = c
        best.append(nxt_best)
    finals = {s: c for s, c in best[count].items() if s in (n, _END)}
    if not finals:
        return None
    optimum = min(finals.values())
    rest: dict[int, int] = {s: 0 for s, c in finals.items() if c == optimum}  # cost to finish
    on_path: list[set[Step]] = [set() for _ in range(count)]
    for i in range(count - 1, -1, -1):
        before: dict[int, int] = {}
        for s, cost in best[i].items():
            for nxt, piece in steps[i][s]:
                c = nxt != _END and (s, nxt) not in canonical
                if nxt in rest and cost + c + rest[nxt] == optimum:
                    on_path[i].add((s, nxt, piece))
                    before[s] = c + rest[nxt]
        rest = before
    return on_path


def recover_token_bytes(
    positions: list[TokenLogprob],
    completion: str,
    given: Sequence[_Given],
    vocab: TokenVocab,
) -> Recovery:
    """Fill, in place, each position's bytes and id from the completion's UTF-8 where the
    server's lossy text allows exactly one reading; see the module docstring."""
    if len(given) != len(positions) or not positions:
        return Recovery()
    text = completion.encode("utf-8", "surrogatepass")
    canonical = _canonical_spans(text, completion, vocab)
    on_path = _solve(_Cutter(text, given, vocab), len(positions), len(text), canonical)
    if on_path is None:
        return Recovery()
    filled = ambiguous = dropped = 0
    for pos, steps, g in zip(positions, on_path, given, strict=True):
        pieces = {piece for _, _, piece in steps}
        if len(pieces) != 1:
            ambiguous += 1
            if g.token_id is None and g.data is None:  # unknown beats a lossy text's reading
                pos.bytes, pos.token_id = None, None
            continue
        (piece,) = pieces
        if piece is None:
            continue
        if pos.bytes is None or bytes(pos.bytes) != piece:
            filled += 1
        sampled_text = pos.token
        pos.bytes = list(piece)
        if g.token_id is None:  # an id read from the lossy text may name the wrong token
            pos.token_id = vocab.id_for(piece)
        if g.token_id is not None or g.data is not None:
            continue  # the server named its alternatives itself
        kept = []
        for alt in pos.top:
            if alt.token == sampled_text:  # the server wrote the sampled value under this key
                alt.bytes, alt.token_id = list(piece), pos.token_id
            elif alt.token == "" and alt.token_id is None and not alt.bytes:
                dropped += 1
                continue
            kept.append(alt)
        pos.top = kept
    return Recovery(filled, ambiguous, dropped, aligned=True)
