"""Logprob enrichment: where the teacher returns logprobs and the client asked none, the
proxy asks for top-k upstream, keeps them in the capture, and strips them from the answer."""

from __future__ import annotations

import httpx2
import openai

from apidistill.proxy.capture_store import iter_captures
from tests.proxy.conftest import CLIENT_KEY, proxy_settings

MESSAGES = [{"role": "user", "content": "Label this: refund request"}]


def test_enriched_logprobs_are_captured_and_stripped(teacher, start_proxy, tmp_path) -> None:
    proxy = start_proxy(proxy_settings(teacher, tmp_path, capture={"logprobs": 5}))
    oa = openai.OpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0)
    plain = oa.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=10)
    assert plain.choices[0].logprobs is None
    sent = teacher.last()["body"]
    assert sent["logprobs"] is True and sent["top_logprobs"] == 5
    chunks = list(oa.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=10, stream=True
    ))  # fmt: skip
    assert all(c.choices[0].logprobs is None for c in chunks if c.choices)
    asked = oa.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=10, logprobs=True, top_logprobs=2
    )
    assert len(asked.choices[0].logprobs.content[0].top_logprobs) == 2  # the client's own ask
    assert teacher.last()["body"]["top_logprobs"] == 2

    caps = list(iter_captures(tmp_path / "captures.sqlite"))
    assert len(caps) == 3
    for cap in caps[:2]:
        entries = cap.logprobs["content"]
        assert len(entries) == cap.usage["output_tokens"]
        assert all(len(e["top_logprobs"]) == 5 for e in entries)
        assert "logprobs" not in cap.request  # the request as the client sent it
    assert len(caps[2].logprobs["content"][0]["top_logprobs"]) == 2
    stats = httpx2.get(proxy.root + "/stats").json()
    assert stats["capture"]["logprobs_top_k"] == 5
    assert "top-5 logprobs requested" in proxy.log()


def test_no_enrichment_for_a_teacher_without_logprobs(teacher, start_proxy, tmp_path) -> None:
    proxy = start_proxy(
        proxy_settings(teacher, tmp_path, provider="anthropic", capture={"logprobs": 5})
    )
    assert "the Messages API returns no logprobs" in proxy.log()
    assert httpx2.get(proxy.root + "/stats").json()["capture"]["logprobs_top_k"] == 0
