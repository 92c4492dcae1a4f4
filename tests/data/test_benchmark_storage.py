"""benchmarks/storage.py runs end to end (small synthetic input) and writes its JSON."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_storage_benchmark_small_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location(
        "storage_bench", ROOT / "benchmarks" / "storage.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    bench.main(
        [
            "--source",
            "zipf",
            "--prompts",
            "3",
            "--tokens",
            "40",
            "--out",
            str(tmp_path),
            "--no-results-md",
        ]
    )
    res = json.loads((tmp_path / "storage.json").read_text())
    assert res["tokens"] == 120 and set(res["k"]) == {"5", "20"}
    k20 = res["k"]["20"]
    for name in (
        "store_fp16_ids",
        "store_q8_ids",
        "store_fp16_bytes_vocab",
        "store_q8_bytes_vocab",
    ):
        assert k20[name]["bytes_per_token"] < k20["provider_json_bytes_per_token"]
    assert k20["store_fp16_ids"]["kl_mean"] < 1e-5
    assert k20["store_q8_ids"]["kl_mean"] < 1e-3
