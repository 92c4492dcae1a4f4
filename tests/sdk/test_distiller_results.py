"""Distiller returns typed results: the objects a notebook inspects, not dicts or ``Any``."""

from __future__ import annotations

from pathlib import Path

from loopback_run_file import loopback_run_file

from apidistill import (
    DatasetResult,
    Decision,
    Distiller,
    HarvestOutcome,
    HarvestSummary,
    load_config,
)
from apidistill.testing.fault_server import FaultServerProcess


def test_policy_harvest_and_dataset_return_typed_results(tmp_path: Path) -> None:
    with FaultServerProcess(latency_ms=1) as srv:
        d = Distiller(
            load_config(loopback_run_file(tmp_path, srv.base_url, name="sdk-results")),
            progress=False,
        )
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
