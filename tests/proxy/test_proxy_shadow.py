"""Shadow mode: the student answers the same requests in the background; agreement and task
score against the teacher accumulate per route; a failing student counts as an error."""

from __future__ import annotations

import time

import anthropic
import httpx2
import openai

from apidistill.proxy.shadow import answer_text
from apidistill.testing.proxy_teacher import ProxyTeacherProcess
from tests.proxy.conftest import CLIENT_KEY, proxy_settings

MESSAGES = [{"role": "user", "content": "Is this spam? WIN A PRIZE NOW"}]


def _wait_shadow(root: str, route: str, n: int) -> dict:
    for _ in range(200):  # the shadow calls finish after the client's answer
        view = httpx2.get(root + "/stats").json()["routes"][route]["shadow"]
        if view["requests"] == n and (view["agreement"] is not None or view["errors"] == n):
            return view
        time.sleep(0.05)
    raise AssertionError(view)


def test_shadow_agreement_per_route(teacher, start_proxy, tmp_path) -> None:
    with ProxyTeacherProcess() as student:
        proxy = start_proxy(proxy_settings(
            teacher, tmp_path, shadow={"student_url": student.base_url, "model": "student"}
        ))  # fmt: skip
        oa = openai.OpenAI(base_url=proxy.root + "/r/spam/v1", api_key=CLIENT_KEY, max_retries=0)
        oa.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=10)
        list(oa.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=10, stream=True
        ))  # fmt: skip
        view = _wait_shadow(proxy.root, "spam", 2)
        assert view == {"requests": 2, "errors": 0, "agreement": 1.0, "task_score_rouge_l": 1.0}
        last = student.last()["body"]
        assert last["model"] == "student" and "stream" not in last
        metrics = httpx2.get(proxy.root + "/metrics").text
        assert 'apidistill_proxy_shadow_agreement{route="spam"} 1.0' in metrics


def test_failing_student_counts_as_shadow_error(teacher, start_proxy, tmp_path) -> None:
    with ProxyTeacherProcess() as student:
        proxy = start_proxy(proxy_settings(
            teacher, tmp_path, provider="anthropic",
            shadow={"student_url": student.base_url, "model": "missing-model"},
        ))  # fmt: skip
        an = anthropic.Anthropic(base_url=proxy.root, api_key=CLIENT_KEY, max_retries=0)
        out = an.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=MESSAGES)
        assert out.content[
            0
        ].text  # the client's answer is the teacher's, whatever the student does
        view = _wait_shadow(proxy.root, "default", 1)
        assert view["errors"] == 1 and view["agreement"] is None


def test_tool_calls_compare_by_name_and_arguments() -> None:
    a = {"choices": [{"message": {"tool_calls": [
        {"function": {"name": "f", "arguments": '{"b": 1, "a": 2}'}}]}}]}  # fmt: skip
    b = {"choices": [{"message": {"tool_calls": [
        {"function": {"name": "f", "arguments": '{"a":2,"b":1}'}}]}}]}  # fmt: skip
    assert answer_text("openai", a) == answer_text("openai", b)
