"""AnthropicTeacher against a loopback server speaking documented Messages payloads."""

from __future__ import annotations

import pytest
from teacher_fakes import Fault

from apidistill.config import TeacherConfig
from apidistill.errors import CapabilityError, RateLimited, TeacherRejected, TeacherUnavailable
from apidistill.records import GenerationParams, Message, TeacherRequest
from apidistill.teachers import make_teacher
from apidistill.teachers.anthropic import AnthropicTeacher
from apidistill.testing.provider_payloads import anthropic_error

SECRET = "sk-ant-api03-SECRETSECRETSECRET"


def chat(**params) -> TeacherRequest:
    return TeacherRequest(
        messages=[
            Message(role="system", content="rule one"),
            Message(role="system", content="rule two"),
            Message(role="user", content="hi"),
        ],
        params=GenerationParams(**params),
    )


async def test_message_fields_usage_and_headers(provider):
    t = AnthropicTeacher("claude-test", base_url=provider.anthropic_url, api_key=SECRET)
    resp = await t.complete(chat(max_tokens=40, stop=["END"], seed=3))
    sent = provider.seen[-1]
    assert sent.path == "/v1/messages"
    # the system prompt is the shared prefix here: it ends with the cache breakpoint
    assert sent.body["system"] == [
        {"type": "text", "text": "rule one\n\nrule two", "cache_control": {"type": "ephemeral"}}
    ]
    assert sent.body["messages"] == [{"role": "user", "content": "hi"}]
    assert sent.body["stop_sequences"] == ["END"] and sent.body["max_tokens"] == 40
    for absent in ("seed", "temperature", "top_p"):  # API 2026-10-21 rejects sampling params
        assert absent not in sent.body
    assert sent.headers["Authorization"] == f"Bearer {SECRET}"
    assert sent.headers["anthropic-version"] == "2026-10-21"
    c = resp.completion
    assert c.text and c.finish_reason == "stop" and c.provider == "anthropic"
    # input_tokens counts cache reads too (Anthropic reports them apart).
    assert c.usage.cached_input_tokens == 3 and c.usage.input_tokens >= 4
    assert c.model_version == "claude-test"
    rl = resp.rate_limits
    assert rl is not None and rl.limit_requests == 50 and rl.remaining_tokens == 80000
    assert rl.limit_input_tokens == 80000 and rl.remaining_output_tokens == 9000
    assert rl.reset_requests_s is not None and rl.reset_requests_s > 1e9
    assert SECRET not in repr(t)
    await t.aclose()


async def test_max_tokens_stop_reason_is_length(provider):
    t = AnthropicTeacher("claude-test", base_url=provider.anthropic_url, api_key=SECRET)
    resp = await t.complete(chat(max_tokens=1))
    assert resp.completion.finish_reason == "length"
    await t.aclose()


@pytest.mark.parametrize("params", [{"logprobs": True}, {"temperature": 0.7}, {"top_p": 0.9}])
async def test_refused_before_sending(provider, params):
    t = AnthropicTeacher("claude-test", base_url=provider.anthropic_url, api_key=SECRET)
    with pytest.raises(CapabilityError):
        await t.complete(chat(**params))
    with pytest.raises(CapabilityError):
        await t.complete(TeacherRequest(prompt="x"))
    assert provider.seen == []
    assert t.capabilities.output_logprobs is False and t.capabilities.batch_api is True
    await t.aclose()


@pytest.mark.parametrize(
    ("status", "kind", "headers", "cls", "retry_after"),
    [
        (429, "rate_limit_error", {"retry-after": "12"}, RateLimited, 12.0),
        (529, "overloaded_error", {}, RateLimited, None),
        (500, "api_error", {}, TeacherUnavailable, None),
        (400, "invalid_request_error", {}, TeacherRejected, None),
        (401, "authentication_error", {}, TeacherRejected, None),
    ],
)
async def test_errors_map(provider, transport, status, kind, headers, cls, retry_after):
    t = AnthropicTeacher(
        "claude-test", base_url=provider.anthropic_url, api_key=SECRET, transport=transport
    )
    provider.faults.append(
        Fault("status", status=status, headers=headers, body=anthropic_error(kind, f"bad {SECRET}"))
    )
    with pytest.raises(cls) as info:
        await t.complete(chat())
    assert type(info.value) is cls
    assert info.value.status == status and info.value.retry_after == retry_after
    assert info.value.maybe_billed is False
    assert kind in str(info.value) and SECRET not in str(info.value)
    assert len(provider.seen) == 1
    await t.aclose()


@pytest.mark.parametrize("fault", [Fault("reset"), Fault("truncate"), Fault("malformed", body="{")])
async def test_transport_faults_maybe_billed(provider, transport, fault):
    t = AnthropicTeacher(
        "claude-test", base_url=provider.anthropic_url, api_key=SECRET, transport=transport
    )
    provider.faults.append(fault)
    with pytest.raises(TeacherUnavailable) as info:
        await t.complete(chat())
    assert info.value.maybe_billed is True
    await t.aclose()


async def test_make_teacher_anthropic(provider, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    t = make_teacher(
        TeacherConfig(provider="anthropic", model="claude-test"), base_url=provider.anthropic_url
    )
    assert isinstance(t, AnthropicTeacher)
    assert t.teacher_id == f"anthropic@http://127.0.0.1:{provider.port}"
    resp = await t.complete(chat())
    assert resp.completion.text
    assert provider.seen[-1].headers["Authorization"] == f"Bearer {SECRET}"
    await t.aclose()
