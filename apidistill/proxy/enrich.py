"""Logprob enrichment: ask the teacher for top-k logprobs the client did not ask for, keep
them in the capture, and give the client the answer it asked for (``logprobs: null``).

Only OpenAI chat answers carry logprobs, and only where the teacher declares it returns them
(:mod:`apidistill.teachers.profiles`: the OpenAI model rules, or the ``openai_compatible``
server profile) without extra body fields (a model that needs e.g. ``reasoning_effort:
none`` for logprobs is left alone: enriching would change its answer). Requests for another
model than the configured teacher's are not enriched (its capabilities are unknown).
"""

from __future__ import annotations

import json
from typing import Any

from apidistill.config import TeacherConfig
from apidistill.proxy.streams import event_data

__all__ = ["enrich_top_k", "strip_answer", "strip_event"]


def enrich_top_k(teacher: TeacherConfig, wanted: int) -> tuple[int, str]:
    """The top-k the proxy may add to requests (0 = none) and why, for the start line."""
    if wanted <= 0:
        return 0, "off"
    if teacher.provider == "anthropic":
        return 0, "the Messages API returns no logprobs"
    from apidistill.teachers.profiles import openai_model_capabilities, server_profile

    caps = (
        openai_model_capabilities(teacher.model)
        if teacher.provider == "openai"
        else server_profile(teacher.profile).capabilities
    )
    if not caps.output_logprobs:
        return 0, f"{teacher.model} returns no logprobs ({caps.notes or 'its profile says so'})"
    if caps.logprobs_requires:
        need = ", ".join(f"{k}={v}" for k, v in caps.logprobs_requires)
        return 0, f"{teacher.model} returns logprobs only with {need}, which changes its answers"
    k = min(wanted, caps.max_top_logprobs)
    return k, f"top-{k} logprobs requested where the client asks none"


def wants_enrichment(body: dict[str, Any], teacher_model: str) -> bool:
    return (
        body.get("model") == teacher_model and "logprobs" not in body and "top_logprobs" not in body
    )


def _strip_choices(obj: dict[str, Any]) -> bool:
    changed = False
    for ch in obj.get("choices") or []:
        if isinstance(ch, dict) and ch.get("logprobs") is not None:
            ch["logprobs"] = None
            changed = True
    return changed


def strip_answer(data: bytes) -> bytes:
    """A ``chat.completion`` body with every choice's ``logprobs`` set to null."""
    try:
        obj = json.loads(data)
    except ValueError:
        return data
    if not isinstance(obj, dict) or not _strip_choices(obj):
        return data
    return json.dumps(obj, ensure_ascii=False).encode()


def strip_event(event: bytes) -> bytes:
    """One SSE chunk event with its choices' ``logprobs`` set to null."""
    name, data = event_data(event)
    if not data.startswith("{"):
        return event
    try:
        obj = json.loads(data)
    except ValueError:
        return event
    if not isinstance(obj, dict) or not _strip_choices(obj):
        return event
    head = f"event: {name}\n" if name else ""
    return (head + "data: " + json.dumps(obj, ensure_ascii=False) + "\n\n").encode()


def first_logprobs(answer: dict[str, Any] | None) -> Any:
    """The first choice's ``logprobs`` object of an (assembled) answer, for the capture."""
    for ch in (answer or {}).get("choices") or []:
        if isinstance(ch, dict) and ch.get("logprobs"):
            return ch["logprobs"]
    return None
