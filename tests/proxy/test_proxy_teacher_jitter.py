"""The benchmark's loopback teacher spreads its answer delay by ``jitter`` (uniform, seeded), so
closed-loop clients do not reach the proxy in lockstep bursts (benchmarks/proxy_overhead.py)."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer

from apidistill.testing import proxy_teacher


async def _delays(
    monkeypatch: pytest.MonkeyPatch, jitter: float, n: int = 40, seqs: list[str] | None = None
) -> list[float]:
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def record(seconds: float, *args: object) -> None:
        if seconds < 0.1:  # asyncio.sleep is patched for the whole loop: others pass through
            await real_sleep(seconds, *args)
        else:
            slept.append(seconds)

    monkeypatch.setattr(proxy_teacher.asyncio, "sleep", record)
    app = proxy_teacher.build_app(latency_ms=300, jitter=jitter)
    async with TestClient(TestServer(app)) as client:
        for i in range(n):
            body = {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]}
            head = {proxy_teacher.SEQ_HEADER: seqs[i]} if seqs else {}
            r = await client.post("/v1/chat/completions", json=body, headers=head)
            assert r.status == 200
    return slept


@pytest.mark.parametrize("jitter", [0.0, 0.5])
def test_delays_stay_in_the_band_and_spread_only_with_jitter(
    monkeypatch: pytest.MonkeyPatch, jitter: float
) -> None:
    slept = asyncio.run(_delays(monkeypatch, jitter))
    assert len(slept) == 40
    assert all(0.3 * (1 - jitter) <= s <= 0.3 * (1 + jitter) for s in slept)
    if jitter:
        assert max(slept) - min(slept) > 0.3 * jitter  # spread over most of the band
        assert slept == asyncio.run(_delays(monkeypatch, jitter))  # seeded: same every run
    else:
        assert set(slept) == {0.3}


def test_a_sequence_header_fixes_each_request_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Arms that send the same sequence numbers wait the same delays, in whatever order."""
    seqs = [str(i) for i in range(40)]
    first = asyncio.run(_delays(monkeypatch, 0.5, seqs=seqs))
    again = asyncio.run(_delays(monkeypatch, 0.5, seqs=list(reversed(seqs))))
    assert first == list(reversed(again))
    assert all(0.15 <= s <= 0.45 for s in first) and max(first) - min(first) > 0.15
    assert first != asyncio.run(_delays(monkeypatch, 0.5))  # without the header: the rng
