"""The proxy's settings file (``apidistill proxy --config proxy.yaml``), one pydantic model.

Like the run file, every section forbids unknown keys, and a bad file is a
:class:`~apidistill.errors.ConfigError` naming the file, the line and the key.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from apidistill.config import PolicyConfig, TeacherConfig
from apidistill.errors import ConfigError
from apidistill.yamlfile import load_yaml

__all__ = [
    "BUILTIN_REDACTIONS",
    "CaptureConfig",
    "ProxyBudgetConfig",
    "ProxyConfig",
    "RedactionConfig",
    "ShadowConfig",
    "SplitConfig",
    "load_proxy_config",
]

BUILTIN_REDACTIONS = ("email", "phone", "api_key", "card")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class RedactionConfig(_Section):
    """What is masked in captured text before it is written."""

    builtin: list[Literal["email", "phone", "api_key", "card"]] = Field(
        default_factory=lambda: list(BUILTIN_REDACTIONS),
        description="Built-in patterns to mask: email addresses, phone numbers (7+ digits), "
        "API keys and bearer tokens, card numbers (13-19 digits passing the Luhn check).",
    )
    patterns: list[str] = Field(
        default_factory=list,
        description="Your own regular expressions (Python syntax); every match is masked.",
    )

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        for p in value:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression {p!r}: {exc}") from None
            if re.fullmatch(p, ""):
                raise ValueError(f"pattern {p!r} matches the empty string; it would mask nothing")
        return value


class CaptureConfig(_Section):
    """Which exchanges are written to the capture store, and how."""

    enabled: bool = Field(True, description="Off switch: false writes no request or answer text.")
    path: str = Field(
        "captures.sqlite", description="SQLite capture store (WAL mode); created if missing."
    )
    sample_rate: float = Field(
        1.0, ge=0.0, le=1.0, description="Share of exchanges captured (1 = all, 0 = none)."
    )
    redaction: RedactionConfig = Field(default_factory=RedactionConfig)
    logprobs: int = Field(
        0,
        ge=0,
        le=20,
        description="Top-k logprobs to request from an OpenAI-API teacher that returns them "
        "when the client asked none: kept in the capture, removed from the client's answer "
        "(0 = off).",
    )


class ProxyBudgetConfig(_Section):
    """A hard cap on upstream spend across every run of the proxy on one capture store."""

    usd: Decimal = Field(..., ge=0, description="Total upstream spend allowed, USD.")
    per_day_usd: Decimal | None = Field(None, ge=0, description="Optional cap per UTC day.")
    at_cap: Literal["refuse", "student"] = Field(
        "refuse",
        description="refuse: answer the provider's own quota error (OpenAI 429 "
        "insufficient_quota, Anthropic 402 billing_error); student: forward to student_url.",
    )
    student_url: str | None = Field(
        None, description="Base URL (…/v1) of the student (apidistill serve) for at_cap: student."
    )
    assume_max_output_tokens: int = Field(
        32768,
        gt=0,
        description="Output tokens reserved for a request that sets no max_tokens (OpenAI).",
    )

    @model_validator(mode="after")
    def _student_named(self) -> ProxyBudgetConfig:
        if self.at_cap == "student" and not self.student_url:
            raise ValueError("at_cap: student needs student_url (the base URL of the student)")
        return self


class ShadowConfig(_Section):
    """Shadow mode: the student answers the same requests in the background, for comparison."""

    student_url: str = Field(..., description="Base URL (…/v1) of the student (apidistill serve).")
    model: str | None = Field(
        None, description="Model name the student answers to (default: the client's)."
    )
    share: float = Field(1.0, ge=0.0, le=1.0, description="Share of exchanges shadowed.")
    timeout_s: float = Field(30.0, gt=0, description="A slower student answer is an error.")


class SplitConfig(_Section):
    """Split mode: a sticky share of traffic is answered by the student."""

    student_url: str = Field(..., description="Base URL (…/v1) of the student (apidistill serve).")
    model: str | None = Field(
        None, description="Model name the student answers to (default: the client's)."
    )
    share: float = Field(
        0.0, ge=0.0, le=1.0, description="Share at start; promote/rollback change it at run time."
    )
    key_header: str = Field(
        "X-Apidistill-User", description="Header naming the user or session (sticky key)."
    )
    timeout_s: float = Field(
        30.0, gt=0, description="A student slower than this to answer: fall back to the teacher."
    )


class ProxyConfig(_Section):
    """Everything ``apidistill proxy`` needs: the teacher it forwards to, and what it keeps."""

    teacher: TeacherConfig
    policy: PolicyConfig = Field(
        default_factory=lambda: PolicyConfig(use="internal"),
        description="Intended use of the captured data; the teacher's terms are checked for it.",
    )
    capture: CaptureConfig = Field(default_factory=CaptureConfig)
    budget: ProxyBudgetConfig | None = None
    shadow: ShadowConfig | None = None
    split: SplitConfig | None = None
    host: str = Field("127.0.0.1", description="Address to bind (loopback by default).")
    port: int = Field(8080, ge=0, le=65535, description="Port; 0 picks a free one.")
    timeout_s: float = Field(600.0, gt=0, description="Upstream read timeout per request.")
    max_connections: int = Field(
        512, ge=1, description="Size of the shared upstream connection pool."
    )


def load_proxy_config(path: str | Path) -> ProxyConfig:
    """Read and validate a proxy settings file; errors name the file, the line and the key."""
    from apidistill.config_file import _format_errors

    p = Path(path)
    if not p.is_file():
        raise ConfigError("file not found", file=str(p), hint="give the path of a proxy YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=str(p)) from None
    data = load_yaml(text, str(p))
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping of proxy settings", file=str(p))
    try:
        return ProxyConfig.model_validate(data)
    except ValidationError as exc:
        raise _format_errors(exc, text, str(p)) from None
