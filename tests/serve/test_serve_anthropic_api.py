"""``apidistill serve`` on SmolLM2 through the official ``anthropic`` SDK (Messages API).

This SDK version has no ``temperature`` argument on ``messages.create``; the API field is sent
through ``extra_body`` as any client of such a version would.
"""

from __future__ import annotations

import json

import anthropic
import httpx2
import pytest

MODEL = "smollm2-135m-instruct"
GREEDY = {"temperature": 0}
ASK = [{"role": "user", "content": "Count from one to ten."}]


@pytest.fixture(scope="module")
def client(smol_server):
    return anthropic.Anthropic(base_url=smol_server.root_url, api_key="unused", max_retries=0)


def test_messages_greedy_is_deterministic_and_counts_tokens(client):
    kw = dict(model=MODEL, max_tokens=6, messages=ASK, extra_body=GREEDY)
    a = client.messages.create(**kw)
    b = client.messages.create(**kw)
    assert a.content[0].text == b.content[0].text and a.content[0].text
    assert a.stop_reason == "max_tokens" and a.usage.output_tokens == 6
    assert a.id.startswith("msg_") and a.role == "assistant" and a.model == MODEL
    counted = client.messages.count_tokens(model=MODEL, messages=ASK)
    assert a.usage.input_tokens == counted.input_tokens
    # With a system turn SmolLM2 answers briefly and ends its turn itself.
    brief = client.messages.create(**{**kw, "max_tokens": 40}, system="Be brief.")
    assert brief.stop_reason == "end_turn" and brief.usage.output_tokens < 40
    counted = client.messages.count_tokens(model=MODEL, messages=ASK, system="Be brief.")
    assert brief.usage.input_tokens == counted.input_tokens > a.usage.input_tokens - 20


def first_new_pair(text: str, start: int = 3) -> str:
    """A two-character piece of ``text`` at or after ``start`` that does not occur earlier."""
    for i in range(start, len(text) - 1):
        if text[i : i + 2] not in text[: i + 1]:
            return text[i : i + 2]
    raise AssertionError(f"no usable stop string in {text!r}")


def test_stop_sequences_end_the_message(client):
    full = client.messages.create(model=MODEL, max_tokens=12, messages=ASK, extra_body=GREEDY)
    text = full.content[0].text
    stop = first_new_pair(text)
    cut = client.messages.create(
        model=MODEL, max_tokens=12, messages=ASK, stop_sequences=[stop], extra_body=GREEDY
    )
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
    assert cut.content[0].text == text[: text.index(stop)]


def test_prefill_continues_the_assistant_turn(client):
    prefill = "One, two,"
    r = client.messages.create(
        model=MODEL,
        max_tokens=4,
        extra_body=GREEDY,
        messages=[*ASK, {"role": "assistant", "content": prefill}],
    )
    assert r.content[0].text.lstrip().lower().startswith("three")


async def test_async_stream_matches_and_emits_every_event_type(smol_server):
    aclient = anthropic.AsyncAnthropic(
        base_url=smol_server.root_url, api_key="unused", max_retries=0
    )
    full = await aclient.messages.create(model=MODEL, max_tokens=6, messages=ASK, extra_body=GREEDY)
    async with aclient.messages.stream(
        model=MODEL, max_tokens=6, messages=ASK, extra_body=GREEDY
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == full.content[0].text == final.content[0].text
    assert final.usage.output_tokens == full.usage.output_tokens
    assert final.stop_reason == full.stop_reason
    # The raw wire events, in the documented order.
    body = {"model": MODEL, "max_tokens": 3, "messages": ASK, "stream": True, **GREEDY}
    names = []
    with httpx2.stream("POST", smol_server.base_url + "/messages", json=body, timeout=120) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("event: "):
                names.append(line[7:])
            elif line.startswith("data: "):
                assert json.loads(line[6:])["type"] == names[-1]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert set(names[3:-3]) == {"content_block_delta"}
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_sync_stream_matches_the_greedy_message_and_reports_usage(client):
    kw = dict(model=MODEL, max_tokens=10, messages=ASK, extra_body=GREEDY)
    full = client.messages.create(**kw)
    assert full.content[0].text and full.usage.output_tokens == 10
    # The SDK's stream helper (sync client).
    with client.messages.stream(**kw) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1  # really streamed, not one block at the end
    assert "".join(pieces) == full.content[0].text == final.content[0].text
    assert final.usage is not None
    assert final.usage.input_tokens == full.usage.input_tokens > 0
    assert final.usage.output_tokens == full.usage.output_tokens
    assert final.stop_reason == full.stop_reason == "max_tokens"
    # create(stream=True): the raw event iterator of the sync client.
    events = list(client.messages.create(**kw, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    text = "".join(
        e.delta.text
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )
    assert text == full.content[0].text
    assert events[0].message.usage.input_tokens == full.usage.input_tokens
    (delta,) = [e for e in events if e.type == "message_delta"]
    assert delta.usage.output_tokens == full.usage.output_tokens
    assert delta.delta.stop_reason == "max_tokens"


def test_models_list_in_anthropic_shape(client):
    page = client.models.list()
    assert [m.id for m in page.data] == [MODEL] and page.data[0].type == "model"
