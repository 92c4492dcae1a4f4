"""Boundary types of the eval stage: what a caller passes in and what the report reads.

Pydantic, because an :class:`EvalResult` is written to ``report.json`` and read back by other
tools (``apidistill report``, dashboards): the JSON form is the contract.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from apidistill.config import EvalThresholds
from apidistill.eval.metrics import Estimate

__all__ = ["Confusion", "EvalResult", "MetricValue", "ModelEval", "StudentEndpoint", "Timing"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StudentEndpoint(_Model):
    """An OpenAI-compatible endpoint serving one student (``apidistill serve``, vLLM, ...).

    ``usd_per_hour`` prices the machine it runs on; ``None`` takes ``eval.student_usd_per_hour``.
    ``params`` (parameter count) ranks students for the latency-budget choice: the smallest
    that meets every threshold wins, ties broken by p95 latency. ``local_model`` (+ ``adapter``)
    names the same student as a local model so held-out KL can be measured; that loads the
    model in this process and takes a forward pass per test record.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str
    model: str
    api_key: str | None = Field(None, repr=False, exclude=True)
    usd_per_hour: Decimal | None = Field(None, ge=0)
    kind: str = "student"
    params: int | None = Field(None, gt=0)
    local_model: str | None = None
    adapter: str | None = None
    timeout_s: float = Field(120.0, gt=0)


class MetricValue(_Model):
    value: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, est: Estimate) -> MetricValue:
        return cls(value=est.value, low=est.low, high=est.high, n=est.n)


class Confusion(_Model):
    """Rows are the reference label (gold, else the teacher's), columns the model's answer."""

    labels: list[str]
    counts: list[list[int]]
    reference: Literal["gold", "teacher"]


class Timing(_Model):
    latency_ms: list[float] = Field(default_factory=list)
    p50_ms: float | None = None
    p95_ms: float | None = None
    throughput_rps: float | None = None
    wall_s: float | None = None
    requests: int = 0
    concurrency: int | None = None


class ModelEval(_Model):
    """Everything measured for one model (the teacher's cached answers, or one student)."""

    name: str
    role: Literal["teacher", "student"]
    kind: str
    model: str
    base_url: str | None = None
    params: int | None = None
    n_examples: int
    metrics: dict[str, MetricValue] = Field(default_factory=dict)
    timing: Timing = Field(default_factory=Timing)
    prompt_tokens_per_request: float | None = None
    completion_tokens_per_request: float | None = None
    usd_per_1k_requests: Decimal | None = None
    cost_basis: str = ""
    confusion: Confusion | None = None
    predictions_path: str | None = None
    notes: list[str] = Field(default_factory=list)
    # Share of answer positions held-out KL was measured on, and on what (teacher ids, or
    # byte-aligned positions when the teacher's tokenizer differs); None when not measured.
    kl_coverage: float | None = Field(None, ge=0, le=1)
    kl_basis: str | None = None


class EvalResult(_Model):
    scorer: str
    fields: list[str] | None = None
    split: str
    n_records: int
    n_with_gold: int
    thresholds: EvalThresholds
    teacher: ModelEval
    students: dict[str, ModelEval]
    selected: str | None = None
    # One line per metric that could not be measured for this teacher, and why.
    notes: list[str] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
