"""kd_memory's report: its section and the two issue-20 targets follow the measured ratios."""

from __future__ import annotations

from pathlib import Path

import pytest


def _arm(peak: float, wall: float, cpu: float) -> dict:
    return {
        "supervised_tokens": 800,
        "padded_tokens": 1024,
        "base_mb": 600.0,
        "peak_mb": 600.0 + peak,
        "step_peak_mb": peak,
        "median_step_s": wall,
        "median_step_cpu_s": cpu,
        "chunked": True,
    }


@pytest.mark.parametrize(("kd_peak", "verdict"), [(110.0, "**met**"), (130.0, "**not met**")])
def test_kd_memory_section_and_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kd_peak: float, verdict: str
) -> None:
    monkeypatch.setenv("APIDISTILL_BENCH_OUT", str(tmp_path))
    from benchmarks import report
    from benchmarks.common import write_result
    from benchmarks.kd_memory import _ratios

    vocab = {}
    for v in ("151936", "262144"):
        arms = {
            "sequence_kd": _arm(100.0, 1.0, 1.0),
            "logprob_kd": _arm(kd_peak, 1.1, 1.1),
            "logprob_kd_unchunked": _arm(900.0, 1.3, 1.3),
            "sequence_kd_unchunked": {"arm": "sequence_kd_unchunked", "error": "exit 137"},
        }
        vocab[v] = {"arms": arms, "ratios": _ratios(arms)}
    setting = {"hidden": 64, "layers": 2, "batch": 4, "answer_max": 224, "top_k": 20,
               "lora": "r=16 all-linear", "steps": 3, "warmup": 1, "device": "cpu"}  # fmt: skip
    write_result("kd_memory", {"setting": setting, "vocab": vocab}, mode="full")
    text = report.render(tmp_path)
    lines = text.splitlines()
    peak = next(x for x in lines if x.startswith("| issue 20: logprob-KD step peak memory"))
    assert verdict in peak and f"{kd_peak / 100:.3f}" in peak
    step = next(x for x in lines if x.startswith("| issue 20: logprob-KD step ≤ 1.15×"))
    assert "**met**" in step and "1.100" in step
    assert "## 4b. Training at real vocabularies" in text
    assert "exit 137" in text  # an arm that failed says so in its row
    assert "Could not render" not in text
