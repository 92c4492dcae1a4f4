"""Batched, prefix-cached decoding gives exactly what decoding each prompt alone gives."""

from __future__ import annotations

import pytest
import torch

from apidistill.serve.decoding import BatchRunner, SeqRequest
from apidistill.serve.prefix_attention import enable_shared_prefix
from apidistill.serve.prefix_cache import PrefixCache
from apidistill.serve.sampling import SamplingParams
from apidistill.serve.sequence import SeqEvent

PREFIX = list(range(10, 60))  # 50 shared tokens, like a few-shot prompt
PROMPTS = [
    [*PREFIX, 70, 71, 72],
    [*PREFIX, 80],
    [*PREFIX, 90, 91, 92, 93, 94, 95, 96],
    [*PREFIX, 70, 71, 5],  # shares 52 tokens with the first
]


@torch.inference_mode()
def reference_greedy(model, prompt: list[int], n: int, stop_ids: frozenset[int] = frozenset()):
    """Plain one-sequence greedy decoding with full raw logprobs, no padding, no tricks."""
    ids = list(prompt)
    out, lps = [], []
    for _ in range(n):
        logits = model(torch.tensor([ids])).logits[0, -1]
        t = int(logits.argmax())
        if t in stop_ids:
            break
        out.append(t)
        lps.append(float(torch.log_softmax(logits, -1)[t]))
        ids.append(t)
    return out, lps


def run_batch(runner: BatchRunner, prompts, params_list):
    events: dict[int, list[SeqEvent]] = {i: [] for i in range(len(prompts))}
    reqs = [
        SeqRequest(p, params, events[i].append)
        for i, (p, params) in enumerate(zip(prompts, params_list, strict=True))
    ]
    runner.run(reqs)
    results = []
    for i in range(len(prompts)):
        evs = events[i]
        assert all(e.error is None for e in evs), [e.error for e in evs]
        fin = evs[-1].finish
        assert fin is not None
        steps = [s for e in evs for s in e.steps]
        results.append((fin, steps, evs[0]))
    return results


def make_runner(model, *, shared: bool, cache: bool) -> BatchRunner:
    if shared:
        assert enable_shared_prefix(model)
    return BatchRunner(
        model,
        decode=lambda ids: ",".join(map(str, ids)),
        pad_id=0,
        prefix_cache=PrefixCache() if cache else None,
        shared_attention=shared,
    )


@pytest.mark.parametrize(
    ("shared", "cache"),
    [(True, True), (False, True), (True, False)],
    ids=["shared", "copied", "nocache"],
)
def test_batched_greedy_equals_unbatched(tiny_lm, shared, cache):
    max_new = [12, 5, 9, 12]
    refs = [reference_greedy(tiny_lm, p, n) for p, n in zip(PROMPTS, max_new, strict=True)]
    runner = make_runner(tiny_lm, shared=shared, cache=cache)
    params = [SamplingParams(max_tokens=n, logprobs=True) for n in max_new]
    for round_ in range(2):  # the second round reuses the cached prefix
        results = run_batch(runner, PROMPTS, params)
        for (fin, steps, first), (ref_ids, ref_lps) in zip(results, refs, strict=True):
            assert [s.token_id for s in steps] == ref_ids
            assert fin.reason == "length"
            assert max(abs(s.logprob - r) for s, r in zip(steps, ref_lps, strict=True)) < 1e-4
            assert first.prompt_tokens in {len(p) for p in PROMPTS}
            if cache and round_ == 1:
                assert first.cached_tokens == len(PREFIX)
    if cache:
        assert runner.prefix_cache is not None and runner.prefix_cache.hits >= 1


def test_rows_that_stop_early_leave_the_batch_without_disturbing_others(tiny_lm):
    ref0, _ = reference_greedy(tiny_lm, PROMPTS[0], 12)
    stop = frozenset({ref0[3]})  # row 0 hits this "EOS" at its 4th token
    refs = [reference_greedy(tiny_lm, p, 12, stop) for p in PROMPTS]
    runner = make_runner(tiny_lm, shared=True, cache=True)
    params = [SamplingParams(max_tokens=12, stop_token_ids=stop) for _ in PROMPTS]
    results = run_batch(runner, PROMPTS, params)
    assert results[0][0].reason == "stop" and len(results[0][1]) == 3
    for (fin, steps, _), (ref_ids, _) in zip(results, refs, strict=True):
        assert [s.token_id for s in steps] == ref_ids
        assert fin.reason == ("stop" if len(ref_ids) < 12 else "length")


def test_prompts_with_no_common_prefix_and_uneven_lengths(tiny_lm):
    prompts = [[5, 6, 7, 8, 9, 10, 11], [200], [33, 34]]
    refs = [reference_greedy(tiny_lm, p, 6)[0] for p in prompts]
    runner = make_runner(tiny_lm, shared=True, cache=True)
    results = run_batch(runner, prompts, [SamplingParams(max_tokens=6)] * 3)
    assert [[s.token_id for s in steps] for _, steps, _ in results] == refs


def test_echo_scores_every_prompt_token_like_a_direct_forward_pass(tiny_lm):
    prompt = PROMPTS[2]
    runner = make_runner(tiny_lm, shared=True, cache=True)
    req_params = SamplingParams(max_tokens=0, logprobs=True, top_logprobs=3)
    events: list[SeqEvent] = []
    runner.run([SeqRequest(prompt, req_params, events.append, prompt_logprobs=True)])
    first = events[0]
    assert events[-1].finish is not None and events[-1].finish.token_count == 0
    steps = first.prompt_steps
    assert steps is not None and steps[0] is None and len(steps) == len(prompt)
    with torch.inference_mode():
        lp = torch.log_softmax(tiny_lm(torch.tensor([prompt])).logits[0], -1)
    for pos in range(1, len(prompt)):
        s = steps[pos]
        assert s is not None and s.token_id == prompt[pos]
        assert abs(s.logprob - float(lp[pos - 1, prompt[pos]])) < 1e-4
        assert [t for t, _ in s.top] == lp[pos - 1].topk(3).indices.tolist()


def test_cancelled_rows_stop_and_the_rest_finish(tiny_lm):
    runner = make_runner(tiny_lm, shared=True, cache=True)
    seen: list[SeqEvent] = []
    reqs: list[SeqRequest] = []

    def cancel_after_two(ev: SeqEvent) -> None:
        seen.append(ev)
        if len(seen) == 2:
            reqs[0].cancelled = True

    other: list[SeqEvent] = []
    reqs.append(SeqRequest(PROMPTS[0], SamplingParams(max_tokens=20), cancel_after_two))
    reqs.append(SeqRequest(PROMPTS[1], SamplingParams(max_tokens=20), other.append))
    runner.run(reqs)
    assert len(seen) == 2 and seen[-1].finish is None
    assert other[-1].finish is not None and len(other) == 20
    assert all(r.done for r in reqs)


def test_a_failing_batch_reports_the_error_to_every_sequence(tiny_lm):
    runner = make_runner(tiny_lm, shared=True, cache=False)
    got: list[SeqEvent] = []
    bad = SeqRequest([10**6], SamplingParams(max_tokens=3), got.append)  # id out of vocab
    ok = SeqRequest([1, 2, 3], SamplingParams(max_tokens=3), got.append)
    runner.run([bad, ok])
    assert len(got) == 2 and all(isinstance(e.error, Exception) for e in got)
    # The runner still works afterwards.
    results = run_batch(runner, [[1, 2, 3]], [SamplingParams(max_tokens=3)])
    assert len(results[0][1]) == 3
