"""The compact logprob layout, property-tested: exact tokens, float16-exact values (fp16),
and q8 reconstructions that stay a valid top-k + tail distribution."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from apidistill.data.compact import (
    TokenTable,
    decode_logprobs,
    encode_logprobs,
    from_arrays,
    from_planes,
    to_arrays,
    to_planes,
)
from apidistill.records import TokenLogprob, TopLogprob

_lp = st.one_of(
    st.floats(min_value=-30, max_value=0, allow_nan=False),
    st.sampled_from([0.0, -9999.0, float("-inf"), -1e-7]),
)
_tok = st.tuples(
    st.one_of(st.none(), st.integers(0, 300_000)),
    st.text(max_size=4),
)


@st.composite
def positions(draw: st.DrawFn) -> list[TokenLogprob]:
    t = draw(st.integers(0, 12))
    k = draw(st.integers(0, 6))
    out = []
    for _ in range(t):
        top = [
            TopLogprob(
                token_id=i, token=s, bytes=list(s.encode("utf-8", "surrogatepass")), logprob=v
            )
            for (i, s), v in zip(
                draw(st.lists(_tok, min_size=k, max_size=k)),
                draw(st.lists(_lp, min_size=k, max_size=k)),
                strict=True,
            )
        ]
        if top and draw(st.booleans()):
            pick = top[draw(st.integers(0, len(top) - 1))]
            out.append(TokenLogprob(**pick.model_dump(), top=top))
        else:
            i, s = draw(_tok)
            out.append(TokenLogprob(token_id=i, token=s, bytes=None, logprob=draw(_lp), top=top))
    return out


def _round_trip(lps: list[TokenLogprob], codec: str) -> list[TokenLogprob]:
    table = TokenTable()
    arr = to_arrays(lps, table)
    enc = encode_logprobs(arr, codec, len(table))  # type: ignore[arg-type]
    return from_arrays(decode_logprobs(enc, codec), table)  # type: ignore[arg-type]


def _f16(x: float) -> float:
    return float(np.float16(x))


@settings(max_examples=150, deadline=None)
@given(lps=positions())
def test_fp16_round_trip_is_exact_to_float16(lps: list[TokenLogprob]) -> None:
    back = _round_trip(lps, "fp16")
    assert len(back) == len(lps)
    for a, b in zip(lps, back, strict=True):
        assert (a.token_id, a.token, a.bytes) == (b.token_id, b.token, b.bytes)
        assert b.logprob == _f16(a.logprob)
        assert [(t.token_id, t.token, t.bytes) for t in a.top] == [
            (t.token_id, t.token, t.bytes) for t in b.top
        ]
        assert [t.logprob for t in b.top] == [_f16(t.logprob) for t in a.top]


@settings(max_examples=150, deadline=None)
@given(lps=positions())
def test_q8_keeps_tokens_and_a_valid_distribution(lps: list[TokenLogprob]) -> None:
    back = _round_trip(lps, "q8")
    for a, b in zip(lps, back, strict=True):
        assert (a.token_id, a.token) == (b.token_id, b.token)
        assert [t.token for t in a.top] == [t.token for t in b.top]
        mass = sum(np.exp(t.logprob) for t in b.top)
        assert mass <= 1 + 1e-9
        for u, v in zip(a.top, b.top, strict=True):
            assert (u.logprob == float("-inf")) == (v.logprob == float("-inf"))


def test_q8_kl_on_normalized_distributions() -> None:
    rng = np.random.default_rng(0)
    kls = []
    for _ in range(300):
        p = np.sort(rng.dirichlet(np.full(50, rng.uniform(0.05, 2))))[::-1]
        top = [
            TopLogprob(token_id=i, token=str(i), logprob=float(np.log(x)))
            for i, x in enumerate(p[:20])
        ]
        lps = [TokenLogprob(**top[0].model_dump(), top=top)]
        q = np.exp([t.logprob for t in _round_trip(lps, "q8")[0].top])
        pp = np.append(p[:20], 1 - p[:20].sum())
        qq = np.append(q, max(1 - q.sum(), 1e-300))
        mask = pp > 0
        kls.append(float(np.sum(pp[mask] * np.log(pp[mask] / qq[mask]))))
    assert np.mean(kls) < 1e-4 and np.max(kls) < 1e-3


@given(vals=st.lists(st.integers(0, 2**32 - 1), max_size=50), nbytes=st.integers(1, 4))
def test_byte_planes_round_trip(vals: list[int], nbytes: int) -> None:
    arr = np.array([v % (1 << (8 * nbytes)) for v in vals], dtype=np.int64)
    assert from_planes(to_planes(arr, nbytes), nbytes, len(arr)).tolist() == arr.tolist()


def test_token_table_bytes_round_trip_keeps_quirks() -> None:
    import pytest

    from apidistill.errors import DataError

    t = TokenTable()
    t.add(5, "a", [97])
    t.add(None, "x", [])  # empty bytes differ from "no bytes"
    t.add(2**31 - 1, "\udce2", None)  # lone surrogate from a partial-byte token
    t.add(0, "é", [1, 2])  # bytes that are not the text's UTF-8
    back = TokenTable.from_bytes(t.to_bytes())
    assert back.entries == t.entries
    assert back.token_ids().tolist() == [-1, 5, -1, 2**31 - 1, 0]
    with pytest.raises(DataError, match="outside"):
        t.add(2**31, "big", None)
