"""Distiller returns typed results: the objects a notebook inspects, not dicts or ``Any``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from apidistill import (
    DatasetResult,
    Decision,
    Distiller,
    HarvestOutcome,
    HarvestSummary,
    load_config,
)
from apidistill.testing.fault_server import FaultServerProcess


def _run_file(folder: Path, base_url: str) -> Path:
    rows = [{"id": f"t{i:02d}", "text": f"ticket {i}: order {1000 + i} is late"} for i in range(10)]
    (folder / "prompts.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
    )
    data: dict[str, Any] = {
        "name": "sdk-results",
        "run_dir": str(folder / "run"),
        "teacher": {
            "provider": "openai_compatible",
            "model": "fault-model",
            "base_url": base_url,
            "price": {"input_per_mtok": 1, "output_per_mtok": 2},
        },
        "prompts": {"path": "prompts.jsonl", "id_field": "id"},
        "policy": {"use": "internal", "acknowledge_unknown": "sdk test: loopback fake"},
        "budget": {"usd": 10},
        "harvest": {"concurrency": 4, "max_tokens": 8, "timeout_s": 10, "max_retries": 1},
        "dataset": {"splits": {"train": 0.7, "validation": 0.0, "test": 0.3, "stratify_by": None}},
    }
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_policy_harvest_and_dataset_return_typed_results(tmp_path: Path) -> None:
    with FaultServerProcess(latency_ms=1) as srv:
        d = Distiller(load_config(_run_file(tmp_path, srv.base_url)), progress=False)
        decision = d.check_policy()
        outcome = d.harvest()
    assert isinstance(decision, Decision) and decision.permits
    assert isinstance(outcome, HarvestOutcome) and outcome.records == 10 and outcome.failed == 0
    assert isinstance(outcome.summary, HarvestSummary)
    assert outcome.summary.spent_usd > 0  # the run file's price, applied by the engine

    dataset = d.build_dataset()
    assert isinstance(dataset, DatasetResult)
    assert (dataset.harvested, dataset.kept) == (10, 10)
    assert dataset.splits == {"train": 7, "validation": 0, "test": 3}
    assert dataset.folder == d.ctx.layout.dataset and (dataset.folder / "README.md").exists()
