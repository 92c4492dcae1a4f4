"""kill -9 at seeded random points of harvest and training; then resume.

After every kill: the SQLite journal passes ``PRAGMA integrity_check``, every checkpoint
with a trainer state loads. The journal is the one durable copy of the answers (the dataset
is written once, from it, so there is no dataset write to kill mid-way). After the last
resume: every prompt exactly once (journal and harvested records), the provider saw at most
one extra send per request that was in flight at a kill (never more), and the summary
reports the in-flight requests it found.

Default run: 2-3 kill points per target; ``-m slow``: 10 each.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from rel_helpers import (
    FAULT_MODEL,
    HERE,
    cli,
    cli_env,
    integrity,
    journal_counts,
    run_end_summaries,
    save_tiny_llama,
    write_run,
)

from apidistill.harvest import JournalStore
from apidistill.harvest.engine import claim_ahead_for
from apidistill.records import Message, Record
from apidistill.testing.fault_server import request_digest

CHILDREN = HERE / "children"


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)


# --------------------------------------------------------------------------- (a) harvest


def _harvest_kills(fault, tmp_path: Path, kills: int, seed: int, n: int = 300) -> None:
    concurrency = 16
    srv = fault(latency_ms=40, jitter_ms=60)
    run = write_run(tmp_path, base_url=srv.base_url, n_prompts=n, concurrency=concurrency)
    root = tmp_path / "runs" / "rel"
    journal = root / "journal.sqlite"
    rng = random.Random(seed)
    thresholds = sorted(rng.sample(range(10, n - 10), kills))
    in_flight: list[int] = []
    env = cli_env()
    for threshold in thresholds:
        proc = subprocess.Popen(
            cli("harvest", str(run), "--no-progress"),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Kill once past the threshold *and* after this process sent something itself: by
        # then it has recovered the previous crash's in-flight rows, so each kill's count of
        # rows left 'sent' is new (a kill during start-up would count the same rows twice).
        first = srv.stats()["received"] + 1
        deadline = time.monotonic() + 120
        while proc.poll() is None and srv.stats()["received"] < max(threshold, first):
            assert time.monotonic() < deadline, "harvest made no progress"
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))  # land anywhere: mid-send, mid-journal, mid-write
        assert proc.poll() is None, "harvest ended before its kill point"
        _kill(proc)
        assert integrity(journal) == ["ok"]
        counts = journal_counts(journal)
        sent = counts.get("sent", 0)
        assert sent <= concurrency + claim_ahead_for(concurrency), counts  # in flight + waiting
        in_flight.append(sent)
    final = subprocess.run(
        cli("harvest", str(run), "--no-progress"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert final.returncode == 0, final.stderr[-3000:]
    assert integrity(journal) == ["ok"]

    # journal: every prompt once, done; each crash's in-flight sends counted as unknown
    store = JournalStore(journal, readonly=True)
    try:
        rows = list(store.rows())
    finally:
        store.close()
    assert len(rows) == n and {r.state for r in rows} == {"done"}
    assert sorted(r.prompt_id for r in rows) == sorted(f"t{i}" for i in range(n))
    assert sum(r.unknown_sends for r in rows) == sum(in_flight)

    # the provider's side: re-sends only of in-flight requests, each at most once per crash
    stats = srv.stats()
    received = Counter({d: c["received"] for d, c in stats["digests"].items()})
    assert len(received) == n
    duplicates = sum(v - 1 for v in received.values())
    assert duplicates <= sum(in_flight), (duplicates, in_flight)
    for r in rows:  # a request is re-sent at most once per crash that found it in flight
        text = f"ticket {r.prompt_id[1:]}: order {1000 + int(r.prompt_id[1:])} is late"
        body = {"model": FAULT_MODEL, "messages": [{"role": "user", "content": text}]}
        c = stats["digests"][request_digest(body)]
        assert c["received"] <= 1 + r.unknown_sends, (r.prompt_id, c["received"])

    # the summary of the finishing run reports what the last crash left in flight
    summary = run_end_summaries(journal)[-1]
    assert summary["crashed_found"] == in_flight[-1]
    # ...and the totals the journal holds over every crash (issue 19)
    assert summary["crashed_total"] == sum(in_flight)
    assert summary["resent"] <= in_flight[-1]
    assert summary["cached"] + summary["done"] == n

    # the harvested answers, read from the journal: every prompt exactly once, and no
    # second copy of them (no record store, no write-ahead files) in the run folder
    assert not (root / "harvest").exists() and not list(root.rglob("*.wal"))
    from apidistill.config import load_config
    from apidistill.pipeline.stages import RunContext, harvested_records

    ids = Counter(
        r.id for r in harvested_records(RunContext.from_config(load_config(run), progress=False))
    )
    assert ids == Counter(f"t{i}" for i in range(n)), ids.most_common(3)


def test_harvest_kill9_resumes(fault, tmp_path: Path) -> None:
    _harvest_kills(fault, tmp_path, kills=2, seed=1)


@pytest.mark.slow
def test_harvest_kill9_ten_points(fault, tmp_path: Path) -> None:
    _harvest_kills(fault, tmp_path, kills=10, seed=2)


# --------------------------------------------------------------------------- (c) training


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny_student")
    model = save_tiny_llama(root / "model")
    recs = root / "records.jsonl"
    with recs.open("w", encoding="utf-8") as fh:
        for i in range(16):
            rec = Record(
                id=f"r{i}",
                messages=[Message(role="user", content=f"where is order {i}?")],
                completion=f"order {i} ships today",
            )
            fh.write(rec.model_dump_json() + "\n")
    return model, recs


def _latest_step(ckpts: Path) -> int:
    steps = [
        int(p.name.rsplit("-", 1)[1])
        for p in ckpts.glob("checkpoint-*")
        if (p / "trainer_state.json").is_file()
    ]
    return max(steps, default=0)


def _check_checkpoints(ckpts: Path, model_dir: Path) -> None:
    """Every checkpoint the resume could pick parses and its adapter weights load."""
    from safetensors.torch import load_file

    for p in ckpts.glob("checkpoint-*"):
        state = p / "trainer_state.json"
        if not state.is_file():
            continue
        try:
            json.loads(state.read_text())
        except ValueError:
            continue  # cut mid-write: the resume must skip it (tested below)
        weights = p / "adapter_model.safetensors"
        assert weights.is_file(), p
        tensors = load_file(weights)
        assert tensors and all(t.isfinite().all() for t in tensors.values())


def _train_kills(tiny_student, tmp_path: Path, kills: int, seed: int, max_steps: int) -> None:
    model_dir, recs = tiny_student
    out = tmp_path / "train"
    rng = random.Random(seed)
    targets = sorted(rng.sample(range(1, max_steps), kills))
    cmd = [
        sys.executable,
        str(CHILDREN / "train_child.py"),
        str(model_dir),
        str(recs),
        str(out),
        str(max_steps),
    ]
    env = cli_env()
    for target in targets:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 240
        while proc.poll() is None and _latest_step(out / "checkpoints") < target:
            assert time.monotonic() < deadline, "training made no progress"
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.25))  # mid-step or mid-save (steps take ≥ 0.3 s)
        assert proc.poll() is None, "training finished before its kill point"
        _kill(proc)
        assert proc.stdout is not None
        proc.stdout.close()
        _check_checkpoints(out / "checkpoints", model_dir)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"steps": max_steps}
    result = json.loads((out / "train_result.json").read_text())
    logged = [e["step"] for e in result["log_history"] if "loss" in e]
    assert logged == list(range(1, max_steps + 1)), logged  # one loss per step, none twice

    from apidistill.model_loading import load_model

    student = load_model(str(out / "adapter"))
    assert sum(p.numel() for p in student.parameters()) > 0


def test_training_kill9_resumes(tiny_student, tmp_path: Path) -> None:
    _train_kills(tiny_student, tmp_path, kills=2, seed=5, max_steps=8)


@pytest.mark.slow
def test_training_kill9_ten_points(tiny_student, tmp_path: Path) -> None:
    _train_kills(tiny_student, tmp_path, kills=10, seed=6, max_steps=12)


def test_checkpoint_cut_while_saving_its_state_is_skipped(tiny_student, tmp_path: Path) -> None:
    """A kill between creating trainer_state.json and writing it leaves an empty file in the
    newest checkpoint: resuming must fall back to the previous checkpoint, not crash."""
    from apidistill.train.api import _latest_checkpoint

    ckpts = tmp_path / "checkpoints"
    for step, text in ((3, json.dumps({"global_step": 3})), (4, "")):
        d = ckpts / f"checkpoint-{step}"
        d.mkdir(parents=True)
        (d / "trainer_state.json").write_text(text)
    assert _latest_checkpoint(ckpts) == ckpts / "checkpoint-3"
