"""Teacher clients: one async client per provider, chosen by an explicit registry.

The provider comes from ``teacher.provider`` (and the server profile from
``teacher.profile``), never from the model's name: ``gpt-4o`` behind a vLLM proxy is an
OpenAI-compatible teacher, not OpenAI. Keys come from an explicit argument or the env var
the run file names, and are handed only to the SDK client.
"""

from __future__ import annotations

from apidistill.teachers.base import Capabilities, RateLimitSnapshot, Teacher, TeacherResponse
from apidistill.teachers.keys import resolve_api_key
from apidistill.teachers.registry import PROVIDERS, Provider, make_batch_client, make_teacher

__all__ = [
    "PROVIDERS",
    "Capabilities",
    "Provider",
    "RateLimitSnapshot",
    "Teacher",
    "TeacherResponse",
    "make_batch_client",
    "make_teacher",
    "resolve_api_key",
]
