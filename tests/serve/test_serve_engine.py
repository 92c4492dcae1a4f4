"""The in-process ServeEngine API on a tiny model with a byte-level tokenizer built in code."""

from __future__ import annotations

import asyncio

import pytest
import torch

from apidistill.errors import ConfigError
from apidistill.records import GenerationParams, Message
from apidistill.serve.engine import ServeEngine

CHAT = [
    Message(role="system", content="You extract order ids."),
    Message(role="user", content="Order 1234 is late."),
]


@pytest.fixture
def engine(tiny_lm, byte_tokenizer):
    eng = ServeEngine(
        tiny_lm, byte_tokenizer, model_name="tiny", max_batch_size=8, gather_window_s=0.05
    )
    yield eng
    eng.close()


def greedy(max_tokens: int = 12, **kw) -> GenerationParams:
    return GenerationParams(max_tokens=max_tokens, temperature=0.0, **kw)


async def test_greedy_chat_is_deterministic_and_usage_matches_the_count(engine, byte_tokenizer):
    (a,) = await engine.generate(CHAT, None, greedy(logprobs=True, top_logprobs=5))
    (b,) = await engine.generate(CHAT, None, greedy())
    assert a.text == b.text and a.token_ids == b.token_ids
    assert a.prompt_tokens == engine.count_prompt_tokens(CHAT)
    rendered = byte_tokenizer.apply_chat_template(
        [m.model_dump() for m in CHAT], tokenize=False, add_generation_prompt=True
    )
    assert a.prompt_tokens == len(byte_tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert a.completion_tokens >= len(a.token_ids) and a.finish_reason in ("stop", "length")
    assert a.logprobs is not None and [lp.token_id for lp in a.logprobs] == a.token_ids
    # Token bytes rebuild the text exactly; top lists are sorted and include the greedy pick.
    assert b"".join(bytes(lp.bytes or []) for lp in a.logprobs).decode("utf-8", "replace") == a.text
    for lp in a.logprobs:
        tops = [t.logprob for t in lp.top]
        assert len(tops) == 5 and tops == sorted(tops, reverse=True) and tops[0] <= 0
        assert lp.top[0].token_id == lp.token_id and lp.top[0].logprob == lp.logprob


async def test_logprobs_match_a_direct_forward_pass(engine, tiny_lm):
    (out,) = await engine.generate(CHAT, None, greedy(max_tokens=6, logprobs=True))
    ids = engine.encode_messages(CHAT)
    with torch.inference_mode():
        logits = tiny_lm(torch.tensor([ids + out.token_ids])).logits[0]
    lp = torch.log_softmax(logits, -1)
    for i, entry in enumerate(out.logprobs or []):
        assert abs(entry.logprob - float(lp[len(ids) - 1 + i, entry.token_id])) < 1e-4


async def test_concurrent_requests_share_batches_and_match_single_runs(engine):
    chats = [[*CHAT[:1], Message(role="user", content=f"Order {i}{i} is late.")] for i in range(6)]
    singles = [(await engine.generate(c, None, greedy()))[0] for c in chats]
    before = engine.stats.batches
    together = await asyncio.gather(*(engine.generate(c, None, greedy()) for c in chats))
    assert engine.stats.batches - before < len(chats)
    assert engine.stats.largest_batch >= 2
    assert [t[0].token_ids for t in together] == [s.token_ids for s in singles]
    assert [t[0].text for t in together] == [s.text for s in singles]
    assert max(t[0].cached_tokens for t in together) > 0  # the system turn came from the cache


async def test_requests_trickling_in_still_share_one_batch(tiny_lm, byte_tokenizer):
    """Arrivals 15 ms apart with a 40 ms quiet-gap window: one batch, not five."""
    eng = ServeEngine(tiny_lm, byte_tokenizer, max_batch_size=8, gather_window_s=0.04)

    async def later(i: int):
        await asyncio.sleep(0.015 * i)
        return await eng.generate(None, f"ticket {i}", greedy(max_tokens=3))

    try:
        await asyncio.gather(*(later(i) for i in range(5)))
        assert eng.stats.batches == 1 and eng.stats.largest_batch == 5
    finally:
        eng.close()


async def test_n_samples_seeded_repeat_and_differ(engine):
    params = GenerationParams(max_tokens=10, temperature=1.0, seed=11)
    first = await engine.generate(CHAT, None, params, n=3)
    again = await engine.generate(CHAT, None, params, n=3)
    assert [o.index for o in first] == [0, 1, 2]
    assert [o.token_ids for o in first] == [o.token_ids for o in again]
    assert len({tuple(o.token_ids) for o in first}) > 1


async def test_stop_string_cuts_the_text(engine):
    (full,) = await engine.generate(None, "abc", greedy(max_tokens=16))
    stop = full.text[5:7]
    assert len(stop) == 2 and stop not in full.text[:5]
    (cut,) = await engine.generate(None, "abc", greedy(max_tokens=16, stop=[stop]))
    assert cut.finish_reason == "stop" and cut.stop_sequence == stop
    assert cut.text == full.text[: full.text.index(stop)]


async def test_stream_yields_the_same_text_and_logprobs(engine):
    (ref,) = await engine.generate(CHAT, None, greedy(logprobs=True))
    deltas = [d async for d in engine.stream(CHAT, None, greedy(logprobs=True))]
    assert "".join(d.text for d in deltas) == ref.text
    assert deltas[-1].output is not None and deltas[-1].finish_reason == ref.finish_reason
    streamed = [lp.token_id for d in deltas for lp in (d.logprobs or [])]
    assert streamed == ref.token_ids


async def test_closing_a_stream_cancels_it_and_the_engine_keeps_serving(engine):
    stream = engine.stream(None, "abc", greedy(max_tokens=200, extra_body={"ignore_eos": True}))
    async for _ in stream:
        break
    await stream.aclose()
    (out,) = await engine.generate(None, "abc", greedy(max_tokens=3))
    assert len(out.token_ids) == 3


async def test_token_id_mode_and_scoring(engine, tiny_lm):
    params = greedy(
        max_tokens=4, logprobs=True, top_logprobs=2, extra_body={"return_tokens_as_token_ids": True}
    )
    (out,) = await engine.generate(None, "abc", params)
    assert [lp.token for lp in out.logprobs or []] == [f"token_id:{t}" for t in out.token_ids]
    scored = await engine.score(prompt="hello world", top_logprobs=3)
    assert scored.token_ids == [] and scored.prompt_logprobs is not None
    ids = engine.encode_prompt("hello world")
    assert scored.prompt_logprobs[0] is None and len(scored.prompt_logprobs) == len(ids)
    with torch.inference_mode():
        lp = torch.log_softmax(tiny_lm(torch.tensor([ids])).logits[0], -1)
    for pos in range(1, len(ids)):
        entry = scored.prompt_logprobs[pos]
        assert entry is not None and entry.token_id == ids[pos]
        assert abs(entry.logprob - float(lp[pos - 1, ids[pos]])) < 1e-4


async def test_bad_requests_raise_config_errors_naming_the_field(engine):
    with pytest.raises(ConfigError, match="max_tokens"):
        await engine.generate(None, "abc", greedy(max_tokens=5000))
    with pytest.raises(ConfigError, match="messages"):
        await engine.generate([], None, greedy())
    with pytest.raises(ConfigError, match="exactly one"):
        await engine.generate(CHAT, "abc", greedy())
    with pytest.raises(ConfigError, match="top_k"):
        await engine.generate(None, "abc", greedy(extra_body={"top_k": "many"}))


def test_engine_serves_several_event_loops_in_turn(engine):
    a = asyncio.run(engine.generate(None, "abc", greedy(max_tokens=4)))
    b = asyncio.run(engine.generate(None, "abc", greedy(max_tokens=4)))
    assert a[0].token_ids == b[0].token_ids and len(a[0].token_ids) == 4


def test_from_spec_applies_a_lora_adapter(tiny_model_dir, tmp_path):
    """An adapter folder is loaded, merged, and gives the adapted model's greedy output."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = get_peft_model(
        base,
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    lora.save_pretrained(tmp_path / "adapter")
    threads = torch.get_num_threads()  # from_spec sets the process-wide thread count
    engine = ServeEngine.from_spec(
        str(tiny_model_dir), adapter=str(tmp_path / "adapter"), num_threads=1
    )
    plain = ServeEngine.from_spec(str(tiny_model_dir), num_threads=1)
    try:
        ids = engine.encode_prompt("abc")
        (adapted,) = asyncio.run(engine.generate(None, "abc", greedy(max_tokens=8)))
        (unadapted,) = asyncio.run(plain.generate(None, "abc", greedy(max_tokens=8)))
        with torch.inference_mode():
            ref = (
                lora.eval()
                .generate(
                    torch.tensor([ids]),
                    max_new_tokens=8,
                    do_sample=False,
                    eos_token_id=None,
                    pad_token_id=0,
                )[0, len(ids) :]
                .tolist()
            )
        assert adapted.token_ids == ref
        assert adapted.token_ids != unadapted.token_ids
    finally:
        engine.close()
        plain.close()
        torch.set_num_threads(threads)
