"""One error tree for apidistill.

Every error a user can meet derives from :class:`ApidistillError` and says what to do next.
Provider SDK exceptions are mapped into this tree in one place (``teachers/``) with
``raise ... from exc`` so the original stays in ``__cause__``.

    ApidistillError
     ├── ConfigError            a run file, CLI flag or argument is wrong (names file/key/line)
     ├── PolicyDenied           the teacher's terms forbid the stated use (names the clause)
     ├── BudgetExceeded         the next request would break the hard budget (nothing was sent)
     ├── TeacherError           a teacher API call failed
     │    ├── RateLimited       429 / overloaded after all retries
     │    ├── TeacherTimeout    the request timed out after all retries
     │    ├── TeacherUnavailable connection refused / 5xx after all retries
     │    ├── TeacherRejected   4xx that retrying cannot fix (bad request, auth, not found)
     │    │    └── OutOfCredit  the account has no credit / spend limit left (429 insufficient_quota)
     │    └── CapabilityError   asked for something the teacher cannot give (e.g. logprobs)
     ├── DataError              a prompt/dataset file is malformed (names file and line)
     ├── ModelLoadError         a model path/name cannot be loaded (names the path)
     ├── TrainingError          training cannot start or continue (names the setting)
     └── EvalError              evaluation cannot run (names the missing piece)

Messages never contain API keys: :func:`redact` is applied to every message built from
provider text, and removes every secret registered with :func:`register_secret` by value.
"""

from __future__ import annotations

import os
import re
from urllib.parse import quote

__all__ = [
    "ApidistillError",
    "BudgetExceeded",
    "CapabilityError",
    "ConfigError",
    "DataError",
    "EvalError",
    "ExportError",
    "ModelLoadError",
    "OutOfCredit",
    "PolicyDenied",
    "RateLimited",
    "TeacherError",
    "TeacherRejected",
    "TeacherTimeout",
    "TeacherUnavailable",
    "TrainingError",
    "redact",
    "register_secret",
    "registered_secrets",
]

_KEY_PATTERNS = re.compile(
    r"(sk-[A-Za-z0-9_\-]{8,}|sk-ant-[A-Za-z0-9_\-]{8,}|Bearer\s+[A-Za-z0-9_\-\.]{8,})"
)
_SECRET_ENV_HINTS = ("KEY", "TOKEN", "SECRET")
# Values shorter than this are not redacted by value: replacing every "abc" in a message
# would garble it, and no provider issues keys that short.
MIN_SECRET_CHARS = 6
# Every secret this process was configured with (an API key from a run file's env var, an
# explicit ``api_key=``, a served endpoint's key), whatever its shape or where it came from.
_SECRETS: set[str] = set()
# What docs and examples pass where a server needs no key (vLLM's "EMPTY", llama.cpp's
# "sk-no-key-required"): not secrets, and redacting them would garble ordinary words.
_PLACEHOLDER_KEYS = frozenset(
    {"empty", "unused", "dummy", "none", "no-key", "not-needed", "sk-no-key-required"}
)


def register_secret(value: str | None) -> None:
    """Remember ``value`` as a secret: :func:`redact` removes it from every message from now
    on. Called wherever a key enters the process (``resolve_api_key``, the teacher clients,
    ``serve --api-key-env``, eval endpoints), so a key that matches no known pattern and sits
    in an env var of any name is still redacted when a server echoes it back."""
    if value and len(value) >= MIN_SECRET_CHARS and value.lower() not in _PLACEHOLDER_KEYS:
        _SECRETS.add(value)
        quoted = quote(value, safe="")
        if quoted != value:  # as it would appear in a URL or a form body
            _SECRETS.add(quoted)


def registered_secrets() -> frozenset[str]:
    """The secrets :func:`register_secret` has seen (for tests and artifact scans)."""
    return frozenset(_SECRETS)


def redact(text: str) -> str:
    """Remove every configured secret (by value), anything that looks like an API key, and
    the value of every env var whose name says KEY, TOKEN or SECRET."""
    values = set(_SECRETS)
    for name, value in os.environ.items():
        if value and len(value) >= 8 and any(h in name.upper() for h in _SECRET_ENV_HINTS):
            values.add(value)
    out = text
    for value in sorted(values, key=len, reverse=True):  # longest first: no partial leftovers
        if value in out:
            out = out.replace(value, "[REDACTED]")
    return _KEY_PATTERNS.sub("[REDACTED]", out)


class ApidistillError(Exception):
    """Root of every apidistill error. ``hint`` says what the user can do about it."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = redact(message)
        self.hint = hint
        super().__init__(self.message if not hint else f"{self.message}\n  → {hint}")


class ConfigError(ApidistillError):
    """A run file, CLI flag or argument is invalid.

    ``file``/``key``/``line`` locate the problem so the message can be acted on without a
    traceback.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        key: str | None = None,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.file, self.key, self.line = file, key, line
        where = ""
        if file:
            where = f"{file}:{line}" if line else file
        if key:
            where = f"{where}: {key}" if where else key
        super().__init__(f"{where}: {message}" if where else message, hint=hint)


class PolicyDenied(ApidistillError):
    """The teacher's terms do not allow the stated use (or need an acknowledgement)."""

    def __init__(self, message: str, *, decision: object | None = None, hint: str | None = None):
        self.decision = decision
        super().__init__(message, hint=hint)


class BudgetExceeded(ApidistillError):
    """Reserving the next request's worst-case cost would exceed the hard budget."""


class TeacherError(ApidistillError):
    """A teacher API call failed. ``status`` is the HTTP status when there was one.

    ``retry_after`` is the wait in seconds the provider asked for (``retry-after-ms``,
    ``retry-after``), or None. ``maybe_billed`` is True when the request may have reached the
    provider (read timeout, reset after sending, a 200 with a broken body): the budget must
    keep its worst case reserved. It is False when nothing can have been billed (refused
    connection, DNS failure, a 4xx answer).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        hint: str | None = None,
        retry_after: float | None = None,
        maybe_billed: bool = False,
    ) -> None:
        self.status = status
        self.retry_after = retry_after
        self.maybe_billed = maybe_billed
        super().__init__(message, hint=hint)


class RateLimited(TeacherError):
    """The provider kept answering 429/529 after every retry."""


class TeacherTimeout(TeacherError):
    """The provider did not answer in time after every retry."""


class TeacherUnavailable(TeacherError):
    """Connection failures or 5xx answers after every retry."""


class TeacherRejected(TeacherError):
    """A 4xx answer that retrying cannot fix (bad request, auth, unknown model)."""


class OutOfCredit(TeacherRejected):
    """The provider refused because the account is out of credit or over its spend limit
    (OpenAI's 429 ``insufficient_quota``, Anthropic's "credit balance is too low"). Not a
    rate limit: waiting or lowering concurrency does not help, adding credit does."""


class CapabilityError(TeacherError):
    """The run asks the teacher for something it declares it cannot give."""


class DataError(ApidistillError):
    """A prompt or dataset file is malformed; ``file``/``line`` say where."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.file, self.line = file, line
        where = f"{file}:{line}" if file and line else (file or "")
        super().__init__(f"{where}: {message}" if where else message, hint=hint)


class ModelLoadError(ApidistillError):
    """A model or tokenizer could not be loaded from the named path or name."""


class TrainingError(ApidistillError):
    """Training cannot start or continue with the given data/settings."""


class ExportError(TrainingError):
    """A trained student cannot be exported in the asked format (unsupported architecture,
    a base model without the file the format is built from, an unknown format name)."""


class EvalError(ApidistillError):
    """Evaluation cannot run (missing split, endpoint down, ...)."""
