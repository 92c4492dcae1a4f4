"""Live counters per route: requests, captures, spend, errors and latency percentiles.

Kept in memory by the one event loop that serves requests (no locks needed); ``/stats``
shows them as JSON and ``/metrics`` in the Prometheus text format.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from apidistill.proxy.shadow import ShadowStats

__all__ = ["RouteStats", "Stats"]

_LATENCY_WINDOW = 10_000  # the latest latencies kept per route for percentiles


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


@dataclass
class RouteStats:
    requests: int = 0
    captured: int = 0
    not_captured: int = 0
    upstream_errors: int = 0
    refused_budget: int = 0
    answered_by_student: int = 0
    student_fallbacks: int = 0
    spend_usd: Decimal = Decimal(0)
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCY_WINDOW))
    shadow: ShadowStats = field(default_factory=ShadowStats)

    def view(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {
            "requests": self.requests,
            "captured": self.captured,
            "not_captured": self.not_captured,
            "upstream_errors": self.upstream_errors,
            "refused_budget": self.refused_budget,
            "answered_by_student": self.answered_by_student,
            "student_fallbacks": self.student_fallbacks,
            "spend_usd": str(self.spend_usd),
            "shadow": self.shadow.view(),
            "latency_ms": {
                "p50": _percentile(lat, 0.50),
                "p95": _percentile(lat, 0.95),
                "p99": _percentile(lat, 0.99),
                "window": len(lat),
            },
        }


class Stats:
    def __init__(self) -> None:
        self.routes: dict[str, RouteStats] = {}
        self.capture_errors = 0

    def route(self, name: str) -> RouteStats:
        got = self.routes.get(name)
        if got is None:
            got = self.routes[name] = RouteStats()
        return got

    def prometheus(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        lines: list[str] = []

        def family(name: str, kind: str, help_: str, values: list[tuple[str, object]]) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{labels} {value}" for labels, value in values)

        routes = sorted(self.routes.items())
        for attr, help_ in (
            ("requests", "Requests received."),
            ("captured", "Exchanges written to the capture store."),
            ("upstream_errors", "Requests the teacher answered with an error or not at all."),
            ("refused_budget", "Requests refused at the budget cap."),
        ):
            family(
                f"apidistill_proxy_{attr}_total",
                "counter",
                help_,
                [(f'{{route="{r}"}}', getattr(s, attr)) for r, s in routes],
            )
        family(
            "apidistill_proxy_spend_usd_total",
            "counter",
            "Upstream spend in USD.",
            [(f'{{route="{r}"}}', float(s.spend_usd)) for r, s in routes],
        )
        family(
            "apidistill_proxy_shadow_requests_total",
            "counter",
            "Requests also sent to the student (shadow mode).",
            [(f'{{route="{r}"}}', s.shadow.requests) for r, s in routes],
        )
        family(
            "apidistill_proxy_shadow_agreement",
            "gauge",
            "Share of shadowed answers where the student agrees with the teacher (exact match).",
            [(f'{{route="{r}"}}', s.shadow.view()["agreement"]) for r, s in routes
             if s.shadow.view()["agreement"] is not None],
        )  # fmt: skip
        quantiles = []
        for r, s in routes:
            lat = sorted(s.latencies_ms)
            for q in (0.5, 0.95, 0.99):
                v = _percentile(lat, q)
                if v is not None:
                    quantiles.append((f'{{route="{r}",quantile="{q}"}}', v / 1000))
        family(
            "apidistill_proxy_latency_seconds",
            "summary",
            "Request latency through the proxy (recent window).",
            quantiles,
        )
        family("apidistill_proxy_capture_errors_total", "counter",
               "Captures that could not be written.", [("", self.capture_errors)])  # fmt: skip
        return "\n".join(lines) + "\n"
