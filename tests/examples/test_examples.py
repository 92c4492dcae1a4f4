"""Every example runs, against loopback servers only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from apidistill.testing.fault_server import FaultServerProcess

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    p = tmp_path / "prompts.jsonl"
    p.write_text(
        "".join(json.dumps({"id": f"p{i}", "text": f"Ticket {i}: order #{1000 + i}"}) + "\n"
                for i in range(20)),
        encoding="utf-8",
    )  # fmt: skip
    return p


def _run_batch_script(tmp_path: Path, server: FaultServerProcess, prompts: Path, *extra: str):
    env = {
        **os.environ,
        "OPENAI_BASE_URL": server.base_url,  # the "OpenAI" API is a loopback server here
        "OPENAI_API_KEY": "sk-test-examples-0123456789",
    }
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / "async_batch_harvest.py"), str(prompts),
         str(tmp_path / "out.jsonl"), "--journal", str(tmp_path / "journal.sqlite"), *extra],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip


def test_async_batch_script_harvests_with_budget_and_resumes_from_cache(tmp_path, prompts):
    with FaultServerProcess(latency_ms=5) as server:
        first = _run_batch_script(tmp_path, server, prompts, "--budget", "1.00")
        assert first.returncode == 0, first.stderr
        lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
        assert sorted(x["id"] for x in lines) == sorted(f"p{i}" for i in range(20))
        assert all(x["ok"] for x in lines)
        # priced from genai-prices (gpt-4.1-mini), never a silent 0
        assert all(x["cost_usd"] not in (None, "None") for x in lines)
        assert "terms: allow" in first.stdout
        assert server.stats()["answered"] == 20

        again = _run_batch_script(tmp_path, server, prompts, "--budget", "1.00")
        assert again.returncode == 0, again.stderr
        assert server.stats()["received"] == 20  # the re-run sent nothing
        assert "from cache 20" in again.stdout


def test_denied_use_sends_zero_requests(tmp_path, prompts):
    with FaultServerProcess(latency_ms=5) as server:
        out = _run_batch_script(tmp_path, server, prompts, "--use", "competing")
        assert out.returncode != 0
        assert "PolicyDenied" in out.stderr and "Services Agreement" in out.stderr
        assert server.stats()["received"] == 0


@pytest.mark.slow
def test_sdk_quickstart_runs_a_scaled_down_demo_end_to_end(tmp_path):
    """The scaled-down demo: serve the teacher, harvest, dataset, LoRA, eval, report."""
    env = {**os.environ, "APIDISTILL_PROGRESS": "0"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "sdk_quickstart.py"), "16", "3"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    run = ROOT / "runs" / "sdk-quickstart"
    assert (run / "report" / "report.html").is_file()
    assert (run / "train" / "adapter" / "adapter_config.json").is_file()
    summary = json.loads((run / "harvest_summary.json").read_text())
    assert summary["failed"] == {}
    # the agreement metric printed is a MetricValue with a CI
    assert "value=" in out.stdout and "low=" in out.stdout
