"""Live view: ``/stats`` JSON, ``/metrics`` in the Prometheus text format (parsed with the
official client's parser), and the page at ``/`` rendered in headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx2
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.proxy.conftest import CLIENT_KEY, proxy_settings

MESSAGES = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def busy_proxy(teacher, start_proxy, tmp_path):  # type: ignore[no-untyped-def]
    proxy = start_proxy(proxy_settings(teacher, tmp_path))
    oa = openai.OpenAI(base_url=proxy.root + "/r/triage/v1", api_key=CLIENT_KEY, max_retries=0)
    for _ in range(5):
        oa.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5)
    with pytest.raises(openai.NotFoundError):
        oa.chat.completions.create(model="missing-model", messages=MESSAGES)
    return proxy


def test_stats_and_metrics_per_route(busy_proxy) -> None:  # type: ignore[no-untyped-def]
    stats = httpx2.get(busy_proxy.root + "/stats").json()
    route = stats["routes"]["triage"]
    assert route["requests"] == 6 and route["captured"] == 5 and route["upstream_errors"] == 1
    lat = route["latency_ms"]
    assert lat["window"] == 6 and 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
    r = httpx2.get(busy_proxy.root + "/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}  # fmt: skip
    assert samples[("apidistill_proxy_requests_total", (("route", "triage"),))] == 6
    assert samples[("apidistill_proxy_captured_total", (("route", "triage"),))] == 5
    assert samples[("apidistill_proxy_spend_usd_total", (("route", "triage"),))] > 0
    assert families["apidistill_proxy_latency_seconds"].type == "summary"
    assert (
        "apidistill_proxy_latency_seconds",
        (("quantile", "0.99"), ("route", "triage")),
    ) in samples


def test_live_page_renders_in_headless_chromium(busy_proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip(
            "chromium is not installed (.ci/run installs it): the live page is not rendered"
        )
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000"]  # fmt: skip
    dom = subprocess.run(
        [exe, *flags, "--dump-dom", busy_proxy.root + "/"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    assert "teacher: openai / gpt-4o-mini" in dom  # filled in by the page's script from /stats
    assert '<tr class="route"><td>triage</td><td>6</td><td>5</td><td>1</td>' in dom
