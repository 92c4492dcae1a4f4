"""benchmarks/teacher_harvest_backends.py runs the demo's harvest on both serving backends and
reports a ratio that follows its own measurements (issue #23 item 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_both_backends_harvest_with_top20_and_the_ratio_is_the_measured_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("llama_cpp")
    monkeypatch.setenv("APIDISTILL_BENCH_OUT", str(tmp_path))
    from benchmarks import teacher_harvest_backends as thb

    doc = thb.main(["--quick", "--tickets", "2", "--threads", "1"])
    row = (
        (tmp_path / "RESULTS.md").read_text().splitlines()[-1]
    )  # beside the JSON, not the real one
    assert row.startswith("| ") and f"{doc['ratio_llamacpp_vs_transformers']}×" in row
    saved = json.loads((tmp_path / "teacher_harvest_backends.json").read_text())
    assert saved["arms"] == doc["arms"] and saved["settings"]["tickets"] == 2
    arms = doc["arms"]
    for backend in ("transformers", "llamacpp"):
        assert arms[backend]["answers_per_s"] > 0
        assert arms[backend]["top20_share"] == 1.0  # the harvest needs 20 alternatives
    ratio = arms["llamacpp"]["answers_per_s"] / arms["transformers"]["answers_per_s"]
    assert doc["ratio_llamacpp_vs_transformers"] == pytest.approx(ratio, abs=1e-3)
    assert doc["goal_met"] is (doc["ratio_llamacpp_vs_transformers"] >= 1.0)
    md = (tmp_path / "teacher_harvest_backends.md").read_text()
    assert ("goal ≥ 1.0: met" in md) is doc["goal_met"]
    # same prompts on both: the agreement is over all of them (the journal keys differ, as the
    # teacher's address is part of them; answers are matched on the request)
    assert 0.0 <= doc["greedy_agreement"] <= 1.0
    assert doc["answers_compared"] == 2
