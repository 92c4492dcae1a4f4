"""A run folder's state is never silently thrown away, mixed or re-bought (issue 19, item 4).

The CLI runs as a user runs it (``python -m apidistill`` in a child process) against the
fault server, whose own counters say what was sent: a deleted journal next to harvested
records is refused (not re-bought) until ``--fresh`` asks for it, and ``--fresh`` moves the
old state aside instead of deleting it; ``run_dir: .`` never deletes a user's
``harvest/notes.txt``; two run files sharing a run folder are refused; a journal copied from
another run is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from apidistill.config import load_config
from apidistill.errors import ConfigError
from apidistill.pipeline.layout import RunLayout
from apidistill.pipeline.state import guard_run_state

N = 12


def write_run(folder: Path, base_url: str, *, name: str = "state", run_dir: str = "run",
              tag: str = "t") -> Path:  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    prompts = folder / f"prompts-{name}.jsonl"
    with prompts.open("w", encoding="utf-8") as fh:
        for i in range(N):
            fh.write(json.dumps({"id": f"{tag}{i}", "text": f"{tag} ticket {i}: late"}) + "\n")
    run = folder / f"{name}.yaml"
    run.write_text(
        f"name: {name}\n"
        f"run_dir: '{run_dir}'\n"
        "teacher:\n"
        "  provider: openai_compatible\n"
        "  model: fault-model\n"
        f"  base_url: {base_url}\n"
        "  price: {input_per_mtok: 1, output_per_mtok: 2}\n"
        f"prompts: {{path: {prompts.name}, id_field: id}}\n"
        "policy: {use: internal, acknowledge_unknown: 'state test: loopback fake'}\n"
        "budget: {usd: 5}\n"
        "harvest: {concurrency: 4, max_tokens: 8, timeout_s: 10, max_retries: 2}\n",
        encoding="utf-8",
    )
    return run


def harvest(run: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "apidistill", "harvest", str(run), "--no-progress", *flags],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_deleted_journal_is_refused_until_fresh_which_moves_state_aside(fault, tmp_path):
    srv = fault(latency_ms=1)
    run = write_run(tmp_path, srv.base_url)
    root = tmp_path / "run"
    assert harvest(run).returncode == 0
    assert srv.stats()["received"] == N
    identity = json.loads((root / "run.json").read_text())
    assert identity["name"] == "state" and identity["config"] == "../state.yaml"

    (root / "journal.sqlite").unlink()  # deleted by mistake: the index of its answers remains
    refused = harvest(run)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "journal is missing" in refused.stderr and "--fresh" in refused.stderr
    assert srv.stats()["received"] == N  # nothing re-bought

    # an empty journal (re-created by hand or by a tool) is refused the same way
    from apidistill.storage.journal import JournalStore

    JournalStore(root / "journal.sqlite").close()
    empty = harvest(run)
    assert empty.returncode == 2 and "journal is empty" in empty.stderr
    assert srv.stats()["received"] == N

    fresh = harvest(run, "--fresh")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert srv.stats()["received"] == 2 * N  # bought again, because the user asked
    [previous] = [p for p in root.iterdir() if p.name.startswith("previous-")]
    assert (previous / "answers.jsonl").is_file()  # moved, not deleted
    assert (previous / "run.json").is_file() and (previous / "journal.sqlite").is_file()
    assert (root / "journal.sqlite").is_file() and (root / "answers.jsonl").is_file()


def test_run_dir_dot_never_deletes_a_users_harvest_folder(fault, tmp_path):
    srv = fault(latency_ms=1)
    run = write_run(tmp_path, srv.base_url, run_dir=".")
    notes = tmp_path / "harvest" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("my notes\n", encoding="utf-8")
    done = harvest(run)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "did not write (notes.txt)" in done.stderr
    assert notes.read_text(encoding="utf-8") == "my notes\n"
    assert srv.stats()["received"] == 0  # refused before anything was sent


def test_two_run_files_sharing_a_run_dir_are_refused(fault, tmp_path):
    srv = fault(latency_ms=1)
    first = write_run(tmp_path, srv.base_url, name="alpha", run_dir="shared", tag="a")
    second = write_run(tmp_path, srv.base_url, name="beta", run_dir="shared", tag="b")
    assert harvest(first).returncode == 0
    refused = harvest(second)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "belongs to run 'alpha'" in refused.stderr and "run_dir" in refused.stderr
    assert srv.stats()["received"] == N  # beta sent nothing

    # alpha's journal copied into a folder of its own for beta: refused, it is alpha's
    other = tmp_path / "beta-own"
    other.mkdir()
    shutil.copy(tmp_path / "shared" / "journal.sqlite", other / "journal.sqlite")
    cfg = load_config(second)
    with pytest.raises(ConfigError, match="belongs to another run"):
        guard_run_state(RunLayout(other), cfg)

    # the same run file again is its own run: fine
    again = harvest(first)
    assert again.returncode == 0 and srv.stats()["received"] == N
