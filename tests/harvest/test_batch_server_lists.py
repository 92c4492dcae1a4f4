"""The loopback batch server pages its lists as the providers document, seen through the
official SDKs: OpenAI ``GET /v1/batches`` (``after``, ``limit`` 1–100) and Anthropic
``GET /v1/messages/batches`` (``after_id`` or ``before_id``, ``limit`` 1–1000), newest first."""

from __future__ import annotations

import anthropic
import openai
import pytest

from apidistill.testing.batch_server import BatchServer

PARAMS = {
    "model": "claude-haiku-4-5",
    "max_tokens": 8,
    "messages": [{"role": "user", "content": "hi"}],
}


async def test_anthropic_list_pages_both_ways_and_checks_its_limit():
    async with BatchServer() as server:
        client = anthropic.AsyncAnthropic(api_key="k", base_url=server.anthropic_url, max_retries=0)
        ids = []
        for i in range(3):
            b = await client.messages.batches.create(
                requests=[{"custom_id": f"c{i}", "params": PARAMS}]  # type: ignore[list-item]
            )
            ids.append(b.id)
        newest_first = ids[::-1]
        first = await client.messages.batches.list(limit=2)
        assert [b.id for b in first.data] == newest_first[:2] and first.has_more
        assert first.last_id == newest_first[1]
        rest = await client.messages.batches.list(limit=2, after_id=first.last_id)
        assert [b.id for b in rest.data] == newest_first[2:] and not rest.has_more
        back = await client.messages.batches.list(limit=2, before_id=newest_first[2])
        assert [b.id for b in back.data] == newest_first[:2] and not back.has_more
        back1 = await client.messages.batches.list(limit=1, before_id=newest_first[2])
        assert [b.id for b in back1.data] == newest_first[1:2] and back1.has_more
        all_ids = [b.id async for b in client.messages.batches.list(limit=1)]
        assert all_ids == newest_first  # the SDK's auto-pagination walks every page
        for bad in (0, 1001):
            with pytest.raises(anthropic.BadRequestError):
                await client.messages.batches.list(limit=bad)
        await client.close()


async def test_openai_list_rejects_a_limit_outside_1_to_100():
    async with BatchServer() as server:
        client = openai.AsyncOpenAI(api_key="k", base_url=server.openai_url, max_retries=0)
        page = await client.batches.list(limit=100)
        assert page.data == [] and not page.has_more
        for bad in (0, 101):
            with pytest.raises(openai.BadRequestError):
                await client.batches.list(limit=bad)
        await client.close()
