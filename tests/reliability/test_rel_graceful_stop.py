"""Ctrl-C and SIGTERM during ``apidistill harvest``: stop sending, drain, journal, exit clean.

The guarantee from the "never pay twice" table: a graceful stop leaves no request in flight
without its answer journaled, so the resume re-sends nothing (checked on the server's own
counters), and the interrupted run says it stopped and drained.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from rel_helpers import cli, cli_env, integrity, journal_counts, run_end_summaries, write_run


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_drains_and_resume_resends_nothing(fault, tmp_path: Path, sig: int) -> None:
    n = 300
    srv = fault(latency_ms=150, jitter_ms=50)
    run = write_run(tmp_path, base_url=srv.base_url, n_prompts=n, concurrency=16)
    root = tmp_path / "runs" / "rel"
    journal = root / "journal.sqlite"
    proc = subprocess.Popen(
        cli("harvest", str(run), "--no-progress"),
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while proc.poll() is None and srv.stats()["received"] < 60:
        assert time.monotonic() < deadline, "harvest made no progress"
        time.sleep(0.02)
    assert proc.poll() is None
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)

    # exits cleanly: the interrupt status, no traceback, and it says what it saved
    assert proc.returncode == 130, (proc.returncode, out[-1500:], err[-3000:])
    shown = (out + err).replace("\n", " ")
    assert "Traceback" not in shown, shown[-3000:]
    assert "harvest interrupted" in shown and "finishing requests in flight" in shown, shown
    saved = json.loads((root / "harvest_summary.json").read_text())
    assert saved["stopped_by"] == "interrupt"

    # drained: nothing left in flight, every request the server saw has its answer journaled
    assert integrity(journal) == ["ok"]
    counts = journal_counts(journal)
    assert counts.get("sent", 0) == 0 and counts.get("unknown", 0) == 0, counts
    stats = srv.stats()
    assert counts.get("done", 0) == len(stats["digests"]) == stats["received"], (counts, stats)
    assert 0 < counts["done"] < n
    summary = run_end_summaries(journal)[-1]
    assert summary["stopped_by"] == "interrupt", summary
    assert signal.Signals(sig).name in (summary["stop_message"] or ""), summary
    assert summary["unknown_this_run"] == 0

    # resume: the rest is sent, nothing twice
    done = subprocess.run(
        cli("harvest", str(run), "--no-progress"),
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    stats = srv.stats()
    assert len(stats["digests"]) == n
    assert max(c["received"] for c in stats["digests"].values()) == 1  # 0 re-sent
    resumed = run_end_summaries(journal)[-1]
    assert resumed["resent"] == 0 and resumed["unknown_found"] == 0, resumed
    assert resumed["cached"] == counts["done"] and resumed["done"] == n - counts["done"]
    from apidistill.config import load_config
    from apidistill.pipeline.stages import RunContext, harvested_records

    ids = sorted(
        r.id for r in harvested_records(RunContext.from_config(load_config(run), progress=False))
    )
    assert ids == sorted(f"t{i}" for i in range(n))
