"""The overhead benchmark runs end to end at a tiny size and writes its JSON and markdown
(the numbers themselves are for benchmarks/, never asserted here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_proxy_overhead_benchmark_writes_json_and_markdown(tmp_path: Path) -> None:
    env = {**os.environ, "APIDISTILL_BENCH_OUT": str(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.proxy_overhead", "--quick", "--requests", "32"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    doc = json.loads((tmp_path / "proxy_overhead.json").read_text())
    assert {"benchmark", "mode", "machine", "versions", "load_avg_before"} <= doc.keys()
    assert set(doc["teachers"]) == {"instant", "api_like"}
    assert doc["teachers"]["api_like"]["latency_ms"] == 300
    for t in doc["teachers"].values():
        for arm in ("direct", "capture_on", "capture_off"):
            for c in ("1", "64", "256"):
                r = t["results"][arm][c]
                assert r["errors"] == 0 and r["requests"] > 0
                if arm != "direct":  # the proxy process's CPU per request is measured
                    assert r["proxy_cpu_ms_per_request"] is not None
        assert set(t["overhead"]) == set(t["goals_at_256"]) == {"capture_on", "capture_off"}
        assert set(t["p50_overhead_1_client_ms"]) == {"capture_on", "capture_off"}
        assert "event loop" in t["proxy_runtime"]
    md = (tmp_path / "proxy_overhead.md").read_text()
    assert "throughput × direct" in md and "proxy CPU ms/req" in md
    assert "answers after 300" in md


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (.ci/run installs it)")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the isolated layout needs 2 CPUs")
def test_isolated_layout_pins_the_proxy_apart_and_loads_it_with_wrk(tmp_path: Path) -> None:
    env = {**os.environ, "APIDISTILL_BENCH_OUT": str(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.proxy_overhead", "--quick", "--layout", "isolated",
         "--duration-s", "1", "--requests", "32", "--jitter", "0.5"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    doc = json.loads((tmp_path / "proxy_overhead.json").read_text())
    layout = doc["layout"]
    cpus = sorted(os.sched_getaffinity(0))
    assert layout["name"] == "isolated" and layout["load_generator"].startswith("wrk")
    assert (
        layout["proxy_cpus"] == cpus[-1:] and layout["teacher_and_load_generator_cpus"] == cpus[:-1]
    )
    for t in doc["teachers"].values():
        for arm in ("direct", "capture_on", "capture_off"):
            for c in ("1", "64", "256"):
                r = t["results"][arm][c]
                assert r["errors"] == 0 and r["requests"] > 0
    md = (tmp_path / "proxy_overhead.md").read_text()
    assert "Layout **isolated**" in md and "± 50%" in md
