"""Go / no-go: compare measured numbers with the thresholds of the run file.

A verdict is only useful with its reasons: "NO-GO" alone sends a team back to the raw tables,
"agreement 0.85 is below 0.90" tells them what to train next. Checks compare the point
estimate with the threshold (the interval is quoted in the reason, so a pass on a wide interval
is visible). A threshold that cannot be measured (no gold answers, no latency) is reported as
not checked rather than silently passed or failed.

With several students, the verdict is the latency-budget choice: among students that pass every
check, the smallest (``params``), then the fastest (p95 latency).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from apidistill.config import EvalThresholds
from apidistill.eval.types import EvalResult, ModelEval

__all__ = ["Check", "Verdict", "select_student", "student_checks", "verdict"]


class Check(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    threshold: float
    op: Literal[">=", "<="]
    measured: float | None
    passed: bool | None  # None: could not be measured
    detail: str


class Verdict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    go: bool
    student: str | None
    reasons: list[str]
    checks: list[Check]
    notes: list[str] = Field(default_factory=list)
    per_student: dict[str, list[Check]] = Field(default_factory=dict)


def _fmt(x: float) -> str:
    return f"{x:.3f}" if abs(x) < 100 else f"{x:.0f}"


def _check(
    name: str,
    label: str,
    student: ModelEval,
    threshold: float,
    op: Literal[">=", "<="],
    unit: str = "",
) -> Check:
    if name == "latency_p95_ms":
        measured, interval = student.timing.p95_ms, ""
    else:
        mv = student.metrics.get(name)
        measured = mv.value if mv else None
        interval = f" (95% CI {_fmt(mv.low)}–{_fmt(mv.high)}, n={mv.n})" if mv else ""
    if measured is None or math.isnan(measured):
        return Check(
            name=name,
            threshold=threshold,
            op=op,
            measured=None,
            passed=None,
            detail=f"{label} not checked for {student.name!r}: not measured"
            + (" (no gold answers in the test split)" if name == "relative_task_score" else ""),
        )
    passed = measured >= threshold if op == ">=" else measured <= threshold
    rel = (
        ("at or above" if passed else "below") if op == ">=" else ("within" if passed else "above")
    )
    what = "the threshold" if op == ">=" else "the limit"
    return Check(
        name=name,
        threshold=threshold,
        op=op,
        measured=measured,
        passed=passed,
        detail=f"{student.name}: {label} {_fmt(measured)}{unit}{interval} is {rel} "
        f"{what} {_fmt(threshold)}{unit}",
    )


def student_checks(student: ModelEval, thresholds: EvalThresholds) -> list[Check]:
    """One check per threshold that is set."""
    checks = []
    if thresholds.agreement is not None:
        checks.append(
            _check("agreement", "agreement with the teacher", student, thresholds.agreement, ">=")
        )
    if thresholds.relative_task_score is not None:
        checks.append(
            _check(
                "relative_task_score",
                "task score relative to the teacher's",
                student,
                thresholds.relative_task_score,
                ">=",
            )
        )
    if thresholds.max_latency_ms_p95 is not None:
        checks.append(
            _check(
                "latency_p95_ms", "p95 latency", student, thresholds.max_latency_ms_p95, "<=", " ms"
            )
        )
    return checks


def _passes(checks: list[Check]) -> bool:
    return all(c.passed is not False for c in checks)


def select_student(result: EvalResult, thresholds: EvalThresholds | None = None) -> str | None:
    """The smallest, then fastest, student meeting every threshold; ``None`` if none does."""
    th = thresholds or result.thresholds
    passing = [s for s in result.students.values() if _passes(student_checks(s, th))]
    if not passing:
        return None
    best = min(
        passing,
        key=lambda s: (
            s.params if s.params is not None else math.inf,
            s.timing.p95_ms if s.timing.p95_ms is not None else math.inf,
            s.name,
        ),
    )
    return best.name


def _closest(result: EvalResult, per: dict[str, list[Check]]) -> str | None:
    """When nobody passes, the verdict describes the student that failed fewest checks
    (then: highest agreement), which is the one worth improving."""
    if not per:
        return None

    def key(name: str) -> tuple[int, float]:
        fails = sum(c.passed is False for c in per[name])
        agree = result.students[name].metrics.get("agreement")
        return (fails, -(agree.value if agree else 0.0))

    return min(per, key=key)


def verdict(
    result: EvalResult, thresholds: EvalThresholds | None = None, *, student: str | None = None
) -> Verdict:
    """GO when the chosen student (``student``, else the latency-budget choice) passes every
    measurable threshold; ``reasons`` lists each failed threshold with the measured value."""
    th = thresholds or result.thresholds
    per = {name: student_checks(s, th) for name, s in result.students.items()}
    if student is not None and student not in per:
        from apidistill.errors import EvalError

        raise EvalError(
            f"no student named {student!r} in this result", hint=f"one of: {', '.join(per)}"
        )
    chosen = student or select_student(result, th) or _closest(result, per)
    if chosen is None:
        return Verdict(go=False, student=None, reasons=["no student was evaluated"], checks=[])
    checks = per[chosen]
    go = _passes(checks)
    reasons = [c.detail for c in checks if c.passed is False]
    if not go and student is None and len(per) > 1:
        others = [n for n in per if n != chosen]
        reasons.append(f"no other student passes either ({', '.join(others)})")
    notes = [c.detail for c in checks if c.passed is None]
    return Verdict(
        go=go, student=chosen, reasons=reasons, checks=checks, notes=notes, per_student=per
    )
