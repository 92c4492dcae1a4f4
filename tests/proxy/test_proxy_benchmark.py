"""The overhead benchmark runs end to end at a tiny size and writes its JSON and markdown
(the numbers themselves are for benchmarks/, never asserted here)."""

from __future__ import annotations

import json
import os
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
    assert {"benchmark", "mode", "machine", "versions"} <= doc.keys()
    for arm in ("direct", "capture_on", "capture_off"):
        for c in ("1", "64", "256"):
            assert doc["results"][arm][c]["errors"] == 0
            assert doc["results"][arm][c]["requests"] > 0
    assert set(doc["overhead"]) == {"capture_on", "capture_off"}
    assert "throughput × direct" in (tmp_path / "proxy_overhead.md").read_text()
