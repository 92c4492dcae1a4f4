"""The dataset stage builds its records from the journal, the one copy of every answer.

The harvest writes no record store of its own (no ``harvest/`` shards, no write-ahead files):
only ``answers.jsonl``, the index of which journaled answers it returned.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml
from test_spend_from_ledger import _run_file

from apidistill.config import load_config
from apidistill.data.store import load_records
from apidistill.errors import DataError
from apidistill.pipeline.run import run_pipeline
from apidistill.pipeline.stages import RunContext, dataset_stage
from apidistill.records import Completion
from apidistill.storage.journal import JournalStore
from apidistill.testing.fault_server import FaultServerProcess


def test_the_dataset_is_the_journals_answers_and_nothing_else_is_written(tmp_path: Path) -> None:
    with FaultServerProcess() as srv:
        cfg = load_config(_run_file(tmp_path, srv.base_url))
        run_pipeline(cfg, progress=False, stop_after="dataset")
    ctx = RunContext.from_config(cfg, progress=False)
    root = ctx.layout.root
    assert not (root / "harvest").exists() and not (root / "harvest.partial").exists()
    assert not list(root.rglob("*.wal"))  # no write-ahead copy anywhere
    index = [json.loads(line) for line in ctx.layout.answers.read_text().splitlines()]
    assert len(index) == 12 and all(set(e) == {"key", "sample_index", "metadata"} for e in index)

    store = JournalStore(ctx.layout.journal, readonly=True)
    stored = {
        r.key: Completion.model_validate_json(r.completion_json) for r in store.rows(state="done")
    }
    store.close()
    records = load_records(ctx.layout.dataset, split="train")
    records += load_records(ctx.layout.dataset, split="test")
    assert len(records) == 12
    for rec in records:
        answer = stored[rec.metadata["request_key"]]
        assert rec.completion == answer.text and rec.cost_usd == answer.cost_usd


def test_relabelled_prompts_label_the_answers_already_paid_for(tmp_path: Path) -> None:
    """Labels are the caller's, not part of the cache key: a re-run answers from the journal
    and the dataset carries the new labels."""
    with FaultServerProcess() as srv:
        cfg = load_config(_run_file(tmp_path, srv.base_url))
        run_pipeline(cfg, progress=False, stop_after="harvest")
        prompts = tmp_path / "prompts.jsonl"
        rows = [json.loads(line) for line in prompts.read_text().splitlines()]
        prompts.write_text("".join(json.dumps({**r, "label": "late"}) + "\n" for r in rows))
        run_yaml = tmp_path / "run.yaml"
        data = yaml.safe_load(run_yaml.read_text())
        data["prompts"]["label_field"] = "label"
        run_yaml.write_text(yaml.safe_dump(data))
        cfg = load_config(run_yaml)
        run_pipeline(cfg, progress=False, stop_after="dataset")
        assert srv.stats()["billed"] == 12  # nothing bought twice
    recs = load_records(Path(cfg.run_dir) / "dataset")
    assert recs and {r.label for r in recs} == {"late"}


def test_an_answer_missing_from_the_journal_is_named(tmp_path: Path) -> None:
    with FaultServerProcess() as srv:
        cfg = load_config(_run_file(tmp_path, srv.base_url))
        run_pipeline(cfg, progress=False, stop_after="harvest")
    ctx = RunContext.from_config(cfg, progress=False)
    with sqlite3.connect(ctx.layout.journal) as conn:  # a journal damaged by hand
        conn.execute("UPDATE requests SET state='failed' WHERE rowid = 1")
    with pytest.raises(DataError, match="not in the journal") as err:
        dataset_stage(ctx)
    assert err.value.file == str(ctx.layout.journal)
