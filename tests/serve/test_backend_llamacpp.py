"""``apidistill serve --backend llamacpp``: the embedded SmolLM2 GGUF in llama.cpp behind the
project's own OpenAI and Anthropic routes, driven by the official SDKs.

Slow (two server children; the default suite has test_backend_llamacpp_quick.py). One
server child for the module (1 thread: on a loaded CI machine llama.cpp's spinning
workers collapse with more), ``max_tokens`` ≤ 8 except where a JSON object must close. The
response shapes are compared with the transformers backend's on the tiny model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from apidistill.serve.launcher import ServerHandle, launch_server
from apidistill.testing.llamacpp_server import embedded_gguf

pytestmark = pytest.mark.slow  # two server children: ~90 s on 2 loaded cores

NAME = "student"


@pytest.fixture(scope="module")
def gguf_server() -> Iterator[ServerHandle]:
    with launch_server(
        str(embedded_gguf()),
        backend="llamacpp",
        threads=1,
        served_model_name=NAME,
        extra_args=["--no-prefix-cache"],
        startup_timeout=240,
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def tiny_server(tiny_model_dir) -> Iterator[ServerHandle]:
    with launch_server(
        str(tiny_model_dir), backend="transformers", served_model_name=NAME, startup_timeout=240
    ) as srv:
        yield srv


def oai(srv: ServerHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0, timeout=120)


def shape(value: Any) -> Any:
    """The JSON structure without its values: keys, list element shapes, value types."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items()) if k not in ("id",)}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if isinstance(value, bool) or value is None:
        return type(value).__name__
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


CHAT = {
    "model": NAME,
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 6,
    "temperature": 0,
    "logprobs": True,
    "top_logprobs": 2,
}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/chat/completions", CHAT),
        ("/completions", {"model": NAME, "prompt": "Hello", "max_tokens": 4, "logprobs": 2,
                          "echo": True, "temperature": 0}),
        ("/messages", {"model": NAME, "max_tokens": 4, "messages": CHAT["messages"]}),
    ],
)  # fmt: skip
def test_responses_have_the_transformers_backends_json_shape(gguf_server, tiny_server, path, body):
    ours = httpx2.post(gguf_server.base_url + path, json=body, timeout=120)
    theirs = httpx2.post(tiny_server.base_url + path, json=body, timeout=120)
    assert ours.status_code == theirs.status_code == 200, (ours.text, theirs.text)
    mine, ref = ours.json(), theirs.json()
    for key in ("system_fingerprint",):
        assert isinstance(mine.get(key, ""), str)
    assert shape(mine) == shape(ref)


def test_stream_chunks_have_the_transformers_backends_shape(gguf_server, tiny_server):
    def chunks(srv: ServerHandle) -> list[Any]:
        body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        with httpx2.stream("POST", srv.base_url + "/chat/completions", json=body, timeout=120) as r:
            lines = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        return [shape(json.loads(x)) for x in lines[:-1]]

    mine, ref = chunks(gguf_server), chunks(tiny_server)
    assert mine[0] == ref[0] and mine[-1] == ref[-1]  # the role chunk and the usage chunk
    assert {json.dumps(c, sort_keys=True) for c in mine} == {
        json.dumps(c, sort_keys=True) for c in ref
    }


def test_logprobs_carry_token_ids_and_llamacpp_bytes(gguf_server):
    import llama_cpp

    body = {**CHAT, "return_tokens_as_token_ids": True}
    out = httpx2.post(gguf_server.base_url + "/chat/completions", json=body, timeout=120).json()
    choice = out["choices"][0]
    entries = choice["logprobs"]["content"]
    assert entries and len(entries) == out["usage"]["completion_tokens"] - (
        1 if choice["finish_reason"] == "stop" else 0
    )
    llm = llama_cpp.Llama(model_path=str(embedded_gguf()), vocab_only=True, verbose=False)
    text = b""
    for e in entries:
        tid = int(e["token"].removeprefix("token_id:"))
        assert bytes(e["bytes"]) == llm.detokenize([tid], special=True)
        assert e["logprob"] <= 0 and math.isfinite(e["logprob"])
        assert e["top_logprobs"][0]["logprob"] >= e["logprob"] - 1e-9  # sorted, top first
        text += bytes(e["bytes"])
    assert text.decode("utf-8") == choice["message"]["content"]


def test_greedy_answers_repeat_and_sdk_clients_agree(gguf_server):
    client = oai(gguf_server)
    kwargs = {"model": NAME, "messages": CHAT["messages"], "max_tokens": 6, "temperature": 0}
    first = client.chat.completions.create(**kwargs).choices[0].message.content
    again = client.chat.completions.create(**kwargs).choices[0].message.content
    assert first and first == again
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(**kwargs, stream=True)
        if c.choices
    )
    assert streamed == first
    msg = anthropic.Anthropic(base_url=gguf_server.root_url, api_key="unused").messages.create(
        model=NAME, max_tokens=6, messages=CHAT["messages"], extra_body={"temperature": 0}
    )
    assert msg.content[0].text == first and msg.stop_reason in ("max_tokens", "end_turn")


def test_echo_scoring_matches_the_generation_logprobs(gguf_server):
    """The prompt-scoring path (all-position logits) and the decoding path agree: scoring
    prompt + answer gives each answer token the logprob generation reported for it."""
    base = gguf_server.base_url + "/completions"
    ids_mode = {"temperature": 0, "logprobs": 1, "return_tokens_as_token_ids": True}
    gen = httpx2.post(
        base,
        json={"model": NAME, "prompt": "The capital of France is", "max_tokens": 4, "echo": True,
              **ids_mode},
        timeout=120,
    ).json()["choices"][0]["logprobs"]  # fmt: skip
    ids = [int(t.removeprefix("token_id:")) for t in gen["tokens"]]
    n = 4  # generated tokens (greedy "Paris.\n\n" needs all four)
    assert len(ids) > n
    scored = httpx2.post(
        base,
        json={"model": NAME, "prompt": ids, "max_tokens": 1, "echo": True, **ids_mode},
        timeout=120,
    ).json()["choices"][0]["logprobs"]
    assert scored["token_logprobs"][0] is None and gen["token_logprobs"][0] is None
    assert scored["tokens"][: len(ids)] == gen["tokens"]
    got, want = scored["token_logprobs"][1 : len(ids)], gen["token_logprobs"][1:]
    # the prompt's positions: the same batched evaluation both times, the same numbers
    assert got[: len(ids) - 1 - n] == pytest.approx(want[: len(ids) - 1 - n], abs=1e-6)
    # the answer's: one token at a time while decoding, batched while scoring; llama.cpp's
    # kernels for the two differ in rounding (up to ~0.1 nats seen on this Q4_1 file)
    assert got[-n:] == pytest.approx(want[-n:], abs=0.15)


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


def test_response_format_json_schema_and_json_object(gguf_server):
    client = oai(gguf_server)
    msgs = [{"role": "user", "content": "Describe a person as JSON."}]
    out = client.chat.completions.create(
        model=NAME,
        messages=msgs,
        max_tokens=80,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}},
    )
    person = json.loads(out.choices[0].message.content)
    assert set(person) == {"name", "age"} and isinstance(person["age"], int)
    assert isinstance(person["name"], str)
    obj = client.chat.completions.create(
        model=NAME, messages=msgs, max_tokens=80, temperature=0,
        response_format={"type": "json_object"},
    )  # fmt: skip
    assert isinstance(json.loads(obj.choices[0].message.content), dict)


def test_a_bad_response_format_is_a_400_naming_it(gguf_server):
    client = oai(gguf_server)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=NAME, messages=CHAT["messages"], max_tokens=4,
            response_format={"type": "json_schema", "json_schema": {"name": "x"}},
        )  # fmt: skip
    assert "response_format" in str(err.value)
    with pytest.raises(openai.BadRequestError, match="response_format"):
        client.chat.completions.create(
            model=NAME, messages=CHAT["messages"], max_tokens=4,
            response_format={"type": "yaml"},  # type: ignore[typeddict-item]
        )  # fmt: skip


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def test_tool_calls_through_the_openai_sdk(gguf_server):
    out = oai(gguf_server).chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        max_tokens=40,
        temperature=0,
        tools=[WEATHER],
    )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert set(json.loads(call.function.arguments)) == {"city"}


def test_tool_choice_none_answers_in_text_and_an_unknown_tool_is_a_400(gguf_server):
    """(Streamed tool calls and tool turns: test_backend_llamacpp_tools.py.)"""
    client = oai(gguf_server)
    msgs = [{"role": "user", "content": "Hi"}]
    out = client.chat.completions.create(
        model=NAME, messages=msgs, max_tokens=4, temperature=0, tools=[WEATHER],
        tool_choice="none",
    )  # fmt: skip
    assert out.choices[0].message.tool_calls is None and out.choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="tool_choice"):
        client.chat.completions.create(
            model=NAME, messages=msgs, max_tokens=4, tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )  # fmt: skip


def test_tool_use_through_the_anthropic_sdk(gguf_server):
    msg = anthropic.Anthropic(base_url=gguf_server.root_url, api_key="unused").messages.create(
        model=NAME,
        max_tokens=40,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[
            {
                "name": "get_weather",
                "description": "Current weather for a city.",
                "input_schema": WEATHER["function"]["parameters"],
            }
        ],
        tool_choice={"type": "any"},
    )
    assert msg.stop_reason == "tool_use"
    (block,) = msg.content
    assert block.type == "tool_use" and block.name == "get_weather"
    assert set(block.input) == {"city"}


def test_the_transformers_backend_keeps_its_400_for_tools_and_json(tiny_server):
    client = oai(tiny_server)
    with pytest.raises(openai.BadRequestError, match="llamacpp"):
        client.chat.completions.create(
            model=NAME, messages=CHAT["messages"], max_tokens=2, tools=[WEATHER]
        )
    with pytest.raises(openai.BadRequestError, match="response_format"):
        client.chat.completions.create(
            model=NAME, messages=CHAT["messages"], max_tokens=2,
            response_format={"type": "json_object"},
        )  # fmt: skip


def test_a_gguf_path_is_served_directly_with_auto(tmp_path):
    """``apidistill serve --model x.gguf`` (no --backend): auto picks llama.cpp."""
    gguf = tmp_path / "smol.gguf"
    gguf.symlink_to(embedded_gguf())
    with launch_server(str(gguf), backend=None, threads=1, startup_timeout=240) as srv:
        client = oai(srv)
        assert [m.id for m in client.models.list()] == [str(gguf)]
        out = client.chat.completions.create(
            model=str(gguf), messages=CHAT["messages"], max_tokens=2, temperature=0
        )
        assert out.choices[0].message.content and out.system_fingerprint.startswith("fp_")
