"""OpenAITeacher against a loopback server speaking documented OpenAI payloads."""

from __future__ import annotations

import asyncio
import socket

import pytest
from teacher_fakes import Fault

from apidistill.config import TeacherConfig
from apidistill.errors import (
    CapabilityError,
    ConfigError,
    RateLimited,
    TeacherRejected,
    TeacherTimeout,
    TeacherUnavailable,
)
from apidistill.records import GenerationParams, Message, TeacherRequest
from apidistill.teachers import make_teacher
from apidistill.teachers.openai import OpenAITeacher
from apidistill.teachers.profiles import server_profile
from apidistill.testing.provider_payloads import FINGERPRINT, openai_error

SECRET = "sk-test-SECRETSECRETSECRET123"


def chat(text: str = "hello", **params) -> TeacherRequest:
    return TeacherRequest(
        messages=[Message(role="system", content="be brief"), Message(role="user", content=text)],
        params=GenerationParams(**params),
    )


def compat(provider_server, profile: str = "vllm", **kw) -> OpenAITeacher:
    return OpenAITeacher(
        "test-model",
        base_url=provider_server.openai_url,
        api_key=SECRET,
        profile=server_profile(profile),
        **kw,
    )


async def test_chat_completion_fields_headers_and_body(provider):
    teacher = compat(provider)
    resp = await teacher.complete(chat(max_tokens=50, seed=7, stop=["\n"], top_p=0.9))
    c = resp.completion
    assert c.text and c.finish_reason == "stop"
    assert c.usage.input_tokens > 0 and c.usage.output_tokens > 0
    assert c.usage.cached_input_tokens == 2
    assert c.model_version == FINGERPRINT
    assert c.provider == "openai_compatible" and c.model == "test-model"
    assert c.latency_ms > 0
    assert c.request_hash == chat(max_tokens=50, seed=7, stop=["\n"], top_p=0.9).cache_key(
        teacher.teacher_id, "test-model"
    )
    assert c.logprobs is None and resp.logprobs_missing_reason is None
    rl = resp.rate_limits
    assert rl is not None
    assert (rl.limit_requests, rl.remaining_requests, rl.reset_requests_s) == (500, 499, 0.12)
    assert (rl.limit_tokens, rl.remaining_tokens, rl.reset_tokens_s) == (30000, 29000, 62.5)
    sent = provider.seen[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["max_tokens"] == 50 and "max_completion_tokens" not in sent.body
    assert sent.body["seed"] == 7 and sent.body["stop"] == ["\n"] and sent.body["top_p"] == 0.9
    assert sent.body["messages"][0] == {"role": "system", "content": "be brief"}
    assert sent.headers["Authorization"] == f"Bearer {SECRET}"
    await teacher.aclose()


async def test_logprobs_request_and_normalized_answer(provider):
    teacher = compat(provider, profile="vllm")
    resp = await teacher.complete(chat(logprobs=True, top_logprobs=3))
    sent = provider.seen[-1].body
    assert sent["logprobs"] is True and sent["top_logprobs"] == 3
    assert sent["return_tokens_as_token_ids"] is True  # the vLLM profile's body field
    lps = resp.completion.logprobs
    assert lps is not None and len(lps) >= 3
    assert "".join(t.token for t in lps) == resp.completion.text
    assert all(len(t.top) == 3 for t in lps)
    assert all(t.top[0].logprob >= t.top[1].logprob >= t.top[2].logprob for t in lps)
    await teacher.aclose()


async def test_missing_logprobs_reported_with_reason(provider):
    teacher = compat(provider, profile="generic")
    provider.faults.append(
        Fault(
            "payload",
            body={
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hi"},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ]
            },
        )
    )
    resp = await teacher.complete(chat(logprobs=True, top_logprobs=2))
    assert resp.completion.logprobs is None
    assert "returned no logprobs" in (resp.logprobs_missing_reason or "")
    await teacher.aclose()


async def test_vllm_token_id_payload_with_vocab(provider):
    from apidistill.teachers.logprobs import TokenVocab

    def e(i, lp):
        return {"token": f"token_id:{i}", "logprob": lp, "bytes": list(f"token_id:{i}".encode())}

    payload = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "served",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi there"},
                "logprobs": {
                    "content": [
                        {**e(10, -0.1), "top_logprobs": [e(10, -0.1), e(11, -2.0)]},
                        {**e(12, -0.3), "top_logprobs": [e(13, -1.0), e(12, -0.3)]},
                    ]
                },
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    vocab = TokenVocab({10: b"Hi", 11: b"Hello", 12: b" there", 13: b" you"})
    teacher = compat(provider, profile="vllm", vocab=vocab)
    provider.faults.append(Fault("payload", body=payload))
    resp = await teacher.complete(chat(logprobs=True, top_logprobs=2))
    lps = resp.completion.logprobs
    assert [p.token_id for p in lps] == [10, 12]
    assert [p.token for p in lps] == ["Hi", " there"]
    assert [[t.token_id for t in p.top] for p in lps] == [[10, 11], [12, 13]]
    assert b"".join(bytes(p.bytes) for p in lps).decode() == resp.completion.text
    assert resp.completion.model_version == "served"  # no fingerprint: the returned model
    await teacher.aclose()


async def test_prompt_goes_to_legacy_completions(provider):
    teacher = compat(provider, profile="vllm")
    req = TeacherRequest(prompt="Once upon", params=GenerationParams(logprobs=True, top_logprobs=2))
    resp = await teacher.complete(req)
    sent = provider.seen[-1]
    assert sent.path == "/v1/completions" and sent.body["logprobs"] == 2
    lps = resp.completion.logprobs
    assert lps is not None and "".join(t.token for t in lps) == resp.completion.text
    assert all(len(t.top) == 2 for t in lps)
    await teacher.aclose()


async def test_openai_proper_uses_max_completion_tokens(provider):
    teacher = OpenAITeacher(
        "gpt-4o-mini", provider="openai", base_url=provider.openai_url, api_key=SECRET
    )
    await teacher.complete(chat(max_tokens=9))
    body = provider.seen[-1].body
    assert body["max_completion_tokens"] == 9 and "max_tokens" not in body
    assert teacher.teacher_id == f"openai@http://127.0.0.1:{provider.port}/v1"
    await teacher.aclose()


@pytest.mark.parametrize(
    ("model", "params", "needle"),
    [
        ("o3-mini", {"logprobs": True, "temperature": 1.0}, "no logprobs"),
        ("gpt-5-nano-2025-08-07", {"logprobs": True, "temperature": 1.0}, "no logprobs"),
        ("o4-mini", {"temperature": 0.0}, "temperature 1"),
        (
            "gpt-5.1",
            {"logprobs": True, "extra_body": {"reasoning_effort": "low"}},
            "reasoning_effort",
        ),
        ("gpt-4o", {"logprobs": True, "top_logprobs": 20, "extra_body": {}}, None),
    ],
)
async def test_openai_model_capabilities_refuse_before_sending(provider, model, params, needle):
    teacher = OpenAITeacher(model, provider="openai", base_url=provider.openai_url, api_key=SECRET)
    if needle is None:
        await teacher.complete(chat(**params))
        assert len(provider.seen) == 1
    else:
        with pytest.raises(CapabilityError, match=needle):
            await teacher.complete(chat(**params))
        assert provider.seen == []
    await teacher.aclose()


async def test_gpt51_default_effort_allows_logprobs(provider):
    teacher = OpenAITeacher(
        "gpt-5.1", provider="openai", base_url=provider.openai_url, api_key=SECRET
    )
    resp = await teacher.complete(chat(logprobs=True, top_logprobs=1))
    assert resp.completion.logprobs is not None
    await teacher.aclose()


async def test_top_k_above_profile_limit_refused(provider):
    teacher = compat(provider, profile="tgi")
    with pytest.raises(CapabilityError, match="at most 5"):
        await teacher.complete(chat(logprobs=True, top_logprobs=6))
    assert provider.seen == []
    await teacher.aclose()


@pytest.mark.parametrize(
    ("status", "headers", "cls", "retry_after", "billed"),
    [
        (429, {"retry-after-ms": "1500", "retry-after": "9"}, RateLimited, 1.5, False),
        (429, {"retry-after": "7"}, RateLimited, 7.0, False),
        (429, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, RateLimited, 0.0, False),
        (529, {}, RateLimited, None, False),
        (500, {}, TeacherUnavailable, None, False),
        (503, {"retry-after": "3"}, TeacherUnavailable, 3.0, False),
        (504, {}, TeacherUnavailable, None, True),
        (400, {}, TeacherRejected, None, False),
        (401, {}, TeacherRejected, None, False),
        (404, {}, TeacherRejected, None, False),
        (408, {}, TeacherTimeout, None, False),
    ],
)
async def test_status_errors_map(provider, transport, status, headers, cls, retry_after, billed):
    teacher = compat(provider, transport=transport)
    provider.faults.append(
        Fault(
            "status", status=status, headers=headers, body=openai_error(f"boom {SECRET}", code="x")
        )
    )
    with pytest.raises(cls) as info:
        await teacher.complete(chat())
    err = info.value
    assert type(err) is cls
    assert err.status == status and err.retry_after == retry_after and err.maybe_billed is billed
    assert "boom" in str(err) and SECRET not in str(err) and SECRET not in repr(err)
    assert len(provider.seen) == 1  # max_retries=0: the SDK never retried
    await teacher.aclose()


async def test_reset_after_send_is_maybe_billed(provider, transport):
    teacher = compat(provider, transport=transport)
    provider.faults.append(Fault("reset"))
    with pytest.raises(TeacherUnavailable) as info:
        await teacher.complete(chat())
    assert info.value.maybe_billed is True and info.value.status is None
    await teacher.aclose()


async def test_truncated_body_is_maybe_billed(provider, transport):
    teacher = compat(provider, transport=transport)
    provider.faults.append(Fault("truncate"))
    with pytest.raises(TeacherUnavailable) as info:
        await teacher.complete(chat())
    assert info.value.maybe_billed is True
    await teacher.aclose()


@pytest.mark.parametrize("text", ['{"choices": [', "not json at all", '{"choices": []}', "[1, 2]"])
async def test_malformed_200_is_unavailable_and_maybe_billed(provider, transport, text):
    teacher = compat(provider, transport=transport)
    provider.faults.append(Fault("malformed", body=text))
    with pytest.raises(TeacherUnavailable) as info:
        await teacher.complete(chat())
    assert info.value.maybe_billed is True and "200" in str(info.value)
    await teacher.aclose()


async def test_read_timeout_is_maybe_billed(provider, transport):
    teacher = compat(provider, timeout_s=0.3, transport=transport)
    provider.faults.append(Fault("delay", delay_s=1.0))
    with pytest.raises(TeacherTimeout) as info:
        await teacher.complete(chat())
    assert info.value.maybe_billed is True
    await teacher.aclose()


async def test_connection_refused_is_not_billed(transport):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    teacher = OpenAITeacher(
        "m",
        base_url=f"http://127.0.0.1:{port}/v1",
        profile=server_profile("generic"),
        transport=transport,
    )
    with pytest.raises(TeacherUnavailable) as info:
        await teacher.complete(chat())
    assert info.value.maybe_billed is False
    await teacher.aclose()


async def test_cancellation_propagates(provider, transport):
    teacher = compat(provider, transport=transport)
    provider.faults.append(Fault("delay", delay_s=5.0))
    task = asyncio.create_task(teacher.complete(chat()))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await teacher.aclose()


async def test_key_never_in_repr_or_errors(provider, monkeypatch):
    monkeypatch.setenv("MY_TEACHER_KEY", SECRET)
    cfg = TeacherConfig(
        provider="openai_compatible",
        model="m",
        base_url=provider.openai_url,
        api_key_env="MY_TEACHER_KEY",
    )
    teacher = make_teacher(cfg)
    assert SECRET not in repr(teacher) and SECRET not in str(teacher)
    assert SECRET not in teacher.teacher_id
    provider.faults.append(
        Fault("status", status=401, body=openai_error(f"Incorrect API key provided: {SECRET}"))
    )
    with pytest.raises(TeacherRejected) as info:
        await teacher.complete(chat())
    assert SECRET not in str(info.value)
    assert provider.seen[-1].headers["Authorization"] == f"Bearer {SECRET}"
    await teacher.aclose()


def test_teachers_satisfy_the_protocol():
    from apidistill.teachers import Teacher
    from apidistill.teachers.anthropic import AnthropicTeacher

    assert isinstance(OpenAITeacher("m", base_url="http://127.0.0.1:9/v1"), Teacher)
    assert isinstance(AnthropicTeacher("c", api_key="x"), Teacher)


def test_make_teacher_registry_and_identity(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        make_teacher(TeacherConfig(provider="openai", model="gpt-4o"))
    t = make_teacher(TeacherConfig(provider="openai", model="gpt-4o"), api_key=SECRET)
    assert t.teacher_id == "openai@https://api.openai.com/v1"
    assert t.capabilities.batch_api and t.capabilities.max_top_logprobs == 20
    cfg = TeacherConfig(
        model="gpt-4o", base_url="HTTP://User:pw@LocalHost:80/v1/?api_key=zz", profile="llamacpp"
    )
    t2 = make_teacher(cfg)
    assert t2.provider == "openai_compatible"  # never guessed from the model name
    # the URL without credentials or query, plus the profile's sampling (llama.cpp's penalties)
    assert t2.teacher_id.startswith("openai_compatible@http://localhost/v1+sampling:")
    assert "sampled_in_top" in t2.capabilities.quirks
    t3 = make_teacher(TeacherConfig(model="m", base_url="http://a:1/v1"), base_url="http://b:2/v1")
    assert t3.teacher_id == "openai_compatible@http://b:2/v1"


def test_compatible_server_never_gets_openai_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    from apidistill.teachers import resolve_api_key

    cfg = TeacherConfig(model="m", base_url="http://127.0.0.1:1/v1")
    assert resolve_api_key(cfg, None) is None
