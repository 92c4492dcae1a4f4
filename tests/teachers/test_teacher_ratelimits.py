"""Header parsing: durations, RFC 3339 resets, retry-after in all its forms."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx2
import pytest

from apidistill.teachers.ratelimits import (
    anthropic_rate_limits,
    openai_rate_limits,
    parse_duration,
    parse_retry_after,
)

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("12ms", 0.012),
        ("6m0s", 360.0),
        ("1h2m3.5s", 3723.5),
        ("1s", 1.0),
        ("0.5s", 0.5),
        ("20", 20.0),
        ("", None),
        ("soon", None),
        ("5x", None),
        ("1m-3s", None),
        ("-4", None),
        (None, None),
    ],
)
def test_parse_duration(text, seconds):
    got = parse_duration(text)
    assert got == pytest.approx(seconds) if seconds is not None else got is None


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after-ms": "junk", "retry-after": "9"}, 9.0),
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after": "Tue, 24 Nov 2026 12:00:30 GMT"}, 30.0),
        ({"retry-after": "Tue, 24 Nov 2026 11:00:00 GMT"}, 0.0),
        ({"retry-after": "whenever"}, None),
        ({"retry-after": "nan"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers, seconds):
    assert parse_retry_after(headers, now=NOW) == seconds


def test_openai_snapshot_from_httpx_headers():
    h = httpx2.Headers(
        {
            "X-RateLimit-Limit-Requests": "60",
            "x-ratelimit-remaining-requests": "59",
            "x-ratelimit-reset-requests": "1s",
            "x-ratelimit-limit-tokens": "150000",
            "x-ratelimit-remaining-tokens": "149984",
            "x-ratelimit-reset-tokens": "6m0s",
        }
    )
    snap = openai_rate_limits(h)
    assert snap is not None
    assert (snap.limit_requests, snap.remaining_requests, snap.reset_requests_s) == (60, 59, 1.0)
    assert (snap.limit_tokens, snap.remaining_tokens, snap.reset_tokens_s) == (
        150000,
        149984,
        360.0,
    )
    assert openai_rate_limits({"content-type": "application/json"}) is None


def test_anthropic_snapshot_rfc3339():
    h = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "10",
        "anthropic-ratelimit-requests-reset": "2026-11-24T12:00:07Z",
        "anthropic-ratelimit-output-tokens-limit": "8000",
        "anthropic-ratelimit-output-tokens-remaining": "100",
        "anthropic-ratelimit-output-tokens-reset": "2026-11-24T12:01:00+00:00",
        "anthropic-ratelimit-tokens-reset": "not a time",
    }
    snap = anthropic_rate_limits(h, now=NOW)
    assert snap is not None
    assert (snap.limit_requests, snap.remaining_requests, snap.reset_requests_s) == (50, 10, 7.0)
    assert (snap.limit_output_tokens, snap.remaining_output_tokens) == (8000, 100)
    assert snap.reset_output_tokens_s == 60.0 and snap.reset_tokens_s is None
    assert anthropic_rate_limits({}) is None
