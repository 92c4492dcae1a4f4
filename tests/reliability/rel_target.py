"""Which OpenAI-compatible server the reliability suite runs against (``APIDISTILL_REL_TARGET``).

- ``fault`` (default): the project's fault server (``apidistill.testing.fault_server``), which
  can also inject faults and counts every request it receives;
- ``llamacpp``: the real llama.cpp server (llama-cpp-python) on the embedded GGUF, started by
  the suite on 127.0.0.1 with 2 threads;
- a URL (``http://host:port/v1``): a server the reviewer runs, with ``APIDISTILL_REL_MODEL``
  (required), ``APIDISTILL_REL_KEY_ENV`` (the env var holding its key, if it needs one) and
  ``APIDISTILL_REL_PROFILE`` (the server profile, default ``generic``).

Tests that need a fault only the fault server can produce (adversarial usage, 5xx, garbage
answers) are skipped on the other targets with that reason; the tests in
``test_rel_any_server.py`` run against every target. Where the target can say how many
completion requests it received (the fault server's counters, llama.cpp's access log), the
tests check the server's count too; on a server of the reviewer's they rely on the journal.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

TARGET_ENV = "APIDISTILL_REL_TARGET"
MODEL_ENV = "APIDISTILL_REL_MODEL"
KEY_ENV_ENV = "APIDISTILL_REL_KEY_ENV"
PROFILE_ENV = "APIDISTILL_REL_PROFILE"
#: The key the suite's own servers require in the tests that need one (never a real key).
SUITE_KEY = "rel-suite-key-7f3a9c2e51"
_POST = re.compile(r'"POST /v1/chat/completions HTTP/[0-9.]+" (\d{3})')


class TargetError(ValueError):
    """The target settings are unusable; the message says which variable to set."""


@dataclass(frozen=True)
class TargetSpec:
    """What the environment asks for (pure data, parsed without starting anything)."""

    kind: str  # "fault" | "llamacpp" | "url"
    url: str | None = None
    model: str | None = None
    key_env: str | None = None
    profile: str = "generic"


def parse_target(env: dict[str, str] | os._Environ[str]) -> TargetSpec:
    """The target the environment names; a clear :class:`TargetError` when it is unusable."""
    raw = (env.get(TARGET_ENV) or "fault").strip()
    if raw in ("fault", "llamacpp"):
        return TargetSpec(kind=raw, profile="llamacpp" if raw == "llamacpp" else "generic")
    if not re.match(r"^https?://[^/\s]+", raw):
        raise TargetError(
            f"{TARGET_ENV}={raw!r}: use 'fault', 'llamacpp' or the base URL of an "
            "OpenAI-compatible server (e.g. http://127.0.0.1:8000/v1)"
        )
    model = (env.get(MODEL_ENV) or "").strip()
    if not model:
        raise TargetError(f"{TARGET_ENV} is a URL: set {MODEL_ENV} to the model name it serves")
    key_env = (env.get(KEY_ENV_ENV) or "").strip() or None
    if key_env is not None and not env.get(key_env):
        raise TargetError(f"{KEY_ENV_ENV}={key_env}, but the env var {key_env} is empty")
    profile = (env.get(PROFILE_ENV) or "generic").strip()
    return TargetSpec(
        kind="url", url=raw.rstrip("/"), model=model, key_env=key_env, profile=profile
    )


@dataclass
class RelTarget:
    """A running target: where to send, which model and profile, how to read its counters."""

    kind: str
    base_url: str
    model: str
    profile: str
    key_env: str | None = None
    key: str | None = None  # the key's value (for the env of the CLI runs)
    server: Any = field(default=None, repr=False)  # FaultServerProcess / LlamaCppServer

    @property
    def injects_faults(self) -> bool:
        return self.kind == "fault"

    @property
    def requires_key(self) -> bool:
        """Whether a request with a wrong key is refused (what the retry test needs)."""
        return self.key is not None

    def reset(self) -> None:
        """Fresh counters; the fault server answers in 150 ms (room for a kill point), counts
        usage as one token per character (a gateway's) and requires the suite's key."""
        if self.kind == "fault":
            from rel_helpers import configure

            configure(self.server, latency_ms=150, usage="chars", api_key=self.key)

    def received(self) -> int | None:
        """Completion requests the server received since :meth:`reset`, from the server's
        own side; ``None`` on a server that does not tell (the reviewer's)."""
        if self.kind == "fault":
            return int(self.server.stats()["received"])
        if self.kind == "llamacpp":
            log = self.server.log_tail(10**9)
            return len(_POST.findall(log[self._log_start :]))
        return None

    def mark(self) -> None:
        """Count :meth:`received` from here on (llama.cpp: from this point of its log)."""
        if self.kind == "llamacpp":
            self._log_start = len(self.server.log_tail(10**9))
        else:
            self.reset()

    _log_start: int = 0

    def env(self) -> dict[str, str]:
        """Env entries the CLI runs need (the key under its env var)."""
        return {self.key_env: self.key} if self.key_env and self.key else {}

    def teacher_yaml(self, *, key_env: str | None = None) -> str:
        """The run file's ``teacher:`` block for this target (prices make a tiny cap bite)."""
        env_name = key_env or self.key_env
        key_line = f"  api_key_env: {env_name}\n" if env_name else ""
        return (
            "teacher:\n"
            "  provider: openai_compatible\n"
            f"  profile: {self.profile}\n"
            f"  model: {self.model}\n"
            f"  base_url: {self.base_url}\n"
            f"{key_line}"
            "  price: {input_per_mtok: 1000, output_per_mtok: 2000}\n"
        )
