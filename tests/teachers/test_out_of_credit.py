"""Out of credit is not a rate limit (issue 19, item 8).

OpenAI answers 429 with ``error.type`` / ``error.code`` ``insufficient_quota`` when the account
has no credit or is over its spend limit; Anthropic answers 400 "Your credit balance is too
low". Both go through the official SDKs to a loopback fake here. The error must say the
account is out of credit and how to fix it (never "lower concurrency"), and the retry policy
must not hammer it.
"""

from __future__ import annotations

import pytest
from teacher_fakes import Fault

from apidistill.errors import OutOfCredit, RateLimited
from apidistill.harvest.retry import classify
from apidistill.records import GenerationParams, Message, TeacherRequest
from apidistill.teachers.anthropic import AnthropicTeacher
from apidistill.teachers.openai import OpenAITeacher
from apidistill.teachers.profiles import server_profile
from apidistill.testing.provider_payloads import anthropic_error, openai_error

SECRET = "sk-test-SECRETSECRETSECRET123"
QUOTA_TEXT = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes"
)


def chat() -> TeacherRequest:
    return TeacherRequest(
        messages=[Message(role="user", content="hello")], params=GenerationParams(max_tokens=4)
    )


def openai_teacher(provider, transport: str) -> OpenAITeacher:
    return OpenAITeacher(
        "test-model",
        base_url=provider.openai_url,
        api_key=SECRET,
        profile=server_profile("vllm"),
        transport=transport,
    )


@pytest.mark.parametrize(
    ("type_", "code"),
    [
        ("insufficient_quota", "insufficient_quota"),
        ("insufficient_quota", None),  # older answers: only the type says it
        ("insufficient_quota", "credit_balance_exhausted"),
        ("insufficient_quota", "project_spend_limit_exceeded"),
    ],
)
async def test_openai_insufficient_quota_says_out_of_credit(provider, transport, type_, code):
    teacher = openai_teacher(provider, transport)
    provider.faults.append(
        Fault("status", status=429, body=openai_error(QUOTA_TEXT, type=type_, code=code))
    )
    with pytest.raises(OutOfCredit) as info:
        await teacher.complete(chat())
    err = info.value
    assert err.status == 429 and err.maybe_billed is False
    text = str(err)
    assert "out of credit" in text and "billing" in text
    assert "concurrency" not in err.message and "lower" not in (err.hint or "").split(";")[0]
    failure = classify(err)
    assert failure.reason == "out_of_credit" and failure.retryable is False
    assert failure.rate_limited is False  # no limiter pause: it is not about speed
    await teacher.aclose()


async def test_openai_plain_429_is_still_a_rate_limit(provider, transport):
    teacher = openai_teacher(provider, transport)
    provider.faults.append(
        Fault(
            "status",
            status=429,
            body=openai_error(
                "Rate limit reached for requests", type="requests", code="rate_limit_exceeded"
            ),
        )
    )
    with pytest.raises(RateLimited) as info:
        await teacher.complete(chat())
    assert not isinstance(info.value, OutOfCredit)
    assert classify(info.value).retryable
    await teacher.aclose()


async def test_anthropic_credit_balance_too_low_says_out_of_credit(provider, transport):
    t = AnthropicTeacher(
        "claude-test", base_url=provider.anthropic_url, api_key=SECRET, transport=transport
    )
    message = (
        "Your credit balance is too low to access the Anthropic API. Please go to Plans & "
        "Billing to upgrade or purchase credits."
    )
    provider.faults.append(
        Fault("status", status=400, body=anthropic_error("invalid_request_error", message))
    )
    with pytest.raises(OutOfCredit) as info:
        await t.complete(chat())
    assert info.value.status == 400 and "out of credit" in str(info.value)
    assert classify(info.value).reason == "out_of_credit"
    await t.aclose()
