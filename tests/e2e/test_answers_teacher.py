"""The loopback API teacher of the matrix speaks each provider's documented shape, checked
with the official SDKs as clients: OpenAI reasoning models refuse logprobs and temperature 0
with OpenAI's 400 bodies, and the Anthropic Messages route answers like Anthropic (no
logprobs, usage included)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from apidistill.testing.o200k_teacher import O200kTeacherProcess, is_reasoning_model

TICKET = "My order 5041-6582: the Quill Flannel Duvet Cover is torn."
GOLD = "order_id: 5041-6582\nproduct: Quill Flannel Duvet Cover"
KEY = "sk-test-answers-teacher-0123456789"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[O200kTeacherProcess]:
    answers = tmp_path_factory.mktemp("answers") / "answers.json"
    answers.write_text(json.dumps({TICKET: GOLD}), encoding="utf-8")
    with O200kTeacherProcess(Path(answers)) as server:
        yield server


def test_which_models_are_reasoning_models() -> None:
    assert all(is_reasoning_model(m) for m in ("o1", "o3-mini", "o4-mini", "gpt-5", "gpt-5-nano"))
    assert not any(is_reasoning_model(m) for m in ("gpt-4o-mini", "gpt-5-chat-latest", None))


def test_a_reasoning_model_refuses_logprobs_and_temperature_like_openai(teacher) -> None:
    client = openai.OpenAI(base_url=teacher.base_url, api_key=KEY, max_retries=0)
    msgs = [{"role": "user", "content": TICKET}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="o3-mini", messages=msgs, logprobs=True, top_logprobs=20
        )
    assert refused.value.code == "unsupported_parameter" and refused.value.param == "logprobs"
    with pytest.raises(openai.BadRequestError) as cold:
        client.chat.completions.create(model="o3-mini", messages=msgs, temperature=0)
    assert cold.value.code == "unsupported_value" and cold.value.param == "temperature"
    ok = client.chat.completions.create(model="o3-mini", messages=msgs, max_completion_tokens=64)
    assert ok.choices[0].message.content == GOLD and ok.choices[0].logprobs is None
    assert ok.usage.completion_tokens_details.reasoning_tokens > 0
    # max_completion_tokens bounds visible + reasoning tokens together (OpenAI's docs)
    assert ok.usage.completion_tokens <= 64
    assert teacher.stats()["refused"][-2:] == ["logprobs", "temperature"]


def test_the_messages_route_answers_in_anthropics_shape(teacher) -> None:
    client = anthropic.Anthropic(base_url=teacher.root, api_key=KEY, max_retries=0)
    msg = client.messages.create(
        model="claude-haiku-4-5",
        max_tokens=64,
        system="Extract the order.",
        messages=[{"role": "user", "content": TICKET}],
    )
    assert msg.type == "message" and msg.role == "assistant"
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text == GOLD
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    assert msg.usage.cache_read_input_tokens == 0
    cut = client.messages.create(
        model="claude-haiku-4-5", max_tokens=2, messages=[{"role": "user", "content": TICKET}]
    )
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 2
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=8,
            messages=[{"role": "user", "content": TICKET}],
            extra_body={"logprobs": True},
        )
    assert bad.value.body["error"]["type"] == "invalid_request_error"
