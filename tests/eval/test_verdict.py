"""Go / no-go: flips when a threshold crosses the measured value; latency-budget selection."""

from __future__ import annotations

import pytest

from apidistill.config import EvalThresholds
from apidistill.errors import EvalError
from apidistill.eval.types import EvalResult, MetricValue, ModelEval, Timing
from apidistill.eval.verdict import select_student, verdict


def _mv(v: float) -> MetricValue:
    return MetricValue(value=v, low=v - 0.05, high=min(v + 0.05, 1.0), n=100)


def _student(
    name: str, agreement: float, rel: float | None, p95: float, params: int | None = None
) -> ModelEval:
    metrics = {"agreement": _mv(agreement)}
    if rel is not None:
        metrics["relative_task_score"] = _mv(rel)
    return ModelEval(
        name=name,
        role="student",
        kind="seq_kd",
        model=name,
        params=params,
        n_examples=100,
        metrics=metrics,
        timing=Timing(latency_ms=[p95], p50_ms=p95 / 2, p95_ms=p95, requests=100),
    )


def _result(*students: ModelEval, thresholds: EvalThresholds | None = None) -> EvalResult:
    teacher = ModelEval(name="teacher", role="teacher", kind="teacher", model="t", n_examples=100)
    return EvalResult(
        scorer="fields",
        split="test",
        n_records=100,
        n_with_gold=100,
        thresholds=thresholds or EvalThresholds(),
        teacher=teacher,
        students={s.name: s for s in students},
    )


def test_verdict_flips_when_agreement_threshold_crosses_the_measured_value() -> None:
    result = _result(_student("s", agreement=0.85, rel=1.0, p95=300))
    below = verdict(result, EvalThresholds(agreement=0.84, relative_task_score=0.95))
    above = verdict(result, EvalThresholds(agreement=0.86, relative_task_score=0.95))
    assert below.go and below.reasons == []
    assert not above.go
    assert len(above.reasons) == 1
    assert "agreement with the teacher 0.850" in above.reasons[0]
    assert "below the threshold 0.860" in above.reasons[0]


def test_verdict_flips_on_latency_and_relative_task_score() -> None:
    result = _result(_student("s", agreement=0.95, rel=0.97, p95=420.0))
    assert verdict(result, EvalThresholds(max_latency_ms_p95=421, relative_task_score=0.96)).go
    slow = verdict(result, EvalThresholds(max_latency_ms_p95=419, relative_task_score=0.96))
    worse = verdict(result, EvalThresholds(max_latency_ms_p95=421, relative_task_score=0.98))
    assert (
        not slow.go
        and "p95 latency 420 ms" in slow.reasons[0]
        and "above the limit" in slow.reasons[0]
    )
    assert not worse.go
    assert "task score relative to the teacher's 0.970" in worse.reasons[0]


def test_unmeasurable_threshold_is_a_note_not_a_pass_or_fail() -> None:
    result = _result(_student("s", agreement=0.95, rel=None, p95=100))
    v = verdict(result, EvalThresholds(agreement=0.9, relative_task_score=0.95))
    assert v.go
    assert [c.passed for c in v.checks] == [True, None]
    assert "no gold answers" in v.notes[0]


def test_latency_budget_picks_the_smallest_passing_student() -> None:
    big = _student("big", agreement=0.97, rel=1.0, p95=900, params=360_000_000)
    small = _student("small", agreement=0.93, rel=0.99, p95=300, params=135_000_000)
    result = _result(big, small)
    assert select_student(result, EvalThresholds(agreement=0.9)) == "small"
    # Raise the bar above the small student's agreement: the big one is chosen.
    assert select_student(result, EvalThresholds(agreement=0.95)) == "big"
    v = verdict(result, EvalThresholds(agreement=0.95))
    assert v.go and v.student == "big"
    assert select_student(result, EvalThresholds(agreement=0.99)) is None


def test_without_sizes_the_fastest_passing_student_wins() -> None:
    result = _result(_student("a", 0.95, 1.0, p95=500), _student("b", 0.95, 1.0, p95=200))
    assert select_student(result, EvalThresholds()) == "b"


def test_no_go_names_the_closest_student_and_the_others() -> None:
    result = _result(_student("a", 0.80, 1.0, 100), _student("b", 0.88, 1.0, 100))
    v = verdict(result, EvalThresholds(agreement=0.9))
    assert not v.go and v.student == "b"
    assert v.reasons[-1] == "no other student passes either (a)"
    assert set(v.per_student) == {"a", "b"}


def test_verdict_for_a_named_student_and_an_unknown_one() -> None:
    result = _result(_student("a", 0.95, 1.0, 100))
    assert verdict(result, student="a").student == "a"
    with pytest.raises(EvalError, match="no student named 'x'"):
        verdict(result, student="x")
