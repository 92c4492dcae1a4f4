"""Tool conversations on the llama.cpp backend: the two-turn loop (the model calls a tool, the
client sends the result, the model answers) and streamed tool calls, through the official
``openai`` and ``anthropic`` SDKs and their stream helpers, on the embedded SmolLM2 GGUF.

One in-process server for the module (uvicorn on a thread, 1 llama.cpp thread, no prefix
reuse so greedy answers repeat); ``max_tokens`` stays small except where a call must close.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from test_backend_llamacpp import WEATHER  # the same tool as the single-turn tests

from apidistill.serve.app import create_app
from apidistill.serve.http_common import ServeSettings
from apidistill.testing.inprocess import serve_in_thread

pytestmark = pytest.mark.slow  # one llama.cpp server; ~50 s on 2 loaded cores

NAME = "student"

ANTHROPIC_WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": WEATHER["function"]["parameters"],
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
GREEDY = {"temperature": 0}  # this anthropic SDK's create() has no temperature argument


@pytest.fixture(scope="module")
def root() -> Iterator[str]:
    from apidistill.serve.backends.llamacpp import LlamaCppEngine
    from apidistill.testing.llamacpp_server import embedded_gguf

    engine = LlamaCppEngine.from_gguf(embedded_gguf(), num_threads=1, prefix_cache=False)
    app = create_app(engine, ServeSettings(served_model_name=NAME))
    with serve_in_thread(app) as (url, _):
        yield url
        engine.close()


def oai(root: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=root + "/v1", api_key="unused", max_retries=0, timeout=120)


def claude(root: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=root, api_key="unused", max_retries=0, timeout=120)


# --------------------------------------------------------------------------- OpenAI


def test_openai_two_turn_tool_loop(root):
    client = oai(root)
    first = client.chat.completions.create(
        model=NAME, messages=ASK, max_tokens=40, temperature=0, tools=[WEATHER]
    )
    (call,) = first.choices[0].message.tool_calls
    assert first.choices[0].finish_reason == "tool_calls"
    turn = first.choices[0].message.model_dump(exclude_none=True)
    result = {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"}
    second = client.chat.completions.create(
        model=NAME, messages=[*ASK, turn, result], max_tokens=8, temperature=0, tools=[WEATHER]
    )
    choice = second.choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason in ("stop", "length")
    assert choice.message.content
    assert second.usage.prompt_tokens > first.usage.prompt_tokens  # the call and result went in


def test_openai_tool_choice_required_after_a_result_still_calls(root):
    client = oai(root)
    turn = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }
    result = {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "?"}]}
    out = client.chat.completions.create(
        model=NAME, messages=[*ASK, turn, result], max_tokens=40, temperature=0,
        tools=[WEATHER], tool_choice="required",
    )  # fmt: skip
    assert out.choices[0].finish_reason == "tool_calls"


def test_openai_stream_of_a_tool_call(root):
    client = oai(root)
    chunks = list(
        client.chat.completions.create(
            model=NAME, messages=ASK, max_tokens=40, temperature=0, tools=[WEATHER], stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    calls = [tc for c in chunks for ch in c.choices for tc in ch.delta.tool_calls or []]
    head, rest = calls[0], calls[1:]
    assert head.index == 0 and head.id.startswith("call_") and head.type == "function"
    assert head.function.name == "get_weather" and head.function.arguments == ""
    assert len(rest) > 1 and all(tc.id is None and tc.function.name is None for tc in rest)
    args = json.loads("".join(tc.function.arguments for tc in rest))
    assert set(args) == {"city"}
    finishes = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    assert finishes == ["tool_calls"]


def test_openai_stream_helper_accumulates_the_call_and_its_id_round_trips(root):
    client = oai(root)
    with client.chat.completions.stream(
        model=NAME, messages=ASK, max_tokens=40, temperature=0, tools=[WEATHER]
    ) as stream:
        final = stream.get_final_completion()
    msg = final.choices[0].message
    (call,) = msg.tool_calls
    assert final.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)
    turn = {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]}
    result = {"role": "tool", "tool_call_id": call.id, "content": "18 degrees"}
    with client.chat.completions.stream(
        model=NAME, messages=[*ASK, turn, result], max_tokens=6, temperature=0, tools=[WEATHER]
    ) as stream:
        text = "".join(e.delta for e in stream if e.type == "content.delta")
        # a 6-token answer ends at the length limit, which the helper refuses to "parse"
        with pytest.raises(openai.LengthFinishReasonError) as cut:
            stream.get_final_completion()
    answer = cut.value.completion.choices[0].message
    assert text and answer.content == text and not answer.tool_calls


def test_openai_unknown_tool_call_id_is_a_400_naming_the_message(root):
    bad = {"role": "tool", "tool_call_id": "call_nope", "content": "x"}
    resp = httpx2.post(
        root + "/v1/chat/completions",
        json={"model": NAME, "messages": [*ASK, bad], "max_tokens": 4, "tools": [WEATHER]},
        timeout=60,
    )
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["param"] == "messages[1].tool_call_id" and err["type"] == "invalid_request_error"
    assert "call_nope" in err["message"] and "messages[1]" in err["message"]
    with pytest.raises(openai.BadRequestError, match=r"messages\[1\]\.tool_call_id"):
        oai(root).chat.completions.create(model=NAME, messages=[*ASK, bad], max_tokens=4)


# --------------------------------------------------------------------------- Anthropic


def test_anthropic_two_turn_tool_loop(root):
    client = claude(root)
    first = client.messages.create(
        model=NAME, max_tokens=40, messages=ASK, tools=[ANTHROPIC_WEATHER],
        tool_choice={"type": "any"}, extra_body=GREEDY,
    )  # fmt: skip
    (use,) = first.content
    assert first.stop_reason == "tool_use" and use.type == "tool_use"
    result = {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": use.id,
                "content": [{"type": "text", "text": "18 degrees and sunny"}],
            }
        ],
    }
    second = client.messages.create(
        model=NAME, max_tokens=8, extra_body=GREEDY, tools=[ANTHROPIC_WEATHER],
        messages=[*ASK, {"role": "assistant", "content": first.content}, result],
    )  # fmt: skip
    assert second.stop_reason in ("end_turn", "max_tokens")
    (text,) = second.content
    assert text.type == "text" and text.text
    assert second.usage.input_tokens > first.usage.input_tokens


def test_anthropic_stream_helper_yields_a_tool_use_block_with_parsed_input(root):
    client = claude(root)
    with client.messages.stream(
        model=NAME, max_tokens=40, messages=ASK, tools=[ANTHROPIC_WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"}, extra_body=GREEDY,
    ) as stream:  # fmt: skip
        kinds = [(e.type, getattr(getattr(e, "delta", None), "type", None)) for e in stream]
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    (use,) = final.content
    assert use.type == "tool_use" and use.name == "get_weather" and use.id.startswith("toolu_")
    assert set(use.input) == {"city"} and isinstance(use.input["city"], str)
    assert kinds[0] == ("message_start", None) and kinds[1] == ("content_block_start", None)
    assert kinds.count(("content_block_delta", "input_json_delta")) > 1
    assert ("content_block_stop", None) in kinds and kinds[-1] == ("message_stop", None)


def test_anthropic_raw_stream_events_of_a_tool_call(root):
    body = {
        "model": NAME, "max_tokens": 40, "messages": ASK, "tools": [ANTHROPIC_WEATHER],
        "tool_choice": {"type": "any"}, "temperature": 0, "stream": True,
    }  # fmt: skip
    with httpx2.stream("POST", root + "/v1/messages", json=body, timeout=120) as r:
        data = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: ")]
    start = next(d for d in data if d["type"] == "content_block_start")
    assert start["content_block"]["type"] == "tool_use" and start["content_block"]["input"] == {}
    partial = "".join(
        d["delta"]["partial_json"]
        for d in data
        if d["type"] == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    )
    assert set(json.loads(partial)) == {"city"}
    (delta,) = [d for d in data if d["type"] == "message_delta"]
    assert delta["delta"]["stop_reason"] == "tool_use" and delta["usage"]["output_tokens"] > 0


def test_anthropic_unknown_tool_use_id_is_a_400_naming_the_block(root):
    bad = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_nope"}]}
    msgs = [*ASK, {"role": "assistant", "content": "Let me check."}, bad]
    resp = httpx2.post(
        root + "/v1/messages",
        json={"model": NAME, "max_tokens": 4, "messages": msgs},
        timeout=60,
    )
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("messages.2.content.0.tool_use_id:")
    assert "toolu_nope" in body["error"]["message"]


def test_anthropic_count_tokens_counts_tool_turns(root):
    use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "cold", "is_error": True}
    msgs: list[dict[str, Any]] = [
        *ASK,
        {"role": "assistant", "content": [use]},
        {"role": "user", "content": [result]},
    ]
    with_turns = httpx2.post(
        root + "/v1/messages/count_tokens", json={"model": NAME, "messages": msgs}, timeout=60
    )
    plain = httpx2.post(
        root + "/v1/messages/count_tokens", json={"model": NAME, "messages": ASK}, timeout=60
    )
    assert with_turns.status_code == 200, with_turns.text
    assert with_turns.json()["input_tokens"] > plain.json()["input_tokens"] + 10
