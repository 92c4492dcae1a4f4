"""Tool turns rendered for a chat template without tool syntax, their validation, and the
stream event sequences of a tool call (no model: milliseconds). The same behaviour through
the SDKs on llama.cpp is in test_backend_llamacpp_tools.py (slow)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from apidistill.serve.anthropic_schema import MessagesRequest, tool_use_events
from apidistill.serve.engine import EngineOutput
from apidistill.serve.http_errors import APIError
from apidistill.serve.openai_schema import ChatRequest, tool_call_deltas
from apidistill.serve.tool_history import anthropic_messages, openai_messages

ASK = {"role": "user", "content": "Weather in Paris?"}
CALL = {
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
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}


def chat(*messages: dict[str, Any]) -> ChatRequest:
    return ChatRequest.model_validate({"model": "m", "messages": list(messages)})


def claude(*messages: dict[str, Any]) -> MessagesRequest:
    return MessagesRequest.model_validate(
        {"model": "m", "max_tokens": 4, "messages": list(messages)}
    )


def output(text: str, finish: str = "stop") -> EngineOutput:
    return EngineOutput(
        text=text, finish_reason=finish, token_ids=[], logprobs=None, prompt_tokens=3,
        completion_tokens=5,
    )  # fmt: skip


def test_openai_call_and_result_render_as_the_grammar_writes_them():
    msgs, after_result = openai_messages(chat(ASK, CALL, RESULT).messages)
    assert [m.role for m in msgs] == ["user", "assistant", "user"]
    assert json.loads(msgs[1].content) == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert msgs[2].content == "Tool result (get_weather, call call_1):\n18 C"
    assert after_result
    assert not openai_messages(chat(ASK, CALL, RESULT, ASK).messages)[1]


def test_anthropic_blocks_render_in_order_with_is_error():
    use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}
    result = {
        "type": "tool_result",
        "tool_use_id": "toolu_1",
        "content": [{"type": "text", "text": "down"}],
        "is_error": True,
    }
    req = claude(
        ASK,
        {"role": "assistant", "content": [{"type": "text", "text": "Checking."}, use]},
        {"role": "user", "content": [result, {"type": "text", "text": "Try again?"}]},
    )
    msgs, after_result = anthropic_messages(req)
    assert msgs[1].content.split("\n\n") == [
        "Checking.",
        '{"name": "get_weather", "arguments": {"city": "Oslo"}}',
    ]
    assert msgs[2].content == "Tool error (get_weather, call toolu_1):\ndown\n\nTry again?"
    assert after_result


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([ASK, RESULT], "messages[1].tool_call_id"),
        ([ASK, CALL, {**RESULT, "tool_call_id": "call_2"}], "messages[2].tool_call_id"),
        ([ASK, CALL, {"role": "tool", "content": "x"}], "messages[2].tool_call_id"),
        ([{"role": "user", "content": None}], "messages[0].content"),
        ([ASK, {"role": "assistant", "content": None}], "messages[1].content"),
        ([{**ASK, "tool_calls": CALL["tool_calls"]}], "messages[0].tool_calls"),
        (
            [ASK, {**CALL, "tool_calls": [{**CALL["tool_calls"][0], "function": {
                "name": "get_weather", "arguments": "{not json"}}]}],
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            [ASK, {**CALL, "tool_calls": [{**CALL["tool_calls"][0], "function": {
                "name": "get_weather", "arguments": "[1]"}}]}],
            "messages[1].tool_calls[0].function.arguments",
        ),
    ],
)  # fmt: skip
def test_openai_malformed_tool_turns_are_400s_naming_the_field(messages, param):
    with pytest.raises(APIError) as err:
        openai_messages(chat(*messages).messages)
    assert err.value.status == 400 and err.value.param == param
    assert param in err.value.message


USE = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
RES = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([ASK, {"role": "assistant", "content": "hm"}, {"role": "user", "content": [RES]}],
         "messages.2.content.0.tool_use_id"),
        ([{"role": "user", "content": [USE]}], "messages.0.content.0"),
        ([ASK, {"role": "assistant", "content": [USE, RES]}], "messages.1.content.1"),
        ([ASK, {"role": "assistant", "content": [USE]}], "messages.1"),
    ],
)  # fmt: skip
def test_anthropic_malformed_tool_turns_are_400s_naming_the_field(messages, param):
    with pytest.raises(APIError) as err:
        anthropic_messages(claude(*messages))
    assert err.value.status == 400 and err.value.param == param
    assert err.value.message.startswith(param + ":")


def test_openai_tool_call_deltas_carry_the_call_then_its_arguments():
    args = json.dumps({"city": "Paris, France"})
    call = {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": args}}
    deltas = tool_call_deltas(output("ignored"), [call])
    (head, _), *middle, last = deltas
    assert head == {"tool_calls": [{"index": 0, "id": "call_9", "type": "function",
                                    "function": {"name": "f", "arguments": ""}}]}  # fmt: skip
    assert last == ({}, "tool_calls") and len(middle) > 1
    joined = "".join(d["tool_calls"][0]["function"]["arguments"] for d, _ in middle)
    assert joined == args and all(f is None for _, f in middle)


def test_a_call_cut_short_streams_as_text_with_its_finish_reason():
    assert tool_call_deltas(output('{"name": "f", "argu', "length"), None) == [
        ({"content": '{"name": "f", "argu'}, None),
        ({}, "length"),
    ]
    events = tool_use_events(output('{"na', "length"), None)
    assert events[0][1]["content_block"] == {"type": "text", "text": ""}
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"


def test_anthropic_tool_use_events_follow_the_messages_stream_order():
    use = {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {"city": "Paris, France"}}
    events = tool_use_events(output("x"), use)
    names = [n for n, _ in events]
    assert names[:2] == ["content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert events[0][1]["content_block"] == {**use, "input": {}}
    partial = "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta")
    assert json.loads(partial) == use["input"] and names.count("content_block_delta") > 1
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
