from __future__ import annotations

import asyncio
import random

import pytest

from apidistill.errors import (
    CapabilityError,
    RateLimited,
    TeacherError,
    TeacherRejected,
    TeacherTimeout,
    TeacherUnavailable,
)
from apidistill.harvest.retry import RetryPolicy, backoff_s, classify


@pytest.mark.parametrize(
    ("exc", "retryable", "reason", "billed"),
    [
        (RateLimited("x", status=429, retry_after=1.5), True, "rate_limited", False),
        (RateLimited("x", status=529), True, "rate_limited", False),
        (TeacherTimeout("x", maybe_billed=True), True, "timeout", True),
        (TeacherTimeout("x", status=408), True, "timeout", False),
        (TeacherUnavailable("x", status=503), True, "unavailable", False),
        (TeacherUnavailable("x", status=502, maybe_billed=True), True, "unavailable", True),
        (TeacherUnavailable("reset", maybe_billed=True), True, "unavailable", True),
        (TeacherError("conflict", status=409), True, "unavailable", False),
        (TeacherError("boom", status=500), True, "unavailable", False),
        (TeacherRejected("bad", status=400), False, "rejected", False),
        (TeacherRejected("auth", status=401), False, "rejected", False),
        (TeacherError("forbidden", status=403), False, "rejected", False),
        (TeacherError("missing", status=404), False, "rejected", False),
        (TeacherError("unprocessable", status=422), False, "rejected", False),
        (CapabilityError("no logprobs"), False, "capability", False),
        (ValueError("a bug"), False, "internal", True),
        (asyncio.CancelledError(), False, "cancelled", True),
    ],
)
def test_classify_follows_the_one_policy(exc, retryable, reason, billed):
    f = classify(exc)
    assert (f.retryable, f.reason, f.maybe_billed) == (retryable, reason, billed)


def test_classify_keeps_retry_after_and_flags_rate_limits():
    f = classify(RateLimited("slow down", status=429, retry_after=2.5))
    assert f.retry_after == 2.5 and f.rate_limited
    assert not classify(TeacherUnavailable("x", status=503)).rate_limited


def test_backoff_honors_retry_after_and_never_waits_less():
    rng = random.Random(0)
    for _ in range(200):
        d = backoff_s(1, 3.0, rng=rng)
        assert 3.0 <= d <= 3.3
    # absurd retry-after values are capped, not obeyed for hours
    assert backoff_s(1, 10_000, max_retry_after_s=60, rng=rng) <= 66


def test_backoff_grows_exponentially_with_bounded_jitter():
    rng = random.Random(1)
    waits = [backoff_s(n, None, initial_s=0.5, max_s=8, jitter=0.25, rng=rng) for n in range(1, 8)]
    for n, w in enumerate(waits, start=1):
        step = min(0.5 * 2 ** (n - 1), 8)
        assert 0.75 * step <= w <= step
    assert waits[-1] <= 8


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError):
        RetryPolicy(timeout_s=0)


async def _run(policy: RetryPolicy, failures: list[BaseException], **kw) -> tuple[int, object]:
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if failures:
            raise failures.pop(0)
        return "ok"

    try:
        async for a in policy.retrying(sleep=lambda s: asyncio.sleep(0), **kw):
            with a:
                result = await attempt()
                return calls, result
    except Exception as exc:
        return calls, exc
    raise AssertionError


async def test_retrying_retries_transient_failures_then_succeeds():
    policy = RetryPolicy(max_retries=3)
    calls, out = await _run(
        policy, [RateLimited("x", status=429), TeacherUnavailable("y", status=503)]
    )
    assert (calls, out) == (3, "ok")


async def test_retrying_gives_up_after_max_retries_with_the_last_error():
    policy = RetryPolicy(max_retries=2)
    errs = [TeacherUnavailable(f"e{i}", status=503) for i in range(5)]
    calls, out = await _run(policy, errs)
    assert calls == 3
    assert isinstance(out, TeacherUnavailable) and out.message == "e2"


async def test_retrying_never_retries_a_rejection():
    calls, out = await _run(RetryPolicy(max_retries=5), [TeacherRejected("bad", status=400)])
    assert calls == 1 and isinstance(out, TeacherRejected)


async def test_should_stop_ends_retrying_early():
    stop = False

    async def attempt() -> None:
        nonlocal stop
        stop = True
        raise TeacherUnavailable("x", status=503)

    calls = 0
    with pytest.raises(TeacherUnavailable):
        async for a in RetryPolicy(max_retries=5).retrying(
            sleep=lambda s: asyncio.sleep(0), should_stop=lambda: stop
        ):
            with a:
                calls += 1
                await attempt()
    assert calls == 1


async def test_retrying_waits_what_the_provider_asked():
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    policy = RetryPolicy(max_retries=1)
    async for a in policy.retrying(sleep=sleep):
        with a:
            if not slept:
                raise RateLimited("x", status=429, retry_after=0.7)
    assert len(slept) == 1 and 0.7 <= slept[0] <= 0.77


async def test_attempts_made_before_the_controller_count_toward_the_limit():
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    policy = RetryPolicy(max_retries=3, initial_backoff_s=1.0, max_backoff_s=100, jitter=0.0)
    calls = 0
    with pytest.raises(TeacherUnavailable):
        async for a in policy.retrying(sleep=sleep, attempts_done=1):
            with a:
                calls += 1
                raise TeacherUnavailable("down", status=503)
    assert calls == 3  # 1 outside + 3 inside = max_retries + 1
    assert slept == [2.0, 4.0]  # the backoff continues from attempt 2
