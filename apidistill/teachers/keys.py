"""The teacher's API key: from an explicit argument or the environment, never stored."""

from __future__ import annotations

import os

from apidistill.config import TeacherConfig
from apidistill.errors import ConfigError, register_secret

__all__ = ["resolve_api_key"]

_DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


def resolve_api_key(cfg: TeacherConfig, api_key: str | None) -> str | None:
    """The explicit key, else the named env var, else the provider's usual env var.

    An OpenAI-compatible server never gets ``OPENAI_API_KEY`` by default: sending the real
    OpenAI key to an arbitrary host would leak it.
    """
    if api_key:
        register_secret(api_key)
        return api_key
    env = cfg.api_key_env or _DEFAULT_KEY_ENV.get(cfg.provider)
    if env is None:
        return None
    value = os.environ.get(env)
    if not value:
        raise ConfigError(
            f"the API key env var {env} is not set",
            key="teacher.api_key_env",
            hint=f"export {env}=... (the key is read from the environment and never stored)",
        )
    register_secret(value)  # redacted by value wherever it shows, whatever its shape
    return value
