"""The prefix LRU and the per-row token choice (pure, no model)."""

from __future__ import annotations

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from apidistill.serve.prefix_cache import PrefixCache, PrefixKV, common_prefix_len
from apidistill.serve.sampling import RowSampler, SamplingParams, choose_tokens


def entry(tokens: list[int]) -> PrefixKV:
    n = len(tokens)
    k = torch.arange(n, dtype=torch.float32).view(1, n, 1).expand(2, n, 3).contiguous()
    return PrefixKV(tuple(tokens), [(k, k + 100)])


def test_common_prefix_len_across_chunk_boundaries():
    a = list(range(200))
    b = [*range(70), -1, *range(71, 200)]
    assert common_prefix_len(a, b) == 70
    assert common_prefix_len(a, a[:130]) == 130
    assert common_prefix_len(a, []) == 0


def test_longest_returns_the_best_entry_cut_to_the_shared_length():
    cache = PrefixCache(max_entries=4, max_tokens=1000)
    cache.put(entry([1, 2, 3, 4, 5]))
    cache.put(entry([1, 2, 9, 9]))
    hit = cache.longest((1, 2, 3, 4, 7, 8))
    assert hit is not None and hit.tokens == (1, 2, 3, 4)
    k, v = hit.layers[0]
    assert k.shape == (2, 4, 3) and k[0, :, 0].tolist() == [0, 1, 2, 3]
    assert v[0, :, 0].tolist() == [100, 101, 102, 103]
    assert cache.longest((5, 6)) is None
    assert cache.hits == 1 and cache.reused_tokens == 4


def test_lru_evicts_oldest_by_entries_and_by_tokens():
    cache = PrefixCache(max_entries=2, max_tokens=10)
    cache.put(entry([1, 1, 1]))
    cache.put(entry([2, 2, 2]))
    cache.longest((1, 1, 1))  # refresh entry 1
    cache.put(entry([3, 3, 3]))  # evicts entry 2, the least recently used
    assert cache.longest((2, 2, 2)) is None
    assert cache.longest((1, 1, 1)) is not None
    cache.put(entry([4] * 8))  # 3 + 8 > 10 tokens: the older entry goes
    assert cache.total_tokens <= 10 and len(cache) == 1


def test_a_longer_prefix_replaces_the_entries_it_extends():
    cache = PrefixCache(max_entries=4, max_tokens=100)
    cache.put(entry([1, 2]))
    cache.put(entry([1, 2, 3]))
    assert len(cache) == 1
    hit = cache.longest((1, 2, 3, 4))
    assert hit is not None and hit.tokens == (1, 2, 3)


def test_greedy_rows_take_the_argmax_and_report_raw_logprobs():
    torch.manual_seed(0)
    logits = torch.randn(3, 50) * 3
    rows = [
        RowSampler(SamplingParams(max_tokens=5, logprobs=True, top_logprobs=4)),
        RowSampler(SamplingParams(max_tokens=5)),
        # Sampled at a high temperature: logprobs are still of the raw distribution.
        RowSampler(
            SamplingParams(max_tokens=5, temperature=1.7, seed=3, logprobs=True, top_logprobs=2)
        ),
    ]
    choices = choose_tokens(logits, rows)
    raw = torch.log_softmax(logits, dim=-1)
    assert choices[0].token_id == int(logits[0].argmax())
    assert choices[1].token_id == int(logits[1].argmax()) and choices[1].logprob is None
    for i in (0, 2):
        c = choices[i]
        assert abs(c.logprob - float(raw[i, c.token_id])) < 1e-6
        values = [lp for _, lp in c.top]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        assert [t for t, _ in c.top] == raw[i].topk(len(c.top)).indices.tolist()
    assert len(choices[0].top) == 4 and len(choices[2].top) == 2


def test_seeded_sampling_repeats_and_differs_across_seeds():
    logits = torch.zeros(1, 64)  # flat: every token equally likely

    def draw(seed: int, index: int = 0) -> list[int]:
        row = RowSampler(SamplingParams(max_tokens=1, temperature=1.0, seed=seed), index)
        return [choose_tokens(logits, [row])[0].token_id for _ in range(30)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)
    assert draw(7, 0) != draw(7, 1)  # the n samples of one seeded request differ


def test_top_k_and_top_p_restrict_the_candidates():
    logits = torch.tensor([[5.0, 4.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    k2 = RowSampler(SamplingParams(max_tokens=1, temperature=2.0, top_k=2, seed=1))
    picks = {choose_tokens(logits, [k2])[0].token_id for _ in range(200)}
    assert picks == {0, 1}
    p_small = RowSampler(SamplingParams(max_tokens=1, temperature=1.0, top_p=0.5, seed=1))
    assert {choose_tokens(logits, [p_small])[0].token_id for _ in range(50)} == {0}
    # softmax: 0.651, 0.239, 0.088, ... — 0.85 needs two tokens, 0.9 needs three.
    p_85 = RowSampler(SamplingParams(max_tokens=1, temperature=1.0, top_p=0.85, seed=1))
    assert {choose_tokens(logits, [p_85])[0].token_id for _ in range(300)} == {0, 1}
    p_90 = RowSampler(SamplingParams(max_tokens=1, temperature=1.0, top_p=0.9, seed=1))
    assert {choose_tokens(logits, [p_90])[0].token_id for _ in range(400)} == {0, 1, 2}


@settings(max_examples=300, deadline=None)
@example(temperature=1e-40, top_p=None, top_k=None, scale=1.0)
@example(temperature=1.0, top_p=1e-46, top_k=None, scale=1.0)
@example(temperature=1e-38, top_p=1e-46, top_k=None, scale=30.0)
@given(
    temperature=st.floats(0.0, 2.0, allow_subnormal=True),
    top_p=st.none() | st.floats(0.0, 1.0, exclude_min=True, allow_subnormal=True),
    top_k=st.none() | st.integers(0, 40),
    scale=st.floats(0.01, 1e4),  # distinct logits: one argmax
)
def test_sampling_is_total_over_every_accepted_setting(temperature, top_p, top_k, scale):
    """Any temperature in [0, 2] and top_p in (0, 1] the APIs accept picks a real token; a
    draw that raised used to fail every other request in its batch. Settings that leave one
    candidate (temperature ~0, a tiny top_p) pick the argmax."""
    logits = (
        torch.linspace(-1.0, 1.0, 32)[
            torch.randperm(32, generator=torch.Generator().manual_seed(0))
        ]
        * scale
    )
    row = RowSampler(
        SamplingParams(max_tokens=1, temperature=temperature, top_p=top_p, top_k=top_k, seed=0)
    )
    token = row.sample(logits)
    assert 0 <= token < 32
    if temperature < 1e-5 or (top_p is not None and top_p < 1e-30) or top_k == 1:
        assert token == int(torch.argmax(logits))
