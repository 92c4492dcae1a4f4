"""Teacher identity from a base URL: the same server always gets the same cache key.

The identity goes into every cache key, so it must not change with cosmetic differences
(``HTTP://Host:80/v1/``) and must never carry secrets (user:password@, ``?api_key=``).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from apidistill.errors import ConfigError

__all__ = ["normalize_base_url", "teacher_identity"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_base_url(url: str) -> str:
    """Lower-case scheme and host, no default port, no credentials, query or trailing slash
    (of the path, or the root dot of a fully qualified host name)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"not a valid URL: {exc}", key="teacher.base_url") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ConfigError(
            "base URL must start with http:// or https:// and name a host",
            key="teacher.base_url",
            hint="e.g. http://127.0.0.1:8000/v1",
        )
    host = parts.hostname.lower().rstrip(".")  # ``api.x.ai.`` (fully qualified) is ``api.x.ai``
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path = parts.path.rstrip("/")
    return urlunsplit((scheme, netloc, path, "", ""))


def teacher_identity(provider: str, base_url: str) -> str:
    """``provider@normalized-url``: stable across runs, never containing the key."""
    return f"{provider}@{normalize_base_url(base_url)}"
