"""``apidistill serve`` on the embedded SmolLM2, driven by the official ``openai`` SDK."""

from __future__ import annotations

import asyncio

import openai
import pytest
import torch

MODEL = "smollm2-135m-instruct"
CHAT = [
    {"role": "system", "content": "Answer in one short sentence."},
    {"role": "user", "content": "What colour is the sky?"},
]


@pytest.fixture(scope="module")
def client(smol_server):
    return openai.OpenAI(base_url=smol_server.base_url, api_key="unused", max_retries=0)


@pytest.fixture
def aclient(smol_server):
    return openai.AsyncOpenAI(base_url=smol_server.base_url, api_key="unused", max_retries=0)


def chat_ids(tok, messages) -> list[int]:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def test_models_list_names_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_greedy_chat_logprobs_match_a_direct_forward_pass(client, smol_local):
    model, tok = smol_local
    kw = dict(
        model=MODEL, messages=CHAT, max_tokens=6, temperature=0, logprobs=True, top_logprobs=5
    )
    first = client.chat.completions.create(**kw)
    again = client.chat.completions.create(**kw)
    choice = first.choices[0]
    assert choice.message.content == again.choices[0].message.content
    assert first.system_fingerprint and first.id.startswith("chatcmpl-")
    prompt = chat_ids(tok, CHAT)
    assert first.usage.prompt_tokens == len(prompt)
    assert first.usage.completion_tokens == 6 and choice.finish_reason == "length"
    entries = choice.logprobs.content
    assert "".join(e.token for e in entries) == choice.message.content
    generated = tok(choice.message.content, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = model(torch.tensor([prompt + generated])).logits[0]
    lp = torch.log_softmax(logits.float(), -1)
    for i, e in enumerate(entries):
        assert bytes(e.bytes).decode("utf-8") == e.token
        tops = [t.logprob for t in e.top_logprobs]
        assert len(tops) == 5 and tops == sorted(tops, reverse=True) and max(tops) <= 0
        assert e.top_logprobs[0].token == e.token  # greedy picks the most likely token
        assert abs(e.logprob - float(lp[len(prompt) - 1 + i, generated[i]])) < 1e-4


def test_token_ids_mode_returns_exact_ids(client, smol_local):
    _, tok = smol_local
    resp = client.chat.completions.create(
        model=MODEL,
        messages=CHAT,
        max_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        extra_body={"return_tokens_as_token_ids": True},
    )
    entries = resp.choices[0].logprobs.content
    ids = [int(e.token.removeprefix("token_id:")) for e in entries]
    assert tok.decode(ids) == resp.choices[0].message.content
    assert all(t.token.startswith("token_id:") for e in entries for t in e.top_logprobs)


def test_streaming_chat_equals_the_non_streamed_answer(client):
    full = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=CHAT,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == full.usage.total_tokens


async def test_concurrent_async_requests_are_batched_and_match_single_requests(aclient):
    questions = ["Name a fruit.", "Name a colour.", "Name an animal."]

    async def ask(q: str) -> str:
        r = await aclient.chat.completions.create(
            model=MODEL,
            messages=[CHAT[0], {"role": "user", "content": q}],
            max_tokens=5,
            temperature=0,
        )
        return r.choices[0].message.content

    singles = [await ask(q) for q in questions]
    together = await asyncio.gather(*(ask(q) for q in questions))
    assert list(together) == singles


async def test_async_streaming_completion(aclient):
    full = await aclient.completions.create(
        model=MODEL, prompt="One, two, three,", max_tokens=6, temperature=0
    )
    stream = await aclient.completions.create(
        model=MODEL, prompt="One, two, three,", max_tokens=6, temperature=0, stream=True
    )
    text = "".join([c.choices[0].text async for c in stream if c.choices])
    assert text == full.choices[0].text and full.usage.completion_tokens == 6


def test_echo_scores_the_prompt(client, smol_local):
    model, tok = smol_local
    prompt = "The capital of France is Paris."
    r = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=0, echo=True, logprobs=2, temperature=0
    )
    choice = r.choices[0]
    ids = tok(prompt)["input_ids"]
    lps = choice.logprobs
    assert choice.text == prompt and r.usage.completion_tokens == 0
    assert len(lps.tokens) == len(ids) and lps.token_logprobs[0] is None
    assert "".join(lps.tokens) == prompt and lps.text_offset[1] == len(lps.tokens[0])
    with torch.inference_mode():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    for pos in range(1, len(ids)):
        assert abs(lps.token_logprobs[pos] - float(lp[pos - 1, ids[pos]])) < 1e-4
        assert len(lps.top_logprobs[pos]) <= 2


def test_n_choices_and_prompt_lists_count_each_prompt_once(client, smol_local):
    _, tok = smol_local
    chat = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=3, temperature=0, n=2
    )
    assert [c.index for c in chat.choices] == [0, 1]
    assert chat.choices[0].message.content == chat.choices[1].message.content  # greedy
    assert chat.usage.prompt_tokens == len(chat_ids(tok, CHAT))
    assert chat.usage.completion_tokens == 6
    prompts = ["Roses are red,", "Once upon a time"]
    comp = client.completions.create(model=MODEL, prompt=prompts, max_tokens=2, temperature=0, n=2)
    assert sorted(c.index for c in comp.choices) == [0, 1, 2, 3]
    assert comp.usage.prompt_tokens == sum(len(tok(p)["input_ids"]) for p in prompts)
    by_index = {c.index: c.text for c in comp.choices}
    assert by_index[0] == by_index[1] and by_index[2] == by_index[3]
