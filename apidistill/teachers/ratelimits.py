"""Reading providers' rate-limit and retry headers into plain numbers.

The limiter adapts to what the provider says it has left, and the retry policy waits as long
as the provider asks; both need seconds as floats, whatever format the header used: OpenAI
resets are Go-style durations (``12ms``, ``6m0s``, ``1h2m3.5s``), Anthropic resets are
RFC 3339 instants, and ``retry-after`` is either seconds or an HTTP-date.
"""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime

from apidistill.teachers.base import RateLimitSnapshot

__all__ = [
    "anthropic_rate_limits",
    "openai_rate_limits",
    "parse_duration",
    "parse_retry_after",
    "parse_rfc3339_delay",
]

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|h|m|s)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | None) -> float | None:
    """Seconds in a Go-style duration (``6m0s``, ``12ms``, ``1h2m3.5s``); a bare number is
    seconds. None for anything else, so a malformed header never breaks a response."""
    if text is None:
        return None
    s = text.strip()
    if not s:
        return None
    try:
        value = float(s)
    except ValueError:
        pass
    else:
        return value if math.isfinite(value) and value >= 0 else None
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    return total if pos == len(s) and pos > 0 else None


def _now() -> datetime:
    return datetime.now(UTC)


def parse_rfc3339_delay(text: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from ``now`` until an RFC 3339 instant (never negative); None if unparsable."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or _now())).total_seconds())


def parse_retry_after(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """The wait the provider asked for: ``retry-after-ms`` first (more precise), then
    ``retry-after`` as seconds or as an HTTP-date. None when absent or unreadable."""
    ms = _header(headers, "retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    raw = _header(headers, "retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        pass
    else:
        return value if math.isfinite(value) and value >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or _now())).total_seconds())


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None and not hasattr(headers, "get_list"):  # plain dicts: match any case
        lowered = {k.lower(): v for k, v in headers.items()}
        value = lowered.get(name)
    return value


def _int(headers: Mapping[str, str], name: str) -> int | None:
    raw = _header(headers, name)
    if raw is None:
        return None
    try:
        value = int(float(raw.strip()))
    except (ValueError, OverflowError):
        return None
    return value if value >= 0 else None


def openai_rate_limits(headers: Mapping[str, str]) -> RateLimitSnapshot | None:
    """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``; None when none is present."""
    snap = RateLimitSnapshot(
        limit_requests=_int(headers, "x-ratelimit-limit-requests"),
        remaining_requests=_int(headers, "x-ratelimit-remaining-requests"),
        reset_requests_s=parse_duration(_header(headers, "x-ratelimit-reset-requests")),
        limit_tokens=_int(headers, "x-ratelimit-limit-tokens"),
        remaining_tokens=_int(headers, "x-ratelimit-remaining-tokens"),
        reset_tokens_s=parse_duration(_header(headers, "x-ratelimit-reset-tokens")),
    )
    return None if snap == RateLimitSnapshot() else snap


def anthropic_rate_limits(
    headers: Mapping[str, str], *, now: datetime | None = None
) -> RateLimitSnapshot | None:
    """``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,
    reset}``. The ``tokens`` family is the most restrictive limit in effect, so it fills the
    generic token fields; input and output token limits are kept separately too."""

    def reset(kind: str) -> float | None:
        return parse_rfc3339_delay(_header(headers, f"anthropic-ratelimit-{kind}-reset"), now=now)

    def limit(kind: str) -> int | None:
        return _int(headers, f"anthropic-ratelimit-{kind}-limit")

    def remaining(kind: str) -> int | None:
        return _int(headers, f"anthropic-ratelimit-{kind}-remaining")

    snap = RateLimitSnapshot(
        limit_requests=limit("requests"),
        remaining_requests=remaining("requests"),
        reset_requests_s=reset("requests"),
        limit_tokens=limit("tokens"),
        remaining_tokens=remaining("tokens"),
        reset_tokens_s=reset("tokens"),
        limit_input_tokens=limit("input-tokens"),
        remaining_input_tokens=remaining("input-tokens"),
        reset_input_tokens_s=reset("input-tokens"),
        limit_output_tokens=limit("output-tokens"),
        remaining_output_tokens=remaining("output-tokens"),
        reset_output_tokens_s=reset("output-tokens"),
    )
    return None if snap == RateLimitSnapshot() else snap
