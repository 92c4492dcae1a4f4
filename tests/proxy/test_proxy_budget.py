"""The budget cap on upstream spend: the worst case is reserved before forwarding, settled on
the usage; at the cap the proxy refuses in the provider's own quota-error shape, or sends the
request to the student; spend survives a restart."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import anthropic
import httpx2
import openai
import pytest

from apidistill.proxy.capture_store import iter_captures
from apidistill.testing.proxy_teacher import ProxyTeacherProcess
from tests.proxy.conftest import CLIENT_KEY, proxy_settings

MESSAGES = [{"role": "user", "content": "Summarise the ticket please"}]


def _received(t: ProxyTeacherProcess) -> int:
    return t.stats()["received"]


def test_refused_at_the_cap_in_each_providers_shape(teacher, start_proxy, tmp_path) -> None:
    before = _received(teacher)
    proxy = start_proxy(proxy_settings(teacher, tmp_path, budget={"usd": "0.0001"}))
    oa = openai.OpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0)
    with pytest.raises(openai.RateLimitError) as err:
        oa.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=50)
    assert err.value.status_code == 429 and err.value.code == "insufficient_quota"
    assert "budget is used up" in err.value.message and "nothing was sent" in err.value.message
    an = anthropic.Anthropic(base_url=proxy.root, api_key=CLIENT_KEY, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as aerr:
        an.messages.create(model="claude-sonnet-4-5", max_tokens=50, messages=MESSAGES)
    assert aerr.value.status_code == 402
    assert aerr.value.body["error"]["type"] == "billing_error"
    assert _received(teacher) == before  # nothing reached the teacher
    stats = httpx2.get(proxy.root + "/stats").json()
    assert stats["routes"]["default"]["refused_budget"] == 2


def test_concurrent_clients_never_spend_past_the_cap(teacher, start_proxy, tmp_path) -> None:
    limit = Decimal("0.0012")
    proxy = start_proxy(proxy_settings(teacher, tmp_path, budget={"usd": str(limit)}))
    oa = openai.OpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0)

    def one(i: int) -> str:
        try:
            oa.chat.completions.create(
                model="gpt-4o-mini", max_tokens=60,
                messages=[{"role": "user", "content": f"ticket {i}: " + "word " * 30}],
            )  # fmt: skip
            return "ok"
        except openai.RateLimitError:
            return "refused"

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(one, range(40)))
    assert "ok" in outcomes and "refused" in outcomes
    spent = sum(c.cost_usd for c in iter_captures(tmp_path / "captures.sqlite"))
    assert spent <= limit
    assert Decimal(httpx2.get(proxy.root + "/stats").json()["budget"]["spent_usd"]) == spent


def test_spend_survives_a_restart(teacher, start_proxy, tmp_path) -> None:
    settings = proxy_settings(teacher, tmp_path, budget={"usd": "1"})
    proxy = start_proxy(settings)
    oa = openai.OpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0)
    for _ in range(3):
        oa.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=10)
    proxy.close()
    spent = sum(c.cost_usd for c in iter_captures(tmp_path / "captures.sqlite"))
    again = start_proxy(settings)
    assert Decimal(httpx2.get(again.root + "/stats").json()["budget"]["spent_usd"]) == spent > 0


def test_stream_without_max_tokens_reserves_the_assumed_output(
    teacher, start_proxy, tmp_path
) -> None:
    proxy = start_proxy(proxy_settings(
        teacher, tmp_path, budget={"usd": "0.001", "assume_max_output_tokens": 100_000}
    ))  # fmt: skip
    oa = openai.OpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0)
    with pytest.raises(openai.RateLimitError):  # 100k tokens at $2/M is $0.20 > $0.001
        list(oa.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    list(
        oa.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, max_tokens=16
        )
    )


def test_at_cap_answers_from_the_student(teacher, start_proxy, tmp_path) -> None:
    with ProxyTeacherProcess() as student:
        settings = proxy_settings(
            teacher, tmp_path,
            budget={"usd": "0.0001", "at_cap": "student", "student_url": student.base_url},
        )  # fmt: skip
        settings["teacher"]["api_key_env"] = "PROXY_TEST_TEACHER_KEY"
        proxy = start_proxy(settings, env={"PROXY_TEST_TEACHER_KEY": "sk-teacher-0123456789abcdef"})
        oa = openai.OpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0)
        before = _received(teacher)
        out = oa.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=50)
        assert out.choices[0].message.content
        assert _received(student) == 1 and _received(teacher) == before
        assert student.last()["authorization"] is None  # the teacher's key stays with the teacher
    assert (
        list(iter_captures(tmp_path / "captures.sqlite")) == []
    )  # student answers are not teacher data
    stats = httpx2.get(proxy.root + "/stats").json()
    assert stats["routes"]["default"]["answered_by_student"] == 1
    assert stats["routes"]["default"]["spend_usd"] == "0"  # the student costs no teacher spend
