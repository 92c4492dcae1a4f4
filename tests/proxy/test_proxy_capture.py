"""What the proxy writes: every exchange it may keep, assembled, priced and tagged; nothing it
may not keep (terms deny, capture off, not sampled); never a client key."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import anthropic
import httpx2
import openai

from apidistill.proxy.capture_store import iter_captures
from apidistill.testing import provider_payloads as pp
from tests.proxy.conftest import CLIENT_KEY, proxy_settings

MESSAGES = [{"role": "user", "content": "Where is my order? It was due Monday."}]
TOOLS = [
    {"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}
]


def _all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_openai_exchanges_are_captured_assembled_priced_and_tagged(
    teacher, start_proxy, tmp_path
) -> None:
    proxy = start_proxy(proxy_settings(teacher, tmp_path))
    client = openai.OpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0)
    plain = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=20, temperature=0.2, seed=7
    )
    streamed = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=20, temperature=0.2, seed=7, stream=True,
    ))  # fmt: skip
    tagged = openai.OpenAI(
        base_url=proxy.root + "/r/support-triage/v1", api_key=CLIENT_KEY, max_retries=0
    )
    with tagged.chat.completions.stream(
        model="gpt-4o-mini", messages=MESSAGES, tools=TOOLS, max_tokens=20
    ) as s:
        s.get_final_completion()
    client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=5,
        extra_headers={"X-Apidistill-Route": "by-header"},
    )  # fmt: skip

    caps = list(iter_captures(tmp_path / "captures.sqlite"))
    assert [c.route for c in caps] == ["default", "default", "support-triage", "by-header"]
    assert {c.api for c in caps} == {"openai"}
    first, second, tool, _ = caps
    assert first.response["choices"][0]["message"]["content"] == plain.choices[0].message.content
    # the stream is assembled into the object the same request without stream returns
    want = pp.openai_chat_completion(
        {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 20}
    )
    got = second.response
    assert got["id"] == want["id"] == streamed[0].id
    assert got["choices"][0]["message"]["content"] == want["choices"][0]["message"]["content"]
    assert got["choices"][0]["finish_reason"] == want["choices"][0]["finish_reason"]
    assert got["usage"] == want["usage"]
    u = want["usage"]
    assert second.usage["input_tokens"] == u["prompt_tokens"]
    assert second.cost_usd == (
        Decimal(u["prompt_tokens"]) * 1 + Decimal(u["completion_tokens"]) * 2
    ) / Decimal(10**6)
    assert second.sampling == {"temperature": 0.2, "seed": 7, "max_tokens": 20}
    assert second.request["messages"] == MESSAGES and "stream_options" not in second.request
    assert second.policy_decision_id and second.policy_decision_id.startswith("pd-")
    call = tool.response["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "lookup_order" and call["id"].startswith("call_")
    assert tool.response["choices"][0]["finish_reason"] == "tool_calls"
    stats = httpx2.get(proxy.root + "/stats").json()
    assert stats["routes"]["default"]["captured"] == 2
    assert stats["routes"]["support-triage"]["requests"] == 1
    proxy.close()
    assert CLIENT_KEY.encode() not in _all_bytes(tmp_path)


def test_anthropic_stream_capture_equals_the_message(teacher, start_proxy, tmp_path) -> None:
    proxy = start_proxy(proxy_settings(teacher, tmp_path, provider="anthropic"))
    client = anthropic.Anthropic(base_url=proxy.root, api_key=CLIENT_KEY, max_retries=0)
    kw = {"model": "claude-sonnet-4-5", "max_tokens": 30, "messages": MESSAGES}
    with client.messages.stream(**kw) as s:
        s.get_final_message()
    (cap,) = iter_captures(tmp_path / "captures.sqlite")
    assert cap.api == "anthropic" and cap.model == "claude-sonnet-4-5"
    assert cap.response == pp.anthropic_message(kw)
    assert cap.sampling == {"max_tokens": 30}
    proxy.close()
    assert CLIENT_KEY.encode() not in _all_bytes(tmp_path)


def test_teacher_key_replaces_the_client_key(teacher, start_proxy, tmp_path) -> None:
    settings = proxy_settings(teacher, tmp_path)
    settings["teacher"]["api_key_env"] = "PROXY_TEST_TEACHER_KEY"
    proxy = start_proxy(settings, env={"PROXY_TEST_TEACHER_KEY": "sk-teacher-0123456789abcdef"})
    client = openai.OpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5)
    assert teacher.last()["authorization"] == "Bearer sk-teacher-0123456789abcdef"
    proxy.close()
    blob = _all_bytes(tmp_path)
    assert CLIENT_KEY.encode() not in blob and b"sk-teacher-0123456789abcdef" not in blob


def test_client_key_is_passed_through_without_a_teacher_key(teacher, start_proxy, tmp_path) -> None:
    proxy = start_proxy(proxy_settings(teacher, tmp_path))
    openai.OpenAI(
        base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0
    ).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5)
    assert teacher.last()["authorization"] == f"Bearer {CLIENT_KEY}"


def test_denied_terms_forward_but_capture_nothing(teacher, start_proxy, tmp_path) -> None:
    proxy = start_proxy(proxy_settings(teacher, tmp_path, policy={"use": "competing"}))
    client = openai.OpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0)
    out = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5)
    assert out.choices[0].message.content
    stats = httpx2.get(proxy.root + "/stats").json()
    assert stats["policy"]["capture_allowed"] is False and stats["policy"]["decision"] == "deny"
    assert stats["capture"]["enabled"] is False
    assert "capture OFF" in proxy.log() and "§3.3(e)" in proxy.log()
    assert not (tmp_path / "captures.sqlite").exists()


def test_sampling_rate_zero_and_off_switch_keep_no_text(teacher, start_proxy, tmp_path) -> None:
    for name, capture in (("zero", {"sample_rate": 0.0}), ("off", {"enabled": False})):
        path = tmp_path / f"{name}.sqlite"
        proxy = start_proxy(proxy_settings(
            teacher, tmp_path, capture={**capture, "path": str(path)}, budget={"usd": 5}
        ))  # fmt: skip
        client = openai.OpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5)
        proxy.close()
        assert list(iter_captures(path)) == []  # the journal row (for the budget) holds no text
        assert b"due Monday" not in _all_bytes(tmp_path)


def test_redaction_applies_before_the_capture_is_written(teacher, start_proxy, tmp_path) -> None:
    proxy = start_proxy(proxy_settings(
        teacher, tmp_path, capture={"redaction": {"patterns": [r"ACCT-\d{4}"]}}
    ))  # fmt: skip
    client = openai.OpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0)
    text = ("I am jane.doe@example.com, card 4111 1111 1111 1111, call +1 415 555 0100, "
            "account ACCT-9921, key sk-proj-abcdefghijklmnop1234")  # fmt: skip
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}], max_tokens=5
    )
    (cap,) = iter_captures(tmp_path / "captures.sqlite")
    kept = cap.request["messages"][0]["content"]
    for kind in ("email", "card", "phone", "custom", "api_key"):
        assert f"[REDACTED:{kind}]" in kept
    proxy.close()
    blob = _all_bytes(tmp_path)
    for secret in (b"jane.doe@example.com", b"4111 1111 1111 1111", b"415 555 0100",
                   b"ACCT-9921", b"sk-proj-abcdefghijklmnop1234"):  # fmt: skip
        assert secret not in blob
