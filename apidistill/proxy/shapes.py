"""What the proxy says itself, in each provider's own error shape, and header hygiene.

A client built on the OpenAI or Anthropic SDK turns these into its usual exceptions
(``openai.BadRequestError``, ``anthropic.RateLimitError``, …), so an error raised by the proxy
reads like one from the provider, with a message that says it came from the proxy.
"""

from __future__ import annotations

import json
from typing import Literal

from starlette.responses import Response

__all__ = ["Api", "error_response", "request_headers", "response_headers"]

Api = Literal["openai", "anthropic"]

# hop-by-hop headers (RFC 9110 §7.6.1) and those the proxy sets itself
_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
     "transfer-encoding", "upgrade", "host", "content-length", "accept-encoding",
     "content-encoding"}
)  # fmt: skip
_AUTH = frozenset({"authorization", "x-api-key", "api-key"})
_ANTHROPIC_KIND = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    502: "api_error",
    504: "timeout_error",
}


def error_response(
    api: Api, status: int, message: str, *, kind: str | None = None, code: str | None = None
) -> Response:
    """An error in ``api``'s documented envelope (OpenAI ``{"error": {...}}``, Anthropic
    ``{"type": "error", "error": {...}}``)."""
    if api == "anthropic":
        body: dict[str, object] = {
            "type": "error",
            "error": {"type": kind or _ANTHROPIC_KIND.get(status, "api_error"), "message": message},
        }
    else:
        default = "invalid_request_error" if status < 500 else "server_error"
        body = {"error": {"message": message, "type": kind or default, "param": None, "code": code}}
    return Response(json.dumps(body), status_code=status, media_type="application/json")


def request_headers(
    incoming: list[tuple[str, str]], api: Api, teacher_key: str | None
) -> tuple[dict[str, str], list[str]]:
    """Headers to send upstream, and the client's secrets (for redaction by value).

    The client's auth header goes upstream as is, unless the proxy holds the teacher's key:
    then it replaces the client's (``Authorization: Bearer`` for OpenAI, ``x-api-key`` for
    Anthropic). Headers are never written to disk either way."""
    out: dict[str, str] = {}
    secrets: list[str] = []
    for name, value in incoming:
        low = name.lower()
        if low in _AUTH:
            secrets.append(value.removeprefix("Bearer ").removeprefix("bearer ").strip())
            if teacher_key is None:
                out[low] = value
            continue
        if low in _HOP or low.startswith("x-apidistill-"):
            continue
        out[low] = value
    if teacher_key is not None:
        if api == "anthropic":
            out["x-api-key"] = teacher_key
        else:
            out["authorization"] = f"Bearer {teacher_key}"
    out["accept-encoding"] = "identity"  # pass bytes through without re-encoding
    return out, secrets


def response_headers(upstream: list[tuple[str, str]]) -> dict[str, str]:
    """Upstream response headers worth passing back (request ids, rate limits, retry-after)."""
    return {
        k: v
        for k, v in upstream
        if k.lower() not in _HOP and k.lower() not in ("date", "server", "content-type")
    }
