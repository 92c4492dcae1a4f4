"""The client sees the teacher's answer through the proxy: same body, same SSE events, same
tool calls, same error envelope; ``response_format`` and tools reach the teacher untouched.
Clients are the official ``openai`` and ``anthropic`` SDKs."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from tests.proxy.conftest import CLIENT_KEY, proxy_settings

MESSAGES = [{"role": "user", "content": "Classify: the parcel arrived broken"}]
TOOLS = [{
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather for a city",
                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}]  # fmt: skip
SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "label", "strict": True,
                    "schema": {"type": "object", "properties": {"label": {"type": "string"}},
                               "required": ["label"], "additionalProperties": False}},
}  # fmt: skip


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Equal apart from ``created`` (the teacher stamps each answer with the clock)."""
    a, b = dict(a), dict(b)
    a.pop("created", None), b.pop("created", None)
    assert a == b


@pytest.fixture(scope="module")
def oa_proxy(teacher, tmp_path_factory):  # type: ignore[no-untyped-def]
    from apidistill.testing.proxy_process import ProxyProcess, write_proxy_config

    tmp = tmp_path_factory.mktemp("oa")
    cfg = write_proxy_config(tmp / "p.yaml", proxy_settings(teacher, tmp))
    with ProxyProcess(cfg, tmp / "p.log") as p:
        yield p


def test_openai_chat_through_proxy_is_the_teachers_answer(teacher, oa_proxy) -> None:
    direct = openai.OpenAI(base_url=teacher.base_url, api_key=CLIENT_KEY, max_retries=0)
    via = openai.OpenAI(base_url=oa_proxy.base_url, api_key=CLIENT_KEY, max_retries=0)
    kw = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 20, "temperature": 0.3,
          "logprobs": True, "top_logprobs": 2}  # fmt: skip
    _same(
        via.chat.completions.create(**kw).model_dump(),
        direct.chat.completions.create(**kw).model_dump(),
    )


def test_openai_stream_through_proxy_yields_the_teachers_chunks(teacher, oa_proxy) -> None:
    direct = openai.OpenAI(base_url=teacher.base_url, api_key=CLIENT_KEY, max_retries=0)
    via = openai.OpenAI(base_url=oa_proxy.base_url, api_key=CLIENT_KEY, max_retries=0)
    kw = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 20, "stream": True}
    want = [c.model_dump() for c in direct.chat.completions.create(**kw)]
    got = [c.model_dump() for c in via.chat.completions.create(**kw)]
    assert len(got) == len(want) and len(got) > 2
    for g, w in zip(got, want, strict=True):
        _same(g, w)
    # the client did not ask for usage: no usage-only chunk reached it, though the proxy
    # asked the teacher for one (the budget settles on it)
    assert all(c["choices"] for c in got)
    assert teacher.last()["body"]["stream_options"] == {"include_usage": True}


def test_openai_stream_with_usage_keeps_the_usage_chunk(teacher, oa_proxy) -> None:
    via = openai.OpenAI(base_url=oa_proxy.base_url, api_key=CLIENT_KEY, max_retries=0)
    chunks = list(via.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=20, stream=True,
        stream_options={"include_usage": True},
    ))  # fmt: skip
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


def test_tools_and_response_format_reach_the_teacher_untouched(teacher, oa_proxy) -> None:
    via = openai.OpenAI(base_url=oa_proxy.base_url, api_key=CLIENT_KEY, max_retries=0)
    out = via.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, tools=TOOLS, response_format=SCHEMA,
        parallel_tool_calls=False, max_tokens=30,
    )  # fmt: skip
    call = out.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"]
    sent = teacher.last()["body"]
    assert sent["tools"] == TOOLS and sent["response_format"] == SCHEMA
    assert sent["parallel_tool_calls"] is False


def test_streamed_tool_call_assembles_in_the_sdk(teacher, oa_proxy) -> None:
    via = openai.OpenAI(base_url=oa_proxy.base_url, api_key=CLIENT_KEY, max_retries=0)
    with via.chat.completions.stream(
        model="gpt-4o-mini", messages=MESSAGES, tools=TOOLS, max_tokens=30
    ) as s:
        final = s.get_final_completion()
    args = json.loads(final.choices[0].message.tool_calls[0].function.arguments)
    assert args["city"].startswith("city-")


def test_upstream_error_reaches_the_client_in_its_shape(oa_proxy) -> None:
    via = openai.OpenAI(base_url=oa_proxy.base_url, api_key=CLIENT_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError) as err:
        via.chat.completions.create(model="missing-model", messages=MESSAGES)
    assert err.value.status_code == 404
    assert err.value.code == "model_not_found"
    assert "missing-model" in err.value.message


def test_malformed_request_gets_a_clear_400_in_the_api_shape(oa_proxy) -> None:
    r = httpx2.post(oa_proxy.base_url + "/chat/completions", content=b"{not json",
                    headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 400
    assert "not valid JSON" in r.json()["error"]["message"]
    r = httpx2.post(oa_proxy.base_url + "/messages", content=b"[1, 2]",
                    headers={"anthropic-version": "2023-06-01"})  # fmt: skip
    assert r.status_code == 400 and r.json()["type"] == "error"
    r = httpx2.post(oa_proxy.root + "/r/bad alias!/v1/chat/completions", json={})
    assert r.status_code in (400, 404)


def test_unknown_path_is_a_404_saying_what_the_proxy_forwards(oa_proxy) -> None:
    r = httpx2.post(oa_proxy.base_url + "/responses", json={"model": "x"})
    assert r.status_code == 404 and "/v1/chat/completions" in r.json()["error"]["message"]


# ----------------------------------------------------------------------------- Anthropic


@pytest.fixture(scope="module")
def an_proxy(teacher, tmp_path_factory):  # type: ignore[no-untyped-def]
    from apidistill.testing.proxy_process import ProxyProcess, write_proxy_config

    tmp = tmp_path_factory.mktemp("an")
    cfg = write_proxy_config(tmp / "p.yaml", proxy_settings(teacher, tmp, provider="anthropic"))
    with ProxyProcess(cfg, tmp / "p.log") as p:
        yield p


def _anthropic(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url.removesuffix("/v1"), api_key=CLIENT_KEY, max_retries=0)


def test_anthropic_message_through_proxy(teacher, an_proxy) -> None:
    kw = {"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": MESSAGES}
    got = _anthropic(an_proxy.base_url).messages.create(**kw).model_dump()
    assert got == _anthropic(teacher.base_url).messages.create(**kw).model_dump()


def test_anthropic_stream_events_unchanged(teacher, an_proxy) -> None:
    kw = {"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": MESSAGES, "stream": True}
    got = [e.model_dump() for e in _anthropic(an_proxy.base_url).messages.create(**kw)]
    want = [e.model_dump() for e in _anthropic(teacher.base_url).messages.create(**kw)]
    assert got == want
    assert got[0]["type"] == "message_start" and got[-1]["type"] == "message_stop"
    # on the wire: the same SSE bytes, event for event (ping included)
    headers = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
    raw = [httpx2.post(url + "/messages", json=kw, headers=headers).content
           for url in (an_proxy.base_url, teacher.base_url)]  # fmt: skip
    assert raw[0] == raw[1] and b"event: ping" in raw[0]


def test_anthropic_streamed_tool_use(teacher, an_proxy) -> None:
    tools = [
        {
            "name": "get_weather",
            "description": "Weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    with _anthropic(an_proxy.base_url).messages.stream(
        model="claude-sonnet-4-5", max_tokens=50, messages=MESSAGES, tools=tools
    ) as s:
        final = s.get_final_message()
    block = final.content[0]
    assert block.type == "tool_use" and block.input["city"].startswith("city-")
    assert final.stop_reason == "tool_use"
    assert teacher.last()["body"]["tools"] == tools


def test_anthropic_error_shape(an_proxy) -> None:
    with pytest.raises(anthropic.NotFoundError) as err:
        _anthropic(an_proxy.base_url).messages.create(
            model="missing-model", max_tokens=5, messages=MESSAGES
        )
    assert err.value.status_code == 404
    assert err.value.body["error"]["type"] == "not_found_error"


def test_proxy_log_says_what_it_captures(an_proxy, oa_proxy) -> None:
    assert "capturing 100% of exchanges" in oa_proxy.log()
    assert "authorization: test agreement #1" in an_proxy.log() or "capturing" in an_proxy.log()
