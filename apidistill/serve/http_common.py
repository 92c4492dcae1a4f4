"""What every endpoint does before generating: auth, bounded body, JSON, model name,
validation, admission. Each step fails with an :class:`APIError` the app renders in the
endpoint's own API shape.

Admission bounds the work the server accepts: at most ``max_batch_size`` requests
generate and ``max_queue`` wait; the next one is turned away at once (429 OpenAI, 529
Anthropic) with a ``Retry-After`` estimated from the last batch's duration, instead of
queueing without limit until clients time out.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from apidistill.errors import ApidistillError, ConfigError
from apidistill.serve.engine import ServeEngine
from apidistill.serve.http_errors import APIError, Flavor

__all__ = [
    "Admission",
    "ServeSettings",
    "ServerContext",
    "Slot",
    "new_id",
    "off_loop",
    "parse_body",
    "sse",
    "unless_disconnected",
]

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
_DISCONNECT_POLL_S = 0.5

# How far past the limit an oversize body is still read (and thrown away) so that the
# client, which sends the whole body before reading the answer, gets the 413 instead of a
# broken connection. Bigger bodies get the connection closed.
_DRAIN_FACTOR = 16

# A JSON escape of a UTF-16 surrogate (\uD800-\uDFFF): the only way a lone surrogate gets
# into a parsed body, since the UTF-8 decoder refuses encoded ones.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class ServeSettings:
    """Limits and identity of one server (from the ``serve`` command's options)."""

    served_model_name: str
    aliases: tuple[str, ...] = ()
    api_key: str | None = field(default=None, repr=False)
    max_queue: int = 256
    max_tokens_cap: int = 2048
    max_n: int = 8
    max_body_bytes: int = 4 * 1024 * 1024


class Admission:
    """Counts requests in flight (generating or queued) against a fixed limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inflight = 0
        self.rejected = 0

    def enter(self) -> Slot | None:
        if self.inflight >= self.limit:
            self.rejected += 1
            return None
        self.inflight += 1
        return Slot(self)


class Slot:
    """One admitted request. Released exactly once: by the handler when it finishes, or
    when it is garbage collected, which covers a streaming response whose client left
    before the body was ever iterated (its ``finally`` then never runs)."""

    def __init__(self, admission: Admission) -> None:
        self._admission: Admission | None = admission

    def release(self) -> None:
        if self._admission is not None:
            self._admission.inflight = max(0, self._admission.inflight - 1)
            self._admission = None

    def __del__(self) -> None:
        self.release()


@dataclass
class ServerContext:
    engine: ServeEngine
    settings: ServeSettings
    admission: Admission

    @property
    def model_names(self) -> tuple[str, ...]:
        return (self.settings.served_model_name, *self.settings.aliases)

    def authorize(self, request: Request) -> None:
        """``Authorization: Bearer KEY`` (OpenAI) or ``x-api-key: KEY`` (Anthropic)."""
        key = self.settings.api_key
        if not key:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given is None or not hmac.compare_digest(given.encode(), key.encode()):
            raise APIError(
                401,
                "Incorrect API key provided."
                if given
                else "Missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
                code="invalid_api_key",
            )

    def check_model(self, name: str) -> None:
        if name not in self.model_names:
            raise APIError(
                404,
                f"The model `{name}` does not exist. This server serves "
                f"`{self.settings.served_model_name}`.",
                param="model",
                code="model_not_found",
            )

    def admit(self, flavor: Flavor) -> Slot:
        slot = self.admission.enter()
        if slot is not None:
            return slot
        wait = max(1.0, self.engine.last_batch_seconds())
        raise APIError(
            529 if flavor == "anthropic" else 429,
            f"apidistill serve is at capacity ({self.admission.inflight} requests in flight); "
            f"retry after {wait:.0f} s",
            code="rate_limit_exceeded",
            retry_after=wait,
        )

    def check_max_tokens(self, value: int | None, param: str = "max_tokens") -> None:
        if value is None:
            return
        if value < 1:
            raise APIError(
                400,
                f"Invalid '{param}': integer below minimum value. Expected a value >= 1, "
                f"but got {value} instead.",
                param=param,
                code="integer_below_min_value",
            )
        cap = self.settings.max_tokens_cap
        if value > cap:
            raise APIError(
                400,
                f"Invalid '{param}': {value} is above this server's cap of {cap} "
                "(the serve option --max-tokens-cap).",
                param=param,
                code="integer_above_max_value",
            )

    def default_max_tokens(self, prompt_len: int) -> int:
        return max(1, min(self.settings.max_tokens_cap, self.engine.max_context - prompt_len))


async def read_json(request: Request, max_bytes: int) -> Any:
    """The request body as JSON, refusing bodies over ``max_bytes`` with a 413."""
    declared = request.headers.get("content-length")
    too_big = APIError(
        413,
        f"Request body is larger than this server's limit of {max_bytes} bytes "
        "(the serve option --max-body-bytes).",
        code="request_too_large",
    )
    if declared is not None and declared.isdigit() and int(declared) > max_bytes * _DRAIN_FACTOR:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= max_bytes:
            chunks.append(chunk)
        elif size > max_bytes * _DRAIN_FACTOR:
            raise too_big
    if size > max_bytes:
        raise too_big
    raw = b"".join(chunks)
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(
            400,
            f"We could not parse the JSON body of your request: {exc}. Send a JSON object "
            "with Content-Type: application/json.",
            code="invalid_json",
        ) from None
    except RecursionError:
        raise APIError(
            400,
            "We could not parse the JSON body of your request: it is nested too deeply. "
            "Send a JSON object shaped as this endpoint documents.",
            code="invalid_json",
        ) from None
    if _SURROGATE_ESCAPE.search(raw):  # only escapes can make one; skip the walk otherwise
        check_unicode(data)
    return data


def check_unicode(data: Any) -> None:
    """Refuse strings that are not Unicode text: JSON's ``\\ud800`` escapes decode to lone
    surrogates, which no tokenizer or UTF-8 response can carry (they used to crash the
    handler with a 500). Walks iteratively, so a deep body cannot exhaust the stack."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                stack.append((f"{where}.{k}" if where else str(k), k))
                stack.append((f"{where}.{k}" if where else str(k), v))
        elif isinstance(node, list):
            stack.extend((f"{where}.{i}" if where else str(i), v) for i, v in enumerate(node))
        elif isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError as exc:
                name = where.encode("utf-8", "backslashreplace").decode("utf-8")
                raise APIError(
                    400,
                    f"Invalid '{name}': the string holds a lone surrogate "
                    f"(U+{ord(node[exc.start]):04X} at character {exc.start}), which is not "
                    "Unicode text. Send valid UTF-8 (escape pairs like \\ud83d\\ude00 must "
                    "come as a pair).",
                    param=name or None,
                    code="invalid_value",
                ) from None


def parse_body(model: type[M], data: Any) -> M:
    """Validate a JSON body; the first problem becomes a 400 naming the field."""
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    try:
        return model.model_validate(data)
    except RecursionError:
        raise APIError(400, "The request body is nested too deeply.", code="invalid_json") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "missing":
            msg = f"Missing required parameter: '{loc}'."
            code = "missing_required_parameter"
        else:
            got = err.get("input")
            shown = json.dumps(got)[:80] if not isinstance(got, dict | list) else type(got).__name__
            msg = f"Invalid '{loc}': {err['msg']} (got {shown})."
            code = "invalid_value"
        raise APIError(400, msg, param=loc or None, code=code) from None


def engine_error(exc: ApidistillError) -> APIError:
    """An engine refusal (bad request) → 400; anything else → 500."""
    if isinstance(exc, ConfigError):
        return APIError(400, exc.message, param=exc.key, code="invalid_value")
    return APIError(500, f"The server failed to generate: {exc.message}", code="server_error")


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client hangs up first: a non-streaming request
    whose caller timed out must not keep a batch slot busy until max_tokens."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise APIError(499, "The client closed the request.", code="client_closed")
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def off_loop(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run CPU work (chat templates, tokenizing a prompt of megabytes) on a worker thread, so
    the event loop keeps answering ``/health`` and other clients meanwhile: a 3.8 MB prompt
    tokenized on the loop stalled every connection for ~4 s."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def sse(data: dict[str, Any], event: str | None = None) -> str:
    body = json.dumps(data, ensure_ascii=False)
    return f"event: {event}\ndata: {body}\n\n" if event else f"data: {body}\n\n"
