"""policy stage: decide whether a teacher's terms allow distilling it for an intended use."""

from apidistill.policy.engine import (
    check_student_use,
    decide,
    decide_for_teacher,
    enforce,
    render_obligations_md,
)
from apidistill.policy.schema import Decision, Obligations

__all__ = [
    "Decision",
    "Obligations",
    "check_student_use",
    "decide",
    "decide_for_teacher",
    "enforce",
    "render_obligations_md",
]
