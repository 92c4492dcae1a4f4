"""Helpers of the conformance matrix (issue 18): one small run file per teacher kind, run
with ``apidistill run`` in a child process exactly as a user would, and the checks every
report must pass.

Every row is scaled down to seconds of work: a few demo tickets, LoRA r=4 (or a full
fine-tune) for two steps on the embedded SmolLM2-135M, short answers. What a row may change
is its teacher block and the few settings that teacher needs (:func:`run_file`); everything
else is shared, so the rows differ only in what they are about. Fixtures (the loopback
teachers) are in ``conftest.py``.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TICKETS = ROOT / "apidistill" / "demo_data" / "tickets.jsonl"
N_TICKETS = 8  # 4 train, 4 test
API_KEY = "sk-test-conformance-0123456789"
STUDENT_SYSTEM = "Extract the order number and product from the support ticket."


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def run_file(name: str, tickets: Path, teacher: dict[str, Any], **sections: Any) -> dict:
    """A complete, small run file for ``teacher``; ``sections`` are merged over the shared
    settings (e.g. ``training={"method": "sequence_kd"}``)."""
    base: dict[str, Any] = {
        "name": name,
        "teacher": teacher,
        "prompts": {
            "path": str(tickets),
            "input_field": "text",
            "id_field": "id",
            "label_field": "label",
            "gold_field": "gold",
        },
        "policy": {"use": "internal"},
        "budget": {"usd": 1.0},
        "harvest": {
            "concurrency": 4,
            "max_tokens": 32,
            "temperature": 0.0,
            "logprobs": True,
            "top_logprobs": 20,
        },
        "dataset": {
            "dedupe": "none",
            "splits": {"train": 0.5, "validation": 0.0, "test": 0.5, "stratify_by": None},
        },
        "student": {"model": "smollm2-135m-instruct", "system_prompt": STUDENT_SYSTEM},
        "training": {
            "method": "logprob_kd",
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "max_steps": 2,
            "batch_size": 2,
            "max_length": 256,
        },
        "eval": {
            "scorer": "fields",
            "fields": ["order_id", "product"],
            "thresholds": {"agreement": 0.9, "relative_task_score": 0.95},
            "max_tokens": 32,
            "bootstrap_samples": 100,
        },
    }
    return _merge(base, sections)


@dataclass
class RunOutcome:
    """What ``apidistill run`` left: its output and the run folder's JSON files."""

    run_dir: Path
    output: str
    wall_s: float
    report: dict[str, Any]
    summary: dict[str, Any]
    train: dict[str, Any]

    @property
    def result(self) -> dict[str, Any]:
        return self.report["result"]

    @property
    def verdict(self) -> dict[str, Any]:
        return self.report["verdict"]

    def student(self, name: str = "student") -> dict[str, Any]:
        return self.result["students"][name]

    def metric(self, model: dict[str, Any], name: str) -> float | None:
        m = model["metrics"].get(name)
        return None if m is None else m["value"]


def run_cli(cfg: dict[str, Any], tmp_path: Path, env: dict[str, str] | None = None) -> RunOutcome:
    """Write ``cfg`` as a YAML run file and run ``apidistill run`` on it in a child process;
    fail with its output unless it exits 0 and leaves a report."""
    cfg = {**cfg, "run_dir": str(tmp_path / "run")}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")
    child_env = {**os.environ, "OPENAI_API_KEY": API_KEY, "ANTHROPIC_API_KEY": API_KEY}
    child_env.update(env or {})
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "apidistill", "run", str(path), "--no-progress"],
        capture_output=True,
        text=True,
        env=child_env,
        timeout=600,
    )
    wall = time.perf_counter() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    run_dir = tmp_path / "run"
    report = run_dir / "report" / "report.json"
    assert report.is_file() and (run_dir / "report" / "report.html").is_file(), output[-4000:]

    def read(p: Path) -> dict[str, Any]:
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}

    return RunOutcome(
        run_dir=run_dir,
        output=output,
        wall_s=wall,
        report=read(report),
        summary=read(run_dir / "summary.json"),
        train=read(run_dir / "train" / "train_result.json"),
    )


def assert_always_measured(run: RunOutcome, *, teacher_latency: bool = True) -> None:
    """What every row's report must carry: agreement and task score for base and student,
    student latency and cost per 1k requests, the teacher's cost, and a verdict on the
    distilled student whose checks were measured (pass or fail). The one exception is the
    task score relative to the teacher's, which does not exist when the teacher scored 0
    (then the check says 'not measured' rather than pass or fail)."""
    teacher = run.result["teacher"]
    assert run.result["n_records"] == N_TICKETS // 2
    assert teacher["usd_per_1k_requests"] is not None
    assert teacher["prompt_tokens_per_request"] > 0
    if teacher_latency:
        assert teacher["timing"]["p50_ms"] is not None
    relative = run.metric(teacher, "task_score") > 0
    for name in ("student", "base (no prompt)"):
        me = run.student(name)
        for metric in ("agreement", "task_score"):
            assert run.metric(me, metric) is not None, (name, metric)
        assert (run.metric(me, "relative_task_score") is not None) is relative
        assert me["timing"]["p50_ms"] > 0 and me["timing"]["requests"] == N_TICKETS // 2
        assert me["usd_per_1k_requests"] is not None
    v = run.verdict
    assert v["student"] in run.result["students"]
    checks = {c["name"]: c for c in v["checks"]}
    assert list(checks) == ["agreement", "relative_task_score"]
    assert checks["agreement"]["passed"] is not None
    assert (checks["relative_task_score"]["passed"] is not None) is relative
    assert isinstance(v["go"], bool)
    html = (run.run_dir / "report" / "report.html").read_text(encoding="utf-8")
    assert "id='verdict'" in html
    assert run.summary["student_agreement"] == pytest.approx(
        run.metric(run.student(), "agreement"), abs=1e-4
    )


def assert_kl_measured(run: RunOutcome, *, aligned: bool) -> None:
    """Held-out KL with its coverage for both local models; byte-aligned rows cover part of
    the answer positions, rows with the student's own token ids cover them all."""
    for name in ("student", "base (no prompt)"):
        me = run.student(name)
        kl = run.metric(me, "kl_nats_per_token")
        assert kl is not None and kl >= 0, name
        cov = me["kl_coverage"]
        assert cov is not None and 0 < cov <= 1, name
        assert ("byte-aligned" in me["kl_basis"]) is aligned
        if aligned:
            assert cov < 1  # o200k cuts numbers and words where SmolLM2 does not
        else:
            assert cov == 1.0
    assert not run.result["notes"]
    assert run.summary["student_kl_coverage"] == run.student()["kl_coverage"]


def assert_kl_not_measured(run: RunOutcome) -> None:
    """No logprobs from this teacher: one line says why, and no KL number is made up."""
    for me in run.result["students"].values():
        assert "kl_nats_per_token" not in me["metrics"] and me["kl_coverage"] is None
    (why,) = run.result["notes"]
    assert why.startswith("held-out KL not measured") and "\n" not in why
    assert run.summary["eval_notes"] == [why]
