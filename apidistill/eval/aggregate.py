"""Turn one model's answers on the test split into metrics with intervals (no I/O).

Two references exist and both are reported, because they answer different questions: gold
answers say whether the task is done (``task_score``), the teacher's answers say whether the
student is a drop-in replacement (``agreement``). A student can beat its teacher on gold while
disagreeing with it (the demo's 1-epoch student fixed 6 teacher errors), so neither alone
decides a migration.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from apidistill.config import EvalConfig, FilterConfig
from apidistill.eval.metrics import (
    bootstrap_ci,
    bootstrap_ratio_ci,
    calibration_ci,
    canonical_label,
    is_refusal,
    score,
    valid_structure,
)
from apidistill.eval.types import Confusion, MetricValue
from apidistill.records import Record

__all__ = ["confusion_matrix", "output_metrics"]


def _default_refusal_patterns() -> list[str]:
    return list(FilterConfig().refusal_patterns)


def output_metrics(
    records: Sequence[Record],
    outputs: Sequence[str],
    cfg: EvalConfig,
    *,
    compare_to_teacher: bool,
    confidences: Sequence[float | None] | None = None,
    refusal_patterns: Sequence[str] | None = None,
) -> dict[str, MetricValue]:
    """Metrics of ``outputs`` (aligned with ``records``) under ``cfg.scorer``.

    ``compare_to_teacher`` adds agreement with ``record.completion`` and the task score relative
    to the teacher's. ``confidences`` (probability of each whole answer) adds ECE for label tasks.
    """
    if len(outputs) != len(records):
        raise ValueError("outputs must align with records")
    boot = {"samples": cfg.bootstrap_samples, "seed": cfg.seed}
    fields = cfg.fields
    out: dict[str, MetricValue] = {}
    gold_idx = [i for i, r in enumerate(records) if r.gold is not None]
    gold_scores = [score(cfg.scorer, outputs[i], records[i].gold or "", fields) for i in gold_idx]
    if compare_to_teacher:
        agree = [
            score(cfg.scorer, o, r.completion, fields)
            for o, r in zip(outputs, records, strict=True)
        ]
        out["agreement"] = MetricValue.of(bootstrap_ci(agree, **boot))
    if gold_idx:
        out["task_score"] = MetricValue.of(bootstrap_ci(gold_scores, **boot))
        if compare_to_teacher:
            teacher = [
                score(cfg.scorer, records[i].completion, records[i].gold or "", fields)
                for i in gold_idx
            ]
            if sum(teacher) > 0:
                out["relative_task_score"] = MetricValue.of(
                    bootstrap_ratio_ci(gold_scores, teacher, **boot)
                )
        if cfg.scorer == "fields" and fields and len(fields) > 1:
            for f in fields:
                per = [score("fields", outputs[i], records[i].gold or "", [f]) for i in gold_idx]
                out[f"field:{f}"] = MetricValue.of(bootstrap_ci(per, **boot))
    if cfg.scorer == "fields" and fields:
        valid = [float(valid_structure(o, fields)) for o in outputs]
        out["valid_rate"] = MetricValue.of(bootstrap_ci(valid, **boot))
    patterns = _default_refusal_patterns() if refusal_patterns is None else refusal_patterns
    refusals = [float(is_refusal(o, patterns)) for o in outputs]
    out["refusal_rate"] = MetricValue.of(bootstrap_ci(refusals, **boot))
    ece = _calibration(records, outputs, cfg, confidences)
    if ece is not None:
        out["ece"] = ece
    return out


def _calibration(
    records: Sequence[Record],
    outputs: Sequence[str],
    cfg: EvalConfig,
    confidences: Sequence[float | None] | None,
) -> MetricValue | None:
    """ECE of label answers against gold (else the teacher), over answers with a confidence."""
    if cfg.scorer != "label" or confidences is None:
        return None
    conf, correct = [], []
    for r, o, c in zip(records, outputs, confidences, strict=True):
        ref = r.gold if r.gold is not None else r.completion
        if c is not None:
            conf.append(c)
            correct.append(score("label", o, ref))
    if not conf:
        return None
    return MetricValue.of(
        calibration_ci(
            np.array(conf), np.array(correct), samples=cfg.bootstrap_samples, seed=cfg.seed
        )
    )


def confusion_matrix(
    records: Sequence[Record], outputs: Sequence[str], *, max_labels: int = 12
) -> Confusion:
    """Counts of (reference label, answered label); rare answers beyond ``max_labels`` columns
    are pooled as ``(other)`` so a model that babbles cannot blow up the table."""
    use_gold = all(r.gold is not None for r in records)
    refs = [canonical_label((r.gold if use_gold else r.completion) or "") for r in records]
    preds = [canonical_label(o) for o in outputs]
    ref_labels = sorted(set(refs))
    extra = [lab for lab, _ in _by_count(p for p in preds if p not in ref_labels)]
    room = max(max_labels - len(ref_labels), 0)
    labels = ref_labels + extra[:room]
    if len(extra) > room:
        labels.append("(other)")
    pos = {lab: i for i, lab in enumerate(labels)}
    counts = [[0] * len(labels) for _ in ref_labels]
    for r, p in zip(refs, preds, strict=True):
        counts[pos[r]][pos.get(p, len(labels) - 1)] += 1
    return Confusion(labels=labels, counts=counts, reference="gold" if use_gold else "teacher")


def _by_count(items) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for x in items:
        counts[x] = counts.get(x, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
