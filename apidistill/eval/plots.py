"""The report's figures, each returned as a base64 PNG so the HTML file stands alone.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas directly, never through
``pyplot``: pyplot keeps global figure state and picks a GUI backend, neither of which a
report written from a server or a test should touch. Every function returns ``None`` when there
is nothing to draw, and the report leaves the section out.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

from apidistill.eval.types import Confusion, EvalResult, ModelEval

__all__ = [
    "confusion_png",
    "cost_png",
    "kl_png",
    "latency_png",
    "metric_bars_png",
    "prompt_tokens_png",
    "training_curves_png",
]

_RATE_METRICS = ("agreement", "task_score", "relative_task_score", "valid_rate", "top1_agreement")
_COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f"]


def _figure(width: float = 7.0, height: float = 3.6) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _models(result: EvalResult) -> list[ModelEval]:
    return [result.teacher, *result.students.values()]


def _palette(result: EvalResult) -> dict[str, str]:
    """One color per model, the same in every figure of the report."""
    return {m.name: _COLORS[i % len(_COLORS)] for i, m in enumerate(_models(result))}


def _bars_with_ci(
    ax: Any, models: Sequence[ModelEval], metrics: Sequence[str], colors: Mapping[str, str]
) -> None:
    width = 0.8 / max(len(models), 1)
    for m_i, me in enumerate(models):
        xs, ys, lo, hi = [], [], [], []
        for x, name in enumerate(metrics):
            mv = me.metrics.get(name)
            if mv is None:
                continue
            xs.append(x + (m_i - (len(models) - 1) / 2) * width)
            ys.append(mv.value)
            lo.append(max(mv.value - mv.low, 0.0))
            hi.append(max(mv.high - mv.value, 0.0))
        if xs:
            ax.bar(
                xs,
                ys,
                width * 0.95,
                yerr=[lo, hi],
                capsize=3,
                label=me.name,
                color=colors[me.name],
            )
    ax.set_xticks(
        range(len(metrics)), [m.replace("_", " ") for m in metrics], rotation=25, ha="right"
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def metric_bars_png(result: EvalResult) -> str | None:
    """Rate metrics (0..1) per model, whiskers = 95% bootstrap interval."""
    models = _models(result)
    metrics = [m for m in _RATE_METRICS if any(m in me.metrics for me in models)]
    metrics += sorted({k for me in models for k in me.metrics if k.startswith("field:")})
    if not metrics:
        return None
    fig = _figure(max(7.0, 1.2 * len(metrics) + 2.0), 4.0)
    ax = fig.add_subplot()
    _bars_with_ci(ax, models, metrics, _palette(result))
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score (95% CI)")
    return _png(fig)


def kl_png(result: EvalResult) -> str | None:
    """Held-out KL to the teacher (nats/token) per student that has it."""
    have = [s for s in result.students.values() if "kl_nats_per_token" in s.metrics]
    if not have:
        return None
    fig = _figure(5.5, 3.0)
    ax = fig.add_subplot()
    _bars_with_ci(ax, have, ["kl_nats_per_token"], _palette(result))
    ax.set_ylabel("nats / token (95% CI)")
    return _png(fig)


def confusion_png(conf: Confusion, title: str) -> str | None:
    if not conf.labels:
        return None
    import numpy as np

    counts = np.asarray(conf.counts, dtype=float)
    fig = _figure(1.2 + 0.55 * len(conf.labels), 1.0 + 0.5 * len(conf.counts))
    ax = fig.add_subplot()
    ax.imshow(counts, cmap="Blues", aspect="auto")
    for (i, j), v in np.ndenumerate(counts):
        if v:
            ax.text(
                j,
                i,
                f"{int(v)}",
                ha="center",
                va="center",
                color="white" if v > counts.max() / 2 else "black",
            )
    ax.set_xticks(range(len(conf.labels)), conf.labels, rotation=30, ha="right")
    ax.set_yticks(range(len(conf.counts)), conf.labels[: len(conf.counts)])
    ax.set_xlabel("answer")
    ax.set_ylabel(f"reference ({conf.reference})")
    ax.set_title(title, fontsize=10)
    return _png(fig)


def latency_png(result: EvalResult) -> str | None:
    """Per-request latency distribution of each model that has timings (box + points)."""
    models = [m for m in _models(result) if m.timing.latency_ms]
    if not models:
        return None
    fig = _figure(7.0, 1.2 + 0.6 * len(models))
    ax = fig.add_subplot()
    data = [m.timing.latency_ms for m in models]
    ax.boxplot(
        data, orientation="horizontal", tick_labels=[m.name for m in models], showfliers=False
    )
    colors = _palette(result)
    for i, (m, lat) in enumerate(zip(models, data, strict=True), 1):
        ax.scatter(lat, [i] * len(lat), s=8, alpha=0.5, color=colors[m.name])
    ax.set_xlabel("latency per request (ms)")
    ax.set_xlim(left=0)
    return _png(fig)


def _hbar(
    result: EvalResult, models: Sequence[ModelEval], values: Sequence[float], xlabel: str
) -> str:
    colors = _palette(result)
    labels = [m.name for m in models]
    fig = _figure(6.5, 1.0 + 0.45 * len(labels))
    ax = fig.add_subplot()
    bars = ax.barh(labels, values, color=[colors[n] for n in labels])
    ax.bar_label(bars, labels=[f"{v:,.4g}" for v in values], padding=3, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_xlim(0, max(max(values) * 1.25, 1e-9))
    return _png(fig)


def cost_png(result: EvalResult) -> str | None:
    """Nothing to compare when no model has a known, non-zero price."""
    priced = [m for m in _models(result) if m.usd_per_1k_requests is not None]
    values = [float(m.usd_per_1k_requests or 0) for m in priced]
    if not any(values):
        return None
    return _hbar(result, priced, values, "USD per 1,000 requests")


def prompt_tokens_png(result: EvalResult) -> str | None:
    have = [m for m in _models(result) if m.prompt_tokens_per_request is not None]
    if not have:
        return None
    values = [m.prompt_tokens_per_request or 0.0 for m in have]
    return _hbar(result, have, values, "prompt tokens per request")


def training_curves_png(history: Sequence[Mapping[str, Any]]) -> str | None:
    """Loss curves from a ``transformers`` ``log_history`` (entries with ``step`` and any
    numeric ``*loss*`` key, e.g. ``loss``, ``eval_loss``, ``kd_loss``)."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for entry in history:
        step = entry.get("step")
        if not isinstance(step, int | float):
            continue
        for key, value in entry.items():
            if "loss" in key and isinstance(value, int | float) and not isinstance(value, bool):
                xs, ys = series.setdefault(key, ([], []))
                xs.append(float(step))
                ys.append(float(value))
    series = {k: v for k, v in series.items() if not k.startswith("train_")}
    if not series:
        return None
    fig = _figure(7.0, 3.2)
    ax = fig.add_subplot()
    for i, (key, (xs, ys)) in enumerate(sorted(series.items())):
        ax.plot(
            xs,
            ys,
            marker="o" if len(xs) < 30 else None,
            ms=3,
            label=key,
            color=_COLORS[i % len(_COLORS)],
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    return _png(fig)
