"""The fault server itself: documented shapes, every fault as specified, honest counters."""

from __future__ import annotations

import contextlib
import json
import time

import httpx2
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from apidistill.testing.fault_server import (
    BILLED_FAULTS,
    HTTP_FAULTS,
    _parse_faults,
    max_in_window,
    request_digest,
)

BODY = {"model": "fault-model", "messages": [{"role": "user", "content": "hello there"}]}


def _post(srv, body=BODY, timeout=5.0):
    with httpx2.Client(timeout=timeout) as c:
        return c.post(srv.base_url + "/chat/completions", json=body)


def test_answers_parse_as_openai_objects_with_logprobs(fault):
    srv = fault()
    r = _post(srv, {**BODY, "logprobs": True, "top_logprobs": 3, "max_tokens": 2})
    obj = ChatCompletion.model_validate(r.json())
    assert obj.choices[0].finish_reason == "length"
    lp = obj.choices[0].logprobs.content
    assert len(lp) == 2 and len(lp[0].top_logprobs) == 3
    assert obj.usage.prompt_tokens > 0 and obj.usage.completion_tokens == 2
    again = _post(srv, {**BODY, "logprobs": True, "top_logprobs": 3, "max_tokens": 2}).json()
    assert again["choices"] == r.json()["choices"]  # deterministic
    d = srv.stats()["digests"][request_digest(BODY)]
    assert (d["received"], d["answered"], d["billed"]) == (2, 2, 2)


def test_stream_chunks_parse_and_carry_usage(fault):
    srv = fault()
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    r = _post(srv, body)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [ln[6:] for ln in r.text.split("\n\n") if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(json.loads(e)) for e in events[:-1]]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    full = _post(srv).json()["choices"][0]["message"]["content"]
    assert text == full
    assert chunks[-1].usage is not None and chunks[-1].choices == []


@pytest.mark.parametrize("kind", HTTP_FAULTS)
def test_http_faults_answer_with_their_status_unbilled(fault, kind):
    srv = fault(fault_rate=1.0, faults={kind: 1}, retry_after_ms=75, retry_after_s=1)
    r = _post(srv)
    assert r.status_code == int(kind)
    assert r.json()["error"]["message"]
    if kind == "429":
        assert r.headers["retry-after-ms"] == "75" and r.headers["retry-after"] == "1"
    st = srv.stats()
    assert (st["received"], st["billed"], st["answered"]) == (1, 0, 0)


def test_transport_faults_break_the_exchange_as_documented(fault):
    srv = fault(fault_rate=1.0, faults={"reset": 1})
    with pytest.raises(httpx2.TransportError):
        _post(srv)
    srv = fault(fault_rate=1.0, faults={"half_body": 1})
    with pytest.raises(httpx2.RemoteProtocolError):
        _post(srv)
    srv = fault(fault_rate=1.0, faults={"invalid_json": 1})
    r = _post(srv)
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        r.json()
    srv = fault(fault_rate=1.0, faults={"wrong_content_type": 1})
    r = _post(srv)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    srv = fault(fault_rate=1.0, faults={"timeout": 1}, hang_s=2.0)
    t0 = time.monotonic()
    with pytest.raises(httpx2.ReadTimeout):
        _post(srv, timeout=0.3)
    assert time.monotonic() - t0 < 1.5
    assert srv.stats()["billed"] == 1  # generated (and charged) although nobody read it


def test_stream_faults_duplicate_reorder_and_slow_down(fault):
    body = {**BODY, "stream": True}

    def content(r):
        out = []
        for e in r.text.split("\n\n"):
            if e.startswith("data: {"):
                ch = json.loads(e[6:])["choices"]
                if ch and ch[0]["delta"].get("content"):
                    out.append(ch[0]["delta"]["content"])
        return out

    clean = content(_post(fault(), body))
    dup = content(_post(fault(fault_rate=1.0, faults={"dup_chunks": 1}), body))
    assert dup == [c for c in clean for _ in (0, 1)]
    ooo = content(_post(fault(fault_rate=1.0, faults={"ooo_chunks": 1}), body))
    assert sorted(ooo) == sorted(clean) and ooo != clean
    srv = fault(fault_rate=1.0, faults={"slow_stream": 1}, stream_delay_ms=40)
    t0 = time.monotonic()
    assert content(_post(srv, body)) == clean
    assert time.monotonic() - t0 >= 0.04 * len(clean)
    assert srv.stats()["answered"] == 0  # a faulty stream is billed, not a clean answer


def test_fault_draws_are_seeded_per_request_and_arrival(fault):
    def outcomes(seed):
        srv = fault(fault_rate=0.5, seed=seed, faults={"429": 1, "503": 1, "reset": 1})
        with httpx2.Client(timeout=5) as c:
            for i in range(30):
                body = {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]}
                with contextlib.suppress(httpx2.TransportError):
                    c.post(srv.base_url + "/chat/completions", json=body)
        return [e["outcome"] for e in srv.stats()["log"]]

    a, b = outcomes(7), outcomes(7)
    assert a == b and 5 < sum(o != "ok" for o in a) < 25
    assert outcomes(8) != a


def test_billed_counts_follow_the_fault_table(fault):
    assert "timeout" in BILLED_FAULTS and "half_body" in BILLED_FAULTS
    assert "reset" not in BILLED_FAULTS and not set(HTTP_FAULTS) & BILLED_FAULTS


def test_server_enforced_limits_send_openai_headers(fault):
    srv = fault(rpm_limit=2, limit_window_s=30)
    r1, r2, r3 = (_post(srv) for _ in range(3))
    assert (r1.status_code, r2.status_code, r3.status_code) == (200, 200, 429)
    assert r1.headers["x-ratelimit-limit-requests"] == "2"
    assert r2.headers["x-ratelimit-remaining-requests"] == "0"
    assert r3.headers["x-ratelimit-reset-requests"].endswith("s")


def test_config_rejects_unknown_settings(fault):
    srv = fault()
    with pytest.raises(ValueError, match="unknown setting"):
        srv.configure(latency=5)
    with pytest.raises(ValueError, match="unknown faults"):
        srv.configure(faults={"gremlins": 1})
    with pytest.raises(Exception, match="unknown fault"):
        _parse_faults("429=1,gremlins=2")


def test_max_in_window_counts_half_open_windows():
    assert max_in_window([0.0, 0.5, 1.0, 1.2], 1.0) == 3
    assert max_in_window([0.0, 1.0, 2.0], 1.0) == 1
    assert max_in_window([0.0, 0.1], 1.0, [5, 7]) == 12


def test_usage_modes_recount_what_is_reported_and_billed(fault):
    """``usage`` plays teachers with other tokenizers; the extras play a misreporting gateway.
    The answers still parse as OpenAI objects (usage is optional in the SDK's type)."""
    text = "订单 778812 😀 é"
    body = {"model": "fault-model", "messages": [{"role": "user", "content": text}]}
    seen = f"user:{text}"  # the input text the server counts (role:content)
    expected = {"words": len(seen.split()), "chars": len(seen), "bytes": len(seen.encode())}
    for mode, n in expected.items():
        srv = fault(usage=mode)
        usage = ChatCompletion.model_validate(_post(srv, body).json()).usage
        assert usage.prompt_tokens == n and srv.stats()["log"][-1]["prompt_tokens"] == n
    srv = fault(usage="none")
    r = _post(srv, body).json()
    assert "usage" not in r and ChatCompletion.model_validate(r).usage is None
    assert srv.stats()["log"][-1]["prompt_tokens"] == expected["words"]  # still billed
    srv = fault(extra_prompt_tokens=1000, extra_completion_tokens=7)
    usage = _post(srv, {**body, "max_tokens": 2}).json()["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (expected["words"] + 1000, 9)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    with pytest.raises(ValueError, match="unknown usage mode"):
        srv.configure(usage="tokens")
