"""Run-file settings that used to do nothing now change what the run writes (issue 18 item 5).

- ``harvest.n > 1``: every paid sample reaches the dataset (the default prompt dedupe kept
  one of n: 30 records became 10);
- ``dataset.top_k_store``: the dataset keeps that many alternatives per position;
- the sequence-KD fallback of ``harvest.on_missing_logprobs`` is written into the run folder,
  so ``apidistill harvest`` and a later ``apidistill train`` (a fresh process) agree.

The teacher is the loopback fault server (OpenAI chat shape, logprobs on request, no faults).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loopback_run_file import loopback_run_file

from apidistill.config import load_config
from apidistill.data.store import load_records
from apidistill.errors import ConfigError
from apidistill.pipeline.run import run_pipeline
from apidistill.pipeline.stages import RunContext, harvested_records
from apidistill.testing.fault_server import FaultServerProcess

PROMPTS = 10


@pytest.fixture(scope="module")
def teacher() -> Iterator[FaultServerProcess]:
    with FaultServerProcess() as srv:
        yield srv


def _run_file(folder: Path, base_url: str, **sections: dict[str, Any]) -> Path:
    return loopback_run_file(folder, base_url, name="settings", **sections)


def test_every_sample_of_harvest_n_reaches_the_dataset(tmp_path, teacher) -> None:
    cfg = load_config(_run_file(tmp_path, teacher.base_url, harvest={"n": 3, "temperature": 1.0}))
    out = run_pipeline(cfg, progress=False, stop_after="dataset")
    assert out.numbers["dataset"]["harvested"] == 3 * PROMPTS
    assert out.numbers["dataset"]["kept"] == 3 * PROMPTS  # was 10: one sample per prompt
    dataset = Path(cfg.run_dir) / "dataset"
    recs = load_records(dataset, split="train") + load_records(dataset, split="test")
    by_prompt: dict[str, list[Any]] = {}
    for r in recs:
        by_prompt.setdefault(r.metadata.get("sample_of") or r.id, []).append(r)
    assert sorted(by_prompt) == [f"t{i:02d}" for i in range(PROMPTS)]
    for prompt, samples in by_prompt.items():
        assert sorted(r.id for r in samples) == [prompt, f"{prompt}-s1", f"{prompt}-s2"]
        assert len({r.split for r in samples}) == 1  # one prompt's samples never straddle
        assert len({r.metadata["request_key"] for r in samples}) == 3  # three paid answers


@pytest.mark.parametrize("keep", [3, 20])
def test_top_k_store_sets_the_alternatives_the_dataset_keeps(tmp_path, teacher, keep) -> None:
    run = _run_file(
        tmp_path,
        teacher.base_url,
        harvest={"logprobs": True, "top_logprobs": 20},
        dataset={"top_k_store": keep},
        training={"method": "sequence_kd"},
    )
    cfg = load_config(run)
    run_pipeline(cfg, progress=False, stop_after="dataset")
    harvested = harvested_records(RunContext.from_config(cfg))  # from the journal
    assert {len(p.top) for r in harvested for p in r.logprobs} == {20}  # paid for 20
    stored = load_records(Path(cfg.run_dir) / "dataset", split="train")
    assert stored and {len(p.top) for r in stored for p in r.logprobs} == {keep}
    first = next(r for r in harvested if r.id == stored[0].id)
    want = sorted(first.logprobs[0].top, key=lambda a: -a.logprob)[:keep]
    assert [a.token for a in stored[0].logprobs[0].top] == [a.token for a in want]


def test_kd_top_k_above_top_k_store_is_refused(tmp_path) -> None:
    run = _run_file(
        tmp_path,
        "http://127.0.0.1:9/v1",
        harvest={"logprobs": True, "top_logprobs": 20},
        dataset={"top_k_store": 5},
        training={"method": "logprob_kd", "kd": {"top_k": 20}},
    )
    with pytest.raises(ConfigError, match=r"kd.top_k \(20\).*top_k_store: 5"):
        load_config(run)


def test_sequence_kd_fallback_is_written_and_a_later_train_process_follows_it(
    tmp_path, teacher, monkeypatch
) -> None:
    """TGI serves at most top-5 alternatives; asking top-20 for logprob KD with
    ``on_missing_logprobs: sequence_kd`` falls back. The harvest runs in its own process;
    ``apidistill train`` afterwards (this process, which never saw the harvest) trains with
    sequence KD, as ``apidistill run`` in one process does."""
    run = _run_file(
        tmp_path,
        teacher.base_url,
        teacher={"profile": "tgi"},
        harvest={"logprobs": True, "top_logprobs": 20, "on_missing_logprobs": "sequence_kd"},
        training={"method": "logprob_kd"},
    )
    done = subprocess.run(
        [sys.executable, "-m", "apidistill", "harvest", str(run), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    assert "training with sequence KD" in done.stdout + done.stderr
    folder = Path(load_config(run).run_dir)
    fallback = json.loads((folder / "logprob_fallback.json").read_text(encoding="utf-8"))
    assert fallback["configured"] == "logprob_kd" and fallback["method"] == "sequence_kd"
    assert "top-5" in fallback["reason"]
    assert all(
        r.logprobs is None for r in harvested_records(RunContext.from_config(load_config(run)))
    )

    from apidistill.pipeline.stages import dataset_stage

    dataset_stage(RunContext.from_config(load_config(run), progress=False))
    seen: dict[str, Any] = {}

    def fake_train_student(train, val, *, training, **kw):
        seen["method"] = training.method
        raise SystemExit(0)

    import apidistill.train.api as train_api

    monkeypatch.setattr(train_api, "train_student", fake_train_student)
    import apidistill.cli as cli

    monkeypatch.setattr(sys, "argv", ["apidistill", "train", str(run)])
    with pytest.raises(SystemExit):
        cli.main()
    assert seen == {"method": "sequence_kd"}
    assert load_config(run).training.method == "logprob_kd"  # the run file is not rewritten


def test_a_harvest_that_gets_logprobs_removes_its_old_fallback(tmp_path, teacher) -> None:
    """The fallback file records this run's harvest: after the teacher (here the profile)
    is fixed and the harvest re-run, training is logprob KD again."""
    sections = {
        "harvest": {"logprobs": True, "top_logprobs": 20, "on_missing_logprobs": "sequence_kd"},
        "training": {"method": "logprob_kd"},
    }
    cfg = load_config(_run_file(tmp_path, teacher.base_url, teacher={"profile": "tgi"}, **sections))
    run_pipeline(cfg, progress=False, stop_after="harvest")
    marker = Path(cfg.run_dir) / "logprob_fallback.json"
    assert marker.is_file()
    cfg = load_config(_run_file(tmp_path, teacher.base_url, **sections))  # generic: top-20
    run_pipeline(cfg, progress=False, stop_after="harvest")
    assert not marker.exists()
    from apidistill.pipeline.stages import effective_training

    assert effective_training(RunContext.from_config(cfg, progress=False)).method == "logprob_kd"
