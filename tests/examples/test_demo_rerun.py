"""The demo's run file, twice on the same run folder: the second run sends no teacher request.

Scaled down to a few tickets and two training steps, stopped after training (the second run
must also find the finished training run instead of refusing its checkpoints); the teacher really is `apidistill serve` on the embedded model, harvested over
HTTP with logprobs, as in `apidistill demo`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apidistill.config import SplitConfig, load_config
from apidistill.pipeline.run import run_pipeline
from apidistill.resources import demo_run_file

TICKETS = 4


def test_second_demo_run_reuses_the_harvest_and_starts_no_teacher(tmp_path, monkeypatch):
    cfg = load_config(demo_run_file())
    cfg.run_dir = str(tmp_path / "run")
    cfg.prompts.limit = TICKETS
    cfg.dataset.splits = SplitConfig(train=0.5, test=0.5, stratify_by=None)
    cfg.training.max_steps = 2

    run_pipeline(cfg, progress=False, stop_after="train")
    run = Path(cfg.run_dir)
    first = json.loads((run / "harvest_summary.json").read_text())
    assert first["sends"] == TICKETS and first["done"] == TICKETS and first["failed"] == {}

    import apidistill.serve.launcher as launcher

    def no_teacher(*args, **kwargs):
        raise AssertionError("the second run started the teacher server")

    monkeypatch.setattr(launcher, "launch_server", no_teacher)
    trained = json.loads((run / "train" / "train_result.json").read_text())
    assert trained["steps"] == 2
    run_pipeline(cfg, progress=False, stop_after="train")
    second = json.loads((run / "harvest_summary.json").read_text())
    assert second["sends"] == 0 and second["cached"] == TICKETS, second
    assert second["spent_usd"] == "0" and second["resent"] == 0
    again = json.loads((run / "train" / "train_result.json").read_text())
    assert again["train_seconds"] == trained["train_seconds"]  # the finished run, not a new one


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
