"""The migration report: one self-contained HTML file plus ``report.json``.

Written for the people who decide whether to switch, not for the people who trained the model:
the verdict and its reasons come first, then the numbers with their intervals, then the plots.
Everything (CSS, images) is inline so the file can be mailed or attached to a ticket.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from apidistill.config import EvalThresholds
from apidistill.errors import EvalError, redact
from apidistill.eval import plots
from apidistill.eval.html import Cell, esc, img, page, section, table
from apidistill.eval.types import EvalResult, MetricValue, ModelEval
from apidistill.eval.verdict import Check, Verdict, verdict

__all__ = ["Verdict", "render_html", "verdict", "write_report"]

_LABELS = {
    "agreement": "agreement with teacher",
    "task_score": "task score (gold)",
    "relative_task_score": "task score ÷ teacher's",
    "valid_rate": "valid structure",
    "refusal_rate": "refusals",
    "ece": "calibration error (ECE)",
    "kl_nats_per_token": "KL to teacher (nats/token)",
    "top1_agreement": "top-1 token agreement",
}
_ORDER = list(_LABELS)


def _label(metric: str) -> str:
    if metric.startswith("field:"):
        return f"{metric[6:]} (gold)"
    return _LABELS.get(metric, metric.replace("_", " "))


def _num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def _metric_cell(mv: MetricValue | None) -> str:
    if mv is None:
        return "—"
    return f"{mv.value:.3f} <span class='ci'>[{mv.low:.3f}, {mv.high:.3f}]</span>"


def _models(result: EvalResult) -> list[ModelEval]:
    return [result.teacher, *result.students.values()]


# --------------------------------------------------------------------------- sections


def _banner(v: Verdict) -> str:
    klass, word = ("go", "GO") if v.go else ("nogo", "NO-GO")
    who = f" — student <b>{esc(v.student)}</b>" if v.student else ""
    items = "".join(f"<li>{esc(r)}</li>" for r in v.reasons)
    reasons = f"<ul class='reasons'>{items}</ul>" if items else ""
    if v.go and not v.reasons:
        reasons = "<div>meets every threshold set in the run file</div>"
    notes = "".join(f"<li>{esc(n)}</li>" for n in v.notes)
    notes_html = f"<ul class='note'>{notes}</ul>" if notes else ""
    return (
        f"<div class='verdict {klass}' id='verdict'><span class='big'>{word}</span>{who}"
        f"{reasons}</div>{notes_html}"
    )


def _checks_table(v: Verdict) -> str:
    rows = []
    for student, checks in v.per_student.items():
        for c in checks:
            state = _check_state(c)
            rows.append(
                [
                    esc(student),
                    esc(_label(c.name) if c.name != "latency_p95_ms" else "p95 latency (ms)"),
                    _num(c.measured),
                    f"{esc(c.op)} {_num(c.threshold)}",
                    Cell(state, "pass" if c.passed else ("na" if c.passed is None else "fail")),
                ]
            )
    if not rows:
        return "<p class='note'>No threshold is set in the run file.</p>"
    return table(["student", "check", "measured", "threshold", "result"], rows, align="llrrl")


def _check_state(c: Check) -> str:
    return "pass" if c.passed else ("not measured" if c.passed is None else "fail")


def _metrics_table(result: EvalResult) -> str:
    models = _models(result)
    present = {k for m in models for k in m.metrics}
    names = [m for m in _ORDER if m in present] + sorted(present - set(_ORDER))
    rows = [[esc(m.name), *(_cell(m, k) for k in names)] for m in models]
    note = "<p class='note'>Value [95% bootstrap interval]. Agreement compares each answer with the teacher's; task score compares with the gold answer.</p>"
    missing = "".join(f"<p class='note'>{esc(n)}</p>" for n in result.notes)
    return table(["model", *(_label(k) for k in names)], rows) + note + missing


def _cell(m: ModelEval, metric: str) -> str:
    """A metric cell; held-out KL also says on which share of answer positions it was read
    (below 100% when the teacher's tokenizer differs and positions were byte-aligned)."""
    text = _metric_cell(m.metrics.get(metric))
    if metric == "kl_nats_per_token" and m.kl_coverage is not None:
        text += f"<br><span class='note'>on {m.kl_coverage:.0%} of answer positions</span>"
    return text


def _speed_cost_table(result: EvalResult) -> str:
    teacher_tokens = result.teacher.prompt_tokens_per_request
    rows = []
    for m in _models(result):
        saved = (
            teacher_tokens - m.prompt_tokens_per_request
            if m.role == "student"
            and teacher_tokens is not None
            and m.prompt_tokens_per_request is not None
            else None
        )
        usd = m.usd_per_1k_requests
        rows.append(
            [
                esc(m.name),
                _num(m.timing.p50_ms, 0),
                _num(m.timing.p95_ms, 0),
                _num(m.timing.throughput_rps, 2),
                _num(m.prompt_tokens_per_request, 1),
                _num(saved, 1),
                _num(m.completion_tokens_per_request, 1),
                "—" if usd is None else f"${float(usd):,.4f}",
                f"<span class='note'>{esc(m.cost_basis)}</span>",
            ]
        )
    headers = [
        "model", "p50 ms", "p95 ms", "requests/s", "prompt tokens/req", "prompt tokens saved/req",
        "output tokens/req", "USD per 1k requests", "cost basis",
    ]  # fmt: skip
    return table(headers, rows, align="lrrrrrrrl")


def _figure(png: str | None, alt: str, caption: str) -> str:
    return img(png, alt, caption) if png else ""


def _plots(result: EvalResult, training_history: Sequence[Mapping[str, Any]] | None) -> list[str]:
    out = []
    bars = _figure(
        plots.metric_bars_png(result),
        "metric bars",
        "Metrics per model; whiskers are 95% bootstrap intervals.",
    )
    kl = _figure(
        plots.kl_png(result),
        "held-out KL",
        "Held-out KL of each student to the teacher on the teacher's tokens.",
    )
    if bars or kl:
        out.append(section("Quality", bars + kl, anchor="quality"))
    confusions = [
        _figure(
            plots.confusion_png(m.confusion, m.name),
            f"confusion matrix {m.name}",
            f"{m.name}: reference label (rows) vs answer (columns).",
        )
        for m in _models(result)
        if m.confusion is not None
    ]
    if any(confusions):
        out.append(section("Confusion matrices", "".join(confusions), anchor="confusion"))
    lat = _figure(
        plots.latency_png(result),
        "latency distribution",
        "Latency per request as measured by the client (HTTP included).",
    )
    if lat:
        out.append(section("Latency", lat, anchor="latency"))
    cost = _figure(
        plots.cost_png(result),
        "cost comparison",
        "Cost per 1,000 requests: teacher API price vs. self-hosted student.",
    )
    tokens = _figure(
        plots.prompt_tokens_png(result),
        "prompt tokens per request",
        "Prompt tokens per request: the prototype prompt vs. the student's short prompt.",
    )
    if cost or tokens:
        out.append(section("Cost and prompt size", cost + tokens, anchor="cost"))
    if training_history:
        curves = _figure(
            plots.training_curves_png(training_history),
            "training curves",
            "Training and evaluation loss per step.",
        )
        if curves:
            out.append(section("Training curves", curves, anchor="training"))
    return out


_SPEND_ROWS = (
    ("settled (answers)", "cost_usd"),
    ("at risk (sends without a known outcome)", "at_risk_usd"),
    ("total spend", "total_usd"),
)


def _spend_section(spend: Mapping[str, Any] | None) -> str:
    """The harvest's spend as the run's ledger states it (:meth:`Ledger.spend`): settled
    answers plus money at risk, with the failed, unknown and re-sent sends behind it."""
    if not spend:
        return ""
    rows = "".join(
        f"<tr><td>{esc(label)}</td><td>${esc(str(spend[k]))}</td></tr>" for label, k in _SPEND_ROWS
    )
    counts = ", ".join(
        f"{spend[k]} {label}"
        for k, label in (("sends", "sends"), ("resends", "re-sent"), ("failed", "failed"),
                         ("unknown", "outcome unknown"), ("unpriced", "unpriced"))
    )  # fmt: skip
    body = f"<table><tr><th>item</th><th>USD</th></tr>{rows}</table><p>{esc(counts)}</p>"
    return section("Harvest spend (ledger)", body, anchor="spend")


def _notes(result: EvalResult) -> str:
    items = [f"<li>{esc(n)}</li>" for n in result.notes]
    items += [f"<li><b>{esc(m.name)}</b>: {esc(n)}</li>" for m in _models(result) for n in m.notes]
    items += [
        f"<li><b>{esc(m.name)}</b>: answers in <code>{esc(m.predictions_path)}</code></li>"
        for m in result.students.values()
        if m.predictions_path
    ]
    return section("Notes", f"<ul>{''.join(items)}</ul>", anchor="notes") if items else ""


def render_html(
    result: EvalResult,
    *,
    title: str,
    thresholds: EvalThresholds | None = None,
    training_history: Sequence[Mapping[str, Any]] | None = None,
    extra_sections: Mapping[str, str] | None = None,
    spend: Mapping[str, Any] | None = None,
) -> str:
    """The report page as a string. ``extra_sections`` maps a heading to an HTML fragment that
    is inserted as given (the caller's own markup, e.g. the data card summary); ``spend`` is
    the run ledger's totals (:meth:`apidistill.costs.ledger.Ledger.spend`)."""
    v = verdict(result, thresholds)
    when = result.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    sub = (
        f"{result.n_records} {esc(result.split)} records ({result.n_with_gold} with gold answers), "
        f"scorer <code>{esc(result.scorer)}</code>"
        + (f" on fields <code>{esc(', '.join(result.fields))}</code>" if result.fields else "")
        + f", {len(result.students)} student(s), {when}"
    )
    parts = [
        f"<h1>{esc(title)}</h1><p class='sub'>{sub}</p>",
        _banner(v),
        section("Thresholds", _checks_table(v), anchor="checks"),
        section("Metrics", _metrics_table(result), anchor="metrics"),
        section("Speed and cost", _speed_cost_table(result), anchor="speed"),
        _spend_section(spend),
        *_plots(result, training_history),
        *(section(heading, body) for heading, body in (extra_sections or {}).items()),
        _notes(result),
    ]
    return page(title, "\n".join(p for p in parts if p))


def write_report(
    result: EvalResult,
    out_dir: Path,
    *,
    title: str,
    training_history: Sequence[Mapping[str, Any]] | None = None,
    extra_sections: Mapping[str, str] | None = None,
    spend: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``out_dir/report.html`` and ``out_dir/report.json``; returns the HTML path.
    ``spend`` (the run ledger's totals) is shown and stored as given, so the report and the
    dataset card state the same money."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        html_text = render_html(
            result,
            title=title,
            training_history=training_history,
            extra_sections=extra_sections,
            spend=spend,
        )
        v = verdict(result)
        payload = {
            "title": title,
            "written_at": datetime.now(UTC).isoformat(),
            "verdict": v.model_dump(mode="json"),
            "result": result.model_dump(mode="json"),
            "spend": dict(spend) if spend else None,
        }
        _atomic_write(out / "report.json", json.dumps(payload, indent=2, ensure_ascii=False))
        _atomic_write(out / "report.html", html_text)
    except OSError as exc:
        raise EvalError(
            f"cannot write the report to {out}: {exc}", hint="check the folder is writable"
        ) from None
    return out / "report.html"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(redact(text), encoding="utf-8")  # no configured key in a report
    tmp.replace(path)
