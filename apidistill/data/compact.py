"""Compact per-token logprob encoding: a token table, byte-plane indices, 16- or 8-bit logprobs.

Provider JSON spends about 1.5 KB per generated token on top-20 logprobs. Here each distinct
token (id, text, bytes) is stored once per shard in a :class:`TokenTable`, numbered by
frequency; positions refer to it by index, stored as byte planes (all low bytes, then the
high bytes) so that Parquet's zstd squeezes the mostly-zero high planes — smaller than fixed
17-bit packing, which hides that redundancy. The sampled token is nearly always one of the
top-k, so it is stored as its rank (one byte) with the rare exceptions kept apart.

Logprobs are float16 (``fp16``, the default: the round trip is exact to float16) or ``q8``:
one byte per entry holding the share r_i of the still-unassigned probability mass that entry
i takes (stick-breaking), on a grid uniform in arcsin(√r). Then no reconstruction sums above
1 and the tail mass 1 − Σp — which top-k + tail distillation needs — keeps its relative
precision; independent 8-bit logprobs lose it (measured on SmolLM2-135M softmaxes at K=20:
mean KL 3.8e-3 for 8-bit codes on a log(−logprob) grid, 3.4e-5 for this one).

Token ids are real teacher token ids when the teacher's vocabulary is known; for API teachers
(``token_id is None``) the table holds the tokens' text and UTF-8 bytes instead, so the same
layout serves both.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from apidistill.errors import DataError
from apidistill.records import TokenLogprob, TopLogprob

__all__ = [
    "CODECS",
    "EncodedLogprobs",
    "LogprobArrays",
    "LogprobCodec",
    "TokenArrays",
    "TokenTable",
    "decode_logprobs",
    "encode_logprobs",
    "from_arrays",
    "from_planes",
    "index_bytes",
    "q8_codebook",
    "remap",
    "to_arrays",
    "to_planes",
]

LogprobCodec = Literal["fp16", "q8"]
CODECS: tuple[LogprobCodec, ...] = ("fp16", "q8")
NOT_IN_TOP = 255  # rank value: the sampled token is not among the stored top-k
MAX_TOP = 254

_Key = tuple[int | None, str, tuple[int, ...] | None]


@dataclass
class TokenTable:
    """The distinct tokens of a shard (or of one record in the write-ahead file).

    Index 0 is reserved for "no token" (padding of a short top list); real entries start at 1.
    """

    entries: list[_Key] = field(default_factory=lambda: [(None, "", None)])
    _index: dict[_Key, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {k: i for i, k in enumerate(self.entries) if i}

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, token_id: int | None, token: str, raw: list[int] | None) -> int:
        if token_id is not None and not 0 <= token_id < 2**31:
            raise DataError(
                f"token id {token_id} is outside 0 … 2³¹−1", hint="check the teacher's tokenizer"
            )
        key = (token_id, token, tuple(raw) if raw is not None else None)
        idx = self._index.get(key)
        if idx is None:
            idx = len(self.entries)
            self.entries.append(key)
            self._index[key] = idx
        return idx

    def token_ids(self) -> np.ndarray:
        """int64 lookup: table index → teacher token id (−1 when unknown or padding)."""
        return np.array([-1 if e[0] is None else e[0] for e in self.entries], dtype=np.int64)

    def to_json(self) -> list[list[Any]]:
        """Entries after the padding slot, as ``[token_id, token, bytes]``; ``bytes`` is 1 when
        it equals the token's UTF-8 encoding (the common case, kept short)."""
        return [[tid, tok, _raw_json(tok, raw)] for tid, tok, raw in self.entries[1:]]

    @classmethod
    def from_json(cls, items: list[list[Any]]) -> TokenTable:
        entries: list[_Key] = [(None, "", None)]
        entries += [(tid, tok, _raw_from_json(tok, raw)) for tid, tok, raw in items]
        return cls(entries)

    def to_bytes(self) -> bytes:
        """Compact form stored once per shard (Parquet footer): zstd over the JSON of
        ``[token, bytes]`` pairs followed by the token ids as int32 byte planes (−1 =
        unknown), which compress to about 2 bytes per id where JSON digits took 4."""
        import pyarrow as pa

        pairs = [[tok, _raw_json(tok, raw)] for _, tok, raw in self.entries[1:]]
        blob = json.dumps(pairs, separators=(",", ":")).encode("utf-8")
        ids = self.token_ids()[1:].astype("<i4").view("<u4")
        body = blob + to_planes(ids, 4)
        head = len(blob).to_bytes(8, "little") + len(ids).to_bytes(8, "little")
        return head + pa.compress(body, codec="zstd", asbytes=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> TokenTable:
        import pyarrow as pa

        size, count = int.from_bytes(data[:8], "little"), int.from_bytes(data[8:16], "little")
        body = pa.decompress(
            data[16:], decompressed_size=size + 4 * count, codec="zstd", asbytes=True
        )
        pairs = json.loads(body[:size])
        ids = from_planes(body[size:], 4, count).astype("<u4").view("<i4")
        if len(pairs) != count:
            raise DataError(f"token table holds {len(pairs)} tokens but {count} ids")
        entries: list[_Key] = [(None, "", None)]
        for tid, (tok, raw) in zip(ids.tolist(), pairs, strict=True):
            entries.append((None if tid < 0 else tid, tok, _raw_from_json(tok, raw)))
        return cls(entries)


def _raw_json(token: str, raw: tuple[int, ...] | None) -> Any:
    if raw is not None and _utf8(token) == raw:
        return 1
    return list(raw) if raw is not None else None


def _raw_from_json(token: str, raw: Any) -> tuple[int, ...] | None:
    if raw == 1:
        return _utf8(token)
    return tuple(raw) if raw is not None else None


def _utf8(token: str) -> tuple[int, ...] | None:
    try:
        return tuple(token.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates from a provider's partial-byte token
        return None


@dataclass
class LogprobArrays:
    """One record's logprobs as table indices + float64 values (exact; before quantizing)."""

    idx: np.ndarray  # int64[T] table index of the sampled token
    logprobs: np.ndarray  # float64[T]
    top_idx: np.ndarray  # int64[T, K] table index, 0 = padding
    top_logprobs: np.ndarray  # float64[T, K], −inf at padding


@dataclass
class TokenArrays:
    """The training fast path: teacher token ids and logprobs of one record as arrays.

    Ids are the teacher's token ids (−1 where unknown, e.g. API teachers, and at padding);
    ``topk_logprobs`` is −inf at padding.
    """

    ids: np.ndarray  # int64[T]
    logprobs: np.ndarray  # float32[T]
    topk_ids: np.ndarray  # int64[T, K]
    topk_logprobs: np.ndarray  # float32[T, K]


def to_arrays(
    logprobs: list[TokenLogprob], table: TokenTable, *, record_id: str = "?"
) -> LogprobArrays:
    """Index every token in ``table`` (growing it) and lay the values out as arrays."""
    t = len(logprobs)
    k = max((len(p.top) for p in logprobs), default=0)
    if k > MAX_TOP:
        raise DataError(f"record {record_id!r}: {k} top logprobs per token; at most {MAX_TOP}")
    idx = np.zeros(t, dtype=np.int64)
    vals = np.zeros(t, dtype=np.float64)
    top_idx = np.zeros((t, k), dtype=np.int64)
    top_vals = np.full((t, k), -np.inf, dtype=np.float64)
    for i, pos in enumerate(logprobs):
        idx[i] = table.add(pos.token_id, pos.token, pos.bytes)
        vals[i] = pos.logprob
        for j, alt in enumerate(pos.top):
            top_idx[i, j] = table.add(alt.token_id, alt.token, alt.bytes)
            top_vals[i, j] = alt.logprob
    if np.isnan(vals).any() or np.isnan(top_vals).any():
        raise DataError(
            f"record {record_id!r}: a logprob is NaN",
            hint="drop the record or fix the teacher's logprob parsing (teachers/logprobs.py)",
        )
    return LogprobArrays(idx, vals, top_idx, top_vals)


def from_arrays(arr: LogprobArrays, table: TokenTable) -> list[TokenLogprob]:
    """Rebuild pydantic logprobs (validation skipped: the values came from our own store)."""
    entries = table.entries
    out: list[TokenLogprob] = []
    top_idx = arr.top_idx.tolist()
    top_vals = arr.top_logprobs.tolist()
    for i, (sel, val) in enumerate(zip(arr.idx.tolist(), arr.logprobs.tolist(), strict=True)):
        top = [
            TopLogprob.model_construct(
                token_id=entries[j][0],
                token=entries[j][1],
                bytes=list(entries[j][2]) if entries[j][2] is not None else None,
                logprob=v,
            )
            for j, v in zip(top_idx[i], top_vals[i], strict=True)
            if j
        ]
        tid, tok, raw = entries[sel]
        out.append(
            TokenLogprob.model_construct(
                token_id=tid,
                token=tok,
                bytes=list(raw) if raw is not None else None,
                logprob=val,
                top=top,
            )
        )
    return out


# --------------------------------------------------------------------------- byte planes


def to_planes(values: np.ndarray, nbytes: int) -> bytes:
    """Little-endian unsigned ints as byte planes (all low bytes, then the next byte, ...).

    Fixed-width integers and float16 bit patterns compress far better this way: the high
    planes of frequency-ordered token indices and of logprobs are nearly constant, which
    zstd (Parquet's page compression) then squeezes; bit packing would hide that.
    """
    flat = np.ascontiguousarray(values, dtype="<u4").ravel()
    if nbytes == 0 or flat.size == 0:
        return b""
    return flat.view(np.uint8).reshape(-1, 4)[:, :nbytes].T.tobytes()


def from_planes(data: bytes, nbytes: int, count: int) -> np.ndarray:
    if nbytes == 0 or count == 0:
        return np.zeros(count, dtype=np.int64)
    if len(data) != count * nbytes:
        raise DataError(f"stored token data has {len(data)} bytes, expected {count * nbytes}")
    planes = np.frombuffer(data, dtype=np.uint8).reshape(nbytes, count).astype(np.int64)
    shifts = (8 * np.arange(nbytes, dtype=np.int64))[:, None]
    return (planes << shifts).sum(axis=0)


def index_bytes(table_size: int) -> int:
    """Bytes per token index for a table of this size (1 to 4)."""
    return max(1, ((table_size - 1).bit_length() + 7) // 8)


# --------------------------------------------------------------------------- logprob codecs


def _fp16_encode(x: np.ndarray) -> bytes:
    with np.errstate(over="ignore"):
        half = np.ascontiguousarray(x, dtype="<f2").ravel()
    return to_planes(half.view("<u2"), 2)


def _fp16_decode(data: bytes, count: int) -> np.ndarray:
    bits = from_planes(data, 2, count).astype("<u2")
    return bits.view("<f2").astype(np.float64)


def q8_codebook() -> np.ndarray:
    """The 256 values of the ``q8`` code for a stick-breaking fraction r ∈ [0, 1].

    Code 0 is exactly 0 (a −inf logprob, padding). Codes 1…255 are the centres of a grid
    uniform in θ = arcsin(√r): the variance-stabilizing transform of a Bernoulli share,
    under which a quantization step costs the same KL wherever r lies.
    """
    step = (np.pi / 2) / 255
    return np.concatenate([[0.0], np.sin((np.arange(255) + 0.5) * step) ** 2])


_Q8 = q8_codebook()
_Q8_EDGES = (_Q8[:-1] + _Q8[1:]) / 2  # nearest code in r (the grid is fine where r is small)


def _q8_encode(x: np.ndarray) -> bytes:
    """Stick-breaking: each top-list probability as the share r_i it takes of the mass the
    earlier entries left, so the tail mass 1 − Σp is kept with relative precision (it is the
    product of the (1 − r_i)) and no reconstruction can sum above 1."""
    p = np.exp(np.where(np.isfinite(x), np.minimum(x, 0.0), -np.inf))
    before = np.cumsum(p, axis=1) - p
    remaining = np.maximum(1.0 - before, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(remaining > 0, p / remaining, 0.0)
    codes = np.searchsorted(_Q8_EDGES, np.clip(r, 0.0, 1.0), side="left").astype(np.uint8)
    codes[np.isfinite(x) & (codes == 0)] = 1  # a real token never decodes to probability 0
    return codes.tobytes()


def _q8_decode(data: bytes, t: int, k: int) -> np.ndarray:
    if len(data) != t * k:
        raise DataError(f"stored logprobs have {len(data)} bytes, expected {t * k}")
    r = _Q8[np.frombuffer(data, dtype=np.uint8).reshape(t, k)]
    left = np.cumprod(1.0 - r, axis=1)
    remaining = np.concatenate([np.ones((t, 1)), left[:, :-1]], axis=1) if k else left
    with np.errstate(divide="ignore"):
        return np.log(r * remaining)


def _encode_top(x: np.ndarray, codec: LogprobCodec) -> bytes:
    return _fp16_encode(x) if codec == "fp16" else _q8_encode(x)


def _decode_top(data: bytes, codec: LogprobCodec, t: int, k: int) -> np.ndarray:
    if codec == "fp16":
        return _fp16_decode(data, t * k).reshape(t, k)
    return _q8_decode(data, t, k)


# --------------------------------------------------------------------------- row encoding


_BLOBS = ("top_idx", "top_lp", "rank", "extra_idx", "extra_lp")


@dataclass
class EncodedLogprobs:
    """The stored form of one record's logprobs (the ``lp_*`` columns of a shard row)."""

    t: int
    k: int
    index_bytes: int
    top_idx: bytes  # byte planes of int[T*K] table indices
    top_lp: bytes  # codec[T*K]
    rank: bytes  # uint8[T]: rank of the sampled token in its top list, or NOT_IN_TOP
    extra_idx: bytes  # byte planes of int[E]: the E sampled tokens not in their top list
    extra_lp: bytes  # float16 byte planes [E] (rare: kept precise whatever the codec)

    def nbytes(self) -> int:
        return sum(len(getattr(self, n)) for n in _BLOBS)

    def to_wire(self) -> dict[str, Any]:
        """JSON-safe form (write-ahead file)."""
        out: dict[str, Any] = {"t": self.t, "k": self.k, "w": self.index_bytes}
        for name in _BLOBS:
            out[name] = base64.b64encode(getattr(self, name)).decode("ascii")
        return out

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> EncodedLogprobs:
        blobs = {n: base64.b64decode(d[n]) for n in _BLOBS}
        return cls(t=int(d["t"]), k=int(d["k"]), index_bytes=int(d["w"]), **blobs)


def encode_logprobs(arr: LogprobArrays, codec: LogprobCodec, table_size: int) -> EncodedLogprobs:
    """Quantize and lay out one record; the sampled token becomes its rank in the top list
    when it is there with the same value (nearly always), else an explicit extra entry."""
    t, k = arr.top_idx.shape
    width = index_bytes(table_size)
    rank = np.full(t, NOT_IN_TOP, dtype=np.uint8)
    if k:
        same = (arr.top_idx == arr.idx[:, None]) & (arr.top_logprobs == arr.logprobs[:, None])
        hit = same.any(axis=1)
        rank[hit] = same[hit].argmax(axis=1)
    extra = rank == NOT_IN_TOP
    return EncodedLogprobs(
        t=t,
        k=k,
        index_bytes=width,
        top_idx=to_planes(arr.top_idx, width),
        top_lp=_encode_top(arr.top_logprobs, codec),
        rank=rank.tobytes(),
        extra_idx=to_planes(arr.idx[extra], width),
        extra_lp=_fp16_encode(arr.logprobs[extra]),
    )


def decode_logprobs(enc: EncodedLogprobs, codec: LogprobCodec) -> LogprobArrays:
    t, k = enc.t, enc.k
    rank = np.frombuffer(enc.rank, dtype=np.uint8).astype(np.int64)
    if rank.size != t:
        raise DataError(f"stored token ranks have {rank.size} entries, expected {t}")
    top_idx = from_planes(enc.top_idx, enc.index_bytes, t * k).reshape(t, k)
    top_lp = _decode_top(enc.top_lp, codec, t, k)
    top_lp[top_idx == 0] = -np.inf
    extra = rank == NOT_IN_TOP
    n_extra = int(extra.sum())
    idx = np.empty(t, dtype=np.int64)
    vals = np.empty(t, dtype=np.float64)
    idx[extra] = from_planes(enc.extra_idx, enc.index_bytes, n_extra)
    vals[extra] = _fp16_decode(enc.extra_lp, n_extra)
    hit = ~extra
    if hit.any():
        if (rank[hit] >= max(k, 1)).any():
            raise DataError("a stored token rank points past its top list")
        rows = np.nonzero(hit)[0]
        idx[hit] = top_idx[rows, rank[hit]]
        vals[hit] = top_lp[rows, rank[hit]]
    return LogprobArrays(idx, vals, top_idx, top_lp)


def remap(arr: LogprobArrays, mapping: np.ndarray) -> LogprobArrays:
    """Move indices from one token table to another (``mapping[old] = new``, 0 → 0)."""
    return LogprobArrays(mapping[arr.idx], arr.logprobs, mapping[arr.top_idx], arr.top_logprobs)
