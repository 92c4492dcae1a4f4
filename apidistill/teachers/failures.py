"""The one place where provider SDK and transport failures become apidistill errors.

Teachers send each request once; ``harvest/retry.py`` decides whether to try again from the
class of the error, its ``retry_after`` and its ``maybe_billed`` flag. So this mapping is the
contract between the two:

==============================================  =====================  =============
failure                                         error                  maybe_billed
==============================================  =====================  =============
429 / 400 / 402 "out of credit" (see below)     OutOfCredit            False
429, 529 (overloaded)                           RateLimited            False
408                                             TeacherTimeout         False
read / write timeout (request was sent)         TeacherTimeout         True
connect / pool timeout (nothing sent)           TeacherTimeout         False
connection refused, DNS failure                 TeacherUnavailable     False
reset / closed / truncated after sending        TeacherUnavailable     True
409, 5xx                                        TeacherUnavailable     False
502, 504, 524 (a gateway gave up; the backend   TeacherUnavailable     True
may still have generated and billed)
other 4xx                                       TeacherRejected        False
a 200 whose body cannot be parsed               TeacherUnavailable     True
anything else, or unsure                        TeacherUnavailable     True
==============================================  =====================  =============

"Out of credit" is a refusal that only adding credit (or raising a spend limit) fixes, so it
is never retried and never advised as a rate limit: OpenAI's 429 with ``error.type`` or
``error.code`` ``insufficient_quota`` (and its finer codes ``credit_balance_exhausted``,
``*_spend_limit_exceeded``, ``organization_usage_limit_exceeded``), Anthropic's 400 "Your
credit balance is too low", and any 402 Payment Required.

The table holds on both SDK transports (``teacher.transport``, :mod:`.transport`). On the
aiohttp transport the SDKs' vendored adapter relabels aiohttp errors as httpx2 ones, and
wrongly: openai's copy turns every ``aiohttp.ClientConnectionError`` (a reset or a
disconnect *after* the request was written, too) into ``httpx2.ConnectTimeout``, anthropic's
into ``httpx2.ConnectError`` - both "nothing sent". So the cause chain is walked to the
aiohttp exception itself and that is classified:

==========================================================  ===============  ============
aiohttp exception (in the cause chain)                      error            maybe_billed
==========================================================  ===============  ============
``ConnectionTimeoutError`` (connect or pool wait)           TeacherTimeout   False
``SocketTimeoutError`` and other ``ServerTimeoutError``     TeacherTimeout   True
``ClientConnectorError`` (refused, DNS, TLS handshake),     TeacherUnav.     False
proxy errors, invalid / non-HTTP URL
``ServerDisconnectedError``, ``ClientOSError`` (reset),     TeacherUnav.     True
``ClientPayloadError`` (truncated body), any other
==========================================================  ===============  ============

Messages quote the provider's error text through :func:`apidistill.errors.redact` (the
error base class does it), never the request headers, so an API key cannot leak.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any

import anthropic
import httpx2
import openai

try:  # the SDKs' aiohttp transport (teacher.transport); optional
    import aiohttp
except ImportError:  # pragma: no cover - aiohttp is a dependency, but stay importable
    aiohttp = None  # type: ignore[assignment]

from apidistill.errors import (
    OutOfCredit,
    RateLimited,
    TeacherError,
    TeacherRejected,
    TeacherTimeout,
    TeacherUnavailable,
    redact,
)
from apidistill.teachers.ratelimits import parse_retry_after

__all__ = ["TRANSPORT_ERRORS", "malformed_body", "map_failure", "status_error"]

_NOT_SENT_TIMEOUTS = (httpx2.ConnectTimeout, httpx2.PoolTimeout)
_NOT_SENT_ERRORS = (httpx2.ConnectError, httpx2.UnsupportedProtocol, httpx2.ProxyError)
_AIOHTTP_ERROR: tuple[type[BaseException], ...] = (
    (aiohttp.ClientError,) if aiohttp is not None else ()
)
_AIOHTTP_NOT_SENT: tuple[type[BaseException], ...] = (
    (
        aiohttp.ClientConnectorError,  # refused, DNS, TLS handshake, proxy connect
        aiohttp.ClientHttpProxyError,
        aiohttp.InvalidURL,
        aiohttp.NonHttpUrlClientError,
    )
    if aiohttp is not None
    else ()
)
#: What a send through either transport may raise besides the SDK's own errors.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx2.HTTPError, OSError, *_AIOHTTP_ERROR)
_GATEWAY_GAVE_UP = frozenset({502, 504, 524})
# error.type / error.code values that mean "no credit left", not "too fast".
_BILLING_CODES = frozenset(
    {
        "insufficient_quota",
        "credit_balance_exhausted",
        "organization_spend_limit_exceeded",
        "project_spend_limit_exceeded",
        "organization_usage_limit_exceeded",
        "billing_error",
    }
)
_BILLING_TEXT = ("credit balance is too low", "exceeded your current quota")
_MAX_DETAIL = 300


def _detail(body: object, fallback: str) -> str:
    """The provider's own error message, short (both SDKs put it at ``error.message``)."""
    if isinstance(body, Mapping):
        err = body.get("error", body)
        if isinstance(err, Mapping) and isinstance(err.get("message"), str):
            text = err["message"]
            kind = err.get("type") or err.get("code")
            return f"{kind}: {text}"[:_MAX_DETAIL] if isinstance(kind, str) else text[:_MAX_DETAIL]
        if isinstance(err, str):
            return err[:_MAX_DETAIL]
    if isinstance(body, str) and body.strip():
        return body.strip()[:_MAX_DETAIL]
    return fallback


def _out_of_credit(status: int, body: object, detail: str) -> bool:
    """Whether a refusal says the account has no credit left (see the module docstring)."""
    if status == 402:
        return True
    if status not in (400, 403, 429):
        return False
    err = body.get("error", body) if isinstance(body, Mapping) else None
    if isinstance(err, Mapping):
        codes = {err.get("type"), err.get("code")}
        if any(isinstance(c, str) and c in _BILLING_CODES for c in codes):
            return True
    return any(t in detail.lower() for t in _BILLING_TEXT)


def status_error(
    provider: str, status: int, headers: Mapping[str, str], body: object
) -> TeacherError:
    """Map one non-2xx answer; ``body`` is the decoded JSON (or text) of the answer."""
    retry_after = parse_retry_after(headers)
    detail = _detail(body, f"HTTP {status}")
    where = f"{provider} answered {status}: {detail}"
    if _out_of_credit(status, body, detail):
        return OutOfCredit(
            f"{where} (the account is out of credit or over its spend limit)",
            status=status,
            hint="add credit or raise the spend limit in the provider's billing settings, "
            "then re-run with --retry-failed out_of_credit; lowering concurrency will not help",
        )
    if status in (429, 529):
        return RateLimited(
            where,
            status=status,
            retry_after=retry_after,
            hint="lower harvest.concurrency / rpm / tpm, or wait and resume",
        )
    if status == 408:
        return TeacherTimeout(where, status=status, retry_after=retry_after)
    if status == 409 or status >= 500:
        return TeacherUnavailable(
            where,
            status=status,
            retry_after=retry_after,
            maybe_billed=status in _GATEWAY_GAVE_UP,
            hint="the provider failed on its side; resuming the run retries it",
        )
    hint = {
        401: "check the API key in the env var named by teacher.api_key_env",
        403: "the key lacks access to this model or feature (reasoning models refuse logprobs)",
        404: "check teacher.model and teacher.base_url",
    }.get(status, "fix the request settings named in the message; retrying will not help")
    return TeacherRejected(where, status=status, retry_after=retry_after, hint=hint)


def malformed_body(provider: str, what: str) -> TeacherUnavailable:
    """A 2xx answer we cannot read: the provider may have done (and billed) the work."""
    return TeacherUnavailable(
        f"{provider} answered 200 with a body that cannot be read: {what}",
        maybe_billed=True,
        hint="the outcome is unknown and counted at its worst-case cost; a retry may pay twice",
    )


# Per transport: (timeouts before anything was sent, timeouts after sending, errors before
# anything was sent). Anything else is a failure after sending: maybe billed.
_Kinds = tuple[tuple[type[BaseException], ...], ...]
_HTTPX2_KINDS: _Kinds = (_NOT_SENT_TIMEOUTS, (httpx2.TimeoutException,), _NOT_SENT_ERRORS)
_AIOHTTP_KINDS: _Kinds = (
    ((aiohttp.ConnectionTimeoutError,), (aiohttp.ServerTimeoutError,), _AIOHTTP_NOT_SENT)
    if aiohttp is not None
    else ((), (), ())
)


def _transport(provider: str, exc: BaseException) -> TeacherError:
    """Classify by what the transport itself knows: an aiohttp error by aiohttp's classes
    (never by the httpx2 label the SDKs' vendored adapter puts on top of it)."""
    name = type(exc).__name__
    not_sent_timeout, sent_timeout, not_sent = (
        _AIOHTTP_KINDS if isinstance(exc, _AIOHTTP_ERROR) else _HTTPX2_KINDS
    )
    if isinstance(exc, not_sent_timeout):
        return TeacherTimeout(
            f"{provider}: could not connect in time ({name})",
            maybe_billed=False,
            hint="check teacher.base_url and that the server is up",
        )
    if isinstance(exc, sent_timeout):
        return TeacherTimeout(
            f"{provider}: no answer in time after sending ({name})",
            maybe_billed=True,
            hint="raise harvest.timeout_s or lower max_tokens; the request may have been billed",
        )
    if isinstance(exc, not_sent):
        return TeacherUnavailable(
            f"{provider}: cannot connect ({name}: {exc})",
            maybe_billed=False,
            hint="check teacher.base_url and that the server is up",
        )
    return TeacherUnavailable(
        f"{provider}: connection failed after sending ({name}: {exc})",
        maybe_billed=True,
        hint="the outcome is unknown and counted at its worst-case cost",
    )


def _root_transport_error(exc: BaseException) -> BaseException | None:
    """The transport error to classify: an aiohttp error anywhere in the chain wins (the
    httpx2 error above it is the vendored adapter's label), else the first httpx2 / OS one."""
    first: BaseException | None = None
    seen: BaseException | None = exc
    for _ in range(12):
        if seen is None:
            break
        if isinstance(seen, _AIOHTTP_ERROR):
            return seen
        if first is None and isinstance(seen, httpx2.TransportError | OSError):
            first = seen
        seen = seen.__cause__ or seen.__context__
    return first


def _body_of(response: httpx2.Response) -> Any:
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError, httpx2.ResponseNotRead):
        try:
            return response.text
        except (UnicodeDecodeError, httpx2.ResponseNotRead):
            return None


def _scrub(exc: BaseException) -> None:
    """The SDK exception stays as ``__cause__`` and tracebacks print it: a provider that
    echoes the key in its error text (a 401) must not leak it there either."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return
        seen.args = tuple(redact(a) if isinstance(a, str) else a for a in seen.args)
        if isinstance(getattr(seen, "message", None), str):
            seen.message = redact(seen.message)  # type: ignore[attr-defined]
        body = getattr(seen, "body", None)  # the SDK's parsed error body
        if isinstance(body, str | dict | list):
            with contextlib.suppress(AttributeError, TypeError, ValueError):
                text = json.dumps(body) if not isinstance(body, str) else body
                clean = redact(text)
                if clean != text:
                    seen.body = clean if isinstance(body, str) else json.loads(clean)  # type: ignore[attr-defined]
        seen = seen.__cause__ or seen.__context__


def map_failure(provider: str, exc: BaseException) -> TeacherError:
    """Map any exception from one send into the apidistill tree (call as ``raise ... from``)."""
    if isinstance(exc, TeacherError):
        return exc
    _scrub(exc)
    if isinstance(exc, openai.APIStatusError | anthropic.APIStatusError):
        return status_error(provider, exc.status_code, exc.response.headers, _body_of(exc.response))
    if isinstance(exc, openai.APIResponseValidationError | anthropic.APIResponseValidationError):
        return malformed_body(provider, str(exc))
    if isinstance(exc, openai.APITimeoutError | anthropic.APITimeoutError):
        root = _root_transport_error(exc.__cause__) if exc.__cause__ else None
        if root is not None:
            return _transport(provider, root)
        return TeacherTimeout(f"{provider}: request timed out", maybe_billed=True)
    if isinstance(exc, openai.APIConnectionError | anthropic.APIConnectionError):
        root = _root_transport_error(exc.__cause__) if exc.__cause__ else None
        if root is not None:
            return _transport(provider, root)
        return TeacherUnavailable(f"{provider}: connection error", maybe_billed=True)
    if isinstance(exc, httpx2.HTTPStatusError):
        return status_error(
            provider, exc.response.status_code, exc.response.headers, _body_of(exc.response)
        )
    if isinstance(exc, (httpx2.TransportError, OSError, *_AIOHTTP_ERROR)):
        return _transport(provider, _root_transport_error(exc) or exc)
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
        return malformed_body(provider, str(exc))
    return TeacherUnavailable(
        f"{provider}: unexpected failure ({type(exc).__name__}: {exc})",
        maybe_billed=True,
        hint="report this with the run's log; the outcome is counted as unknown",
    )
