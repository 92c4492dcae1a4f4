from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apidistill.errors import ConfigError
from apidistill.harvest.limits import RateLimiter, SlidingWindow, Stopped
from apidistill.teachers.base import RateLimitSnapshot
from apidistill.testing.fault_server import max_in_window


def test_token_bucket_trap_is_avoided():
    """A bucket of capacity L refilled at L/window lets 2L through around a window edge;
    the sliding log lets L through in any window."""
    w = SlidingWindow(10, 60.0)
    sent: list[float] = []
    t = 59.0
    for _ in range(10):
        assert w.fits(1, t)
        w.take(1)
        w.finish(1, 1, t)
        sent.append(t)
    # one second later, a bucket would be refilled by 1/6 and a fresh minute started;
    # the log still counts all ten inside the window
    assert not w.fits(1, 61.0)
    assert w.free_at(1, 61.0) == pytest.approx(119.0)
    assert w.fits(1, 119.0)


def test_units_are_held_while_in_flight_and_refunded_to_actual():
    w = SlidingWindow(100, 10.0)
    w.take(80)  # reserved worst case
    assert not w.fits(30, 0.0)
    assert w.free_at(30, 0.0) is None  # only a finish can make room
    w.finish(80, 20, 1.0)  # actual usage was 20
    assert w.fits(80, 1.0) and not w.fits(81, 1.0)
    assert w.used(11.0) == 0  # expired window_s after the finish


@settings(max_examples=60, deadline=None)
@given(
    limit=st.integers(1, 8),
    events=st.lists(
        st.tuples(st.floats(0, 3), st.floats(0, 2), st.floats(0, 1)), min_size=1, max_size=60
    ),
)
def test_any_window_holds_at_most_limit(limit, events):
    """Simulate sends at increasing times with random durations; whatever the provider
    measures between our reservation and our seeing the answer stays within the limit."""
    window = 1.0
    w = SlidingWindow(limit, window)
    now = 0.0
    in_flight: list[tuple[float, float]] = []  # (ends_at, received_at)
    received: list[float] = []
    for gap, duration, frac in events:
        now += gap / 10
        for ends_at, _ in sorted(in_flight):
            if ends_at <= now:
                w.finish(1, 1, ends_at)
        in_flight = [x for x in in_flight if x[0] > now]
        if not w.fits(1, now):
            continue
        w.take(1)
        arrival = now + duration * frac / 10  # the provider sees it later...
        in_flight.append((arrival + duration / 10, arrival))  # ...and answers after that
        received.append(arrival)
    assert max_in_window(received, window) <= limit


async def test_rpm_limit_holds_in_every_window():
    lim = RateLimiter(rpm=5, window_s=0.3)
    grants: list[float] = []
    loop = asyncio.get_running_loop()

    async def one() -> None:
        p = await lim.acquire(1)
        grants.append(loop.time())
        await asyncio.sleep(0.01)
        p.release(1)

    t0 = loop.time()
    await asyncio.gather(*(one() for _ in range(20)))
    assert max_in_window(grants, 0.3) <= 5
    # 20 requests at 5 per 0.3 s need at least 3 more windows, and not much more
    assert 0.9 <= loop.time() - t0 < 3.0


async def test_tpm_refunds_let_more_requests_through():
    lim = RateLimiter(tpm=100, window_s=5.0)
    p1 = await lim.acquire(60)
    waiter = asyncio.ensure_future(lim.acquire(60))
    await asyncio.sleep(0.01)
    assert not waiter.done()  # 120 reserved > 100
    p1.release(10)  # actual usage: 10 tokens
    p2 = await asyncio.wait_for(waiter, 1.0)
    assert p2.tokens == 60


async def test_request_larger_than_tpm_is_a_clear_error():
    with pytest.raises(ConfigError, match="tpm"):
        await RateLimiter(tpm=50).acquire(51)


async def test_pause_after_429_blocks_until_retry_after():
    lim = RateLimiter()
    loop = asyncio.get_running_loop()
    lim.pause(0.2)
    t0 = loop.time()
    p = await lim.acquire(1)
    assert loop.time() - t0 >= 0.19
    p.release(1)
    assert lim.pauses == 1


async def test_dense_429s_pause_everything_a_lone_one_does_not():
    lim = RateLimiter(pause_after=3, of_last=10)
    for _ in range(8):
        lim.note_outcome(False)
    lim.note_outcome(True, 5.0)
    lim.note_outcome(True, 5.0)
    assert lim.pauses == 0  # 2 in the last 10: random noise, no pause
    lim.note_outcome(True, 0.2)
    assert lim.pauses == 1  # 3 in the last 10: the limit is real
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    (await lim.acquire(1)).release(1)
    assert loop.time() - t0 >= 0.19


async def test_provider_headroom_from_headers_is_followed():
    lim = RateLimiter()
    lim.observe(RateLimitSnapshot(remaining_requests=2, reset_requests_s=0.2))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for _ in range(2):
        (await lim.acquire(1)).release(1)
    assert loop.time() - t0 < 0.1
    (await lim.acquire(1)).release(1)  # third waits for the reset
    assert loop.time() - t0 >= 0.19


async def test_waiters_sleep_until_woken_without_polling(monkeypatch):
    lim = RateLimiter(rpm=1, window_s=0.3)
    wakes = 0
    original = RateLimiter._wake

    def counting(self):
        nonlocal wakes
        wakes += 1
        original(self)

    monkeypatch.setattr(RateLimiter, "_wake", counting)
    (await lim.acquire(1)).release(1)
    await lim.acquire(1)
    # one wake when queued, one from the timer at expiry: no busy loop
    assert wakes <= 3


async def test_close_wakes_waiters_with_stopped():
    lim = RateLimiter(rpm=1, window_s=10)
    await lim.acquire(1)
    waiter = asyncio.ensure_future(lim.acquire(1))
    await asyncio.sleep(0)
    lim.close()
    with pytest.raises(Stopped):
        await waiter
    with pytest.raises(Stopped):
        await lim.acquire(1)


async def test_cancelled_waiter_does_not_leak_capacity():
    lim = RateLimiter(rpm=1, window_s=0.2)
    p = await lim.acquire(1)
    waiter = asyncio.ensure_future(lim.acquire(1))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    p.release(1)
    got = await asyncio.wait_for(lim.acquire(1), 1.0)  # the slot came back
    assert got.tokens == 1
