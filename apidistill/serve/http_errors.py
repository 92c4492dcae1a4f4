"""HTTP errors in each API's own shape, so official SDKs raise their usual exception types.

OpenAI:    ``{"error": {"message", "type", "param", "code"}}``
Anthropic: ``{"type": "error", "error": {"type", "message"}}``

One :class:`APIError` carries the status, message and (OpenAI) param/code; which body it
becomes depends on the endpoint it was raised from (``/v1/messages…`` → Anthropic).
"""

from __future__ import annotations

import json
import math
from typing import Literal

__all__ = ["APIError", "Flavor", "error_body", "flavor_of", "sse_error"]

Flavor = Literal["openai", "anthropic"]

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_OPENAI_TYPES = {
    401: "invalid_request_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "requests",
    503: "server_error",
}


class APIError(Exception):
    """An error answer. ``retry_after`` (seconds) becomes a ``Retry-After`` header."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"retry-after": str(max(1, math.ceil(self.retry_after)))}


def flavor_of(path: str) -> Flavor:
    return "anthropic" if path.startswith("/v1/messages") else "openai"


def error_body(err: APIError, flavor: Flavor) -> dict[str, object]:
    if flavor == "anthropic":
        kind = _ANTHROPIC_TYPES.get(
            err.status, "api_error" if err.status >= 500 else "invalid_request_error"
        )
        return {"type": "error", "error": {"type": kind, "message": err.message}}
    kind = _OPENAI_TYPES.get(
        err.status, "server_error" if err.status >= 500 else "invalid_request_error"
    )
    return {"error": {"message": err.message, "type": kind, "param": err.param, "code": err.code}}


def sse_error(err: APIError, flavor: Flavor) -> str:
    """An error that happens after a stream has started (the status is already 200)."""
    body = json.dumps(error_body(err, flavor))
    if flavor == "anthropic":
        return f"event: error\ndata: {body}\n\n"
    return f"data: {body}\n\n"
