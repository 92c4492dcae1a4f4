"""Masking of personal data and secrets in captured text, before anything is written.

The capture store calls :meth:`Redactor.scrub` on every request and answer it keeps, so no
code path can write unmasked text. Built-in patterns:

- ``email``: ``local@domain.tld``.
- ``phone``: a run of digits (optionally ``+``, spaces, dots, dashes, parentheses) with at
  least 7 digits. This masks other long numbers too (order ids): capture errs on the side of
  not keeping personal data; turn ``phone`` off in ``capture.redaction.builtin`` if that hurts.
- ``api_key``: the shapes providers issue (``sk-…``, ``sk-ant-…``, ``Bearer …``, AWS
  ``AKIA…``, GitHub ``ghp_…``, Slack ``xox?-…``, Google ``AIza…``), plus every secret the
  process was configured with (:func:`apidistill.errors.registered_secrets`) and the client key
  of the exchange, by value.
- ``card``: any 13-19 digit window (spaces and dashes allowed between digits) that passes the
  Luhn check, wherever it sits in a longer run of digits.

Strings under structural keys (ids, roles, model names, finish reasons) are left alone: they
are not user text, and masking them would break the record's shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from apidistill.errors import registered_secrets

__all__ = ["Redactor", "luhn_ok"]

MASK = "[REDACTED:{}]"
_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")
_API_KEY = re.compile(
    r"(?:sk-ant-[A-Za-z0-9_\-]{8,}|sk-[A-Za-z0-9_\-]{8,}|Bearer\s+[A-Za-z0-9_\-\.=]{8,}"
    r"|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{20,}|xox[abprs]-[A-Za-z0-9\-]{10,}"
    r"|AIza[0-9A-Za-z_\-]{30,})"
)
# a run of digits with the separators people write in phone and card numbers
_DIGIT_RUN = re.compile(r"\+?\(?\d[\d \-.()]*\d\)?")
_ANY_DIGIT = re.compile(r"\d")  # what the card and phone patterns both need
_KEY_CACHE = 4096  # dict keys whose masking a Redactor remembers (bounded: keys are input)
_API_KEY_MIN = 11  # the shortest match of _API_KEY: "sk-" and 8 characters


def _may_hold_api_key(value: str) -> bool:
    """Whether ``value`` holds a literal that every ``_API_KEY`` alternative starts with (most
    strings in a record, keys included, hold none: the regex is skipped, same result)."""
    return len(value) >= _API_KEY_MIN and (
        "sk-" in value or "Bearer" in value or "gh" in value or "AKIA" in value
        or "xox" in value or "AIza" in value
    )  # fmt: skip


_STRUCTURAL_KEYS = frozenset(
    {"id", "object", "model", "role", "type", "finish_reason", "stop_reason",
     "system_fingerprint", "service_tier", "tool_call_id"}
)  # fmt: skip


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number passes."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_spans(text: str) -> list[tuple[int, int]]:
    """Spans of every 13-19 digit window (separators between digits allowed) passing Luhn."""
    spans: list[tuple[int, int]] = []
    for run in re.finditer(r"\d(?:[ \-]?\d){12,}", text):
        pos = [run.start() + i for i, ch in enumerate(run.group()) if ch.isdigit()]
        digits = "".join(text[p] for p in pos)
        for start in range(len(digits) - 12):
            for length in range(13, min(19, len(digits) - start) + 1):
                if luhn_ok(digits[start : start + length]):
                    spans.append((pos[start], pos[start + length - 1] + 1))
    return spans


def _phone_spans(text: str) -> list[tuple[int, int]]:
    return [
        m.span() for m in _DIGIT_RUN.finditer(text) if sum(ch.isdigit() for ch in m.group()) >= 7
    ]


def _merge(spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    out: list[tuple[int, int, str]] = []
    for start, end, kind in sorted(spans):
        if out and start <= out[-1][1]:
            s, e, k = out[-1]
            out[-1] = (s, max(e, end), k)
        else:
            out.append((start, end, kind))
    return out


class Redactor:
    """Masks the configured patterns in strings and in JSON-like structures."""

    def __init__(self, builtin: Iterable[str] = (), patterns: Iterable[str] = ()) -> None:
        self.builtin = frozenset(builtin)
        self.patterns = [re.compile(p) for p in patterns]
        self._digits = bool(self.builtin & {"card", "phone"})
        # dict keys repeat in every record ("role", "content", "usage", ...): their masking by
        # the rules is kept; secrets (which change per exchange) are still checked each time
        self._keys: dict[str, str] = {}

    def text(self, value: str, secrets: Iterable[str] = ()) -> str:
        """``value`` with every match masked; ``secrets`` are removed by value."""
        return self._text(value, self._secrets(secrets))

    def _secrets(self, secrets: Iterable[str]) -> tuple[str, ...]:
        """Every secret masked by value (resolved once per :meth:`scrub`, not per string)."""
        if "api_key" not in self.builtin:
            return ()
        return tuple({*registered_secrets(), *(s for s in secrets if s and len(s) >= 6)})

    def _text(self, value: str, secrets: tuple[str, ...]) -> str:
        # Each rule runs only where it can match: an e-mail needs an '@', a phone or card
        # number a digit, a key shape one of its prefixes (most strings in a record, keys
        # included, have none of them). The result is the same as running every rule; this
        # is the proxy's hot path.
        spans: list[tuple[int, int, str]] = []
        if "api_key" in self.builtin:
            for secret in secrets:
                start = value.find(secret)
                while start >= 0:
                    spans.append((start, start + len(secret), "api_key"))
                    start = value.find(secret, start + 1)
            if _may_hold_api_key(value):
                spans += [(*m.span(), "api_key") for m in _API_KEY.finditer(value)]
        if "email" in self.builtin and "@" in value:
            spans += [(*m.span(), "email") for m in _EMAIL.finditer(value)]
        if self._digits and _ANY_DIGIT.search(value):
            if "card" in self.builtin:
                spans += [(s, e, "card") for s, e in _card_spans(value)]
            if "phone" in self.builtin:
                spans += [(s, e, "phone") for s, e in _phone_spans(value)]
        for pattern in self.patterns:
            spans += [(*m.span(), "custom") for m in pattern.finditer(value) if m.end() > m.start()]
        if not spans:
            return value
        out, last = [], 0
        for start, end, kind in _merge(spans):
            out.append(value[last:start])
            out.append(MASK.format(kind))
            last = end
        out.append(value[last:])
        return "".join(out)

    def scrub(self, obj: Any, secrets: Iterable[str] = (), *, key: str | None = None) -> Any:
        """A copy of a JSON-like value with every string (and dict key) masked."""
        return self._scrub(obj, self._secrets(secrets), key)

    def _key(self, key: str, secrets: tuple[str, ...]) -> str:
        """A dict key masked as :meth:`_text` masks it. Without a secret in it, the result
        depends on the key alone, so it is computed once (at most ``_KEY_CACHE`` keys)."""
        for secret in secrets:
            if secret in key:
                return self._text(key, secrets)
        masked = self._keys.get(key)
        if masked is None:
            masked = self._text(key, ())
            if len(self._keys) < _KEY_CACHE:
                self._keys[key] = masked
        return masked

    def _scrub(self, obj: Any, secrets: tuple[str, ...], key: str | None) -> Any:
        if isinstance(obj, str):
            return obj if key in _STRUCTURAL_KEYS else self._text(obj, secrets)
        if isinstance(obj, dict):
            return {
                self._key(str(k), secrets): self._scrub(v, secrets, str(k)) for k, v in obj.items()
            }
        if isinstance(obj, list):
            return [self._scrub(v, secrets, key) for v in obj]
        return obj
