"""Plain helpers of the harvest tests (a module of its own, not conftest: ``from conftest import``
resolves to whichever conftest was imported last, so `pytest tests/harvest tests/reliability`
failed at collection)."""

from __future__ import annotations

from typing import Any

from apidistill.config import TeacherConfig
from apidistill.teachers import make_teacher
from apidistill.testing.fault_server import request_digest


def openai_teacher(
    base_url: str, model: str = "fault-model", timeout_s: float = 10.0, store: bool = False
) -> Any:
    return make_teacher(
        TeacherConfig(provider="openai_compatible", base_url=base_url, model=model, store=store),
        timeout_s=timeout_s,
    )


def fault_digest(req: Any, model: str = "fault-model") -> str:
    """The fault server's counter key for a chat request (its ``/__stats`` digests)."""
    return request_digest({"model": model, "messages": [m.model_dump() for m in req.messages]})
