"""The benchmark suite's cheap pieces, run for real at tiny sizes into a temporary folder.

What must hold: every benchmark writes its JSON with the common envelope, RESULTS.md is
regenerated from those files with a met / not met verdict per target computed from the
numbers, and a peer that cannot run (no peers venv, as in CI) is reported as "not run"
instead of silently dropping out of the ratios.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from apidistill.harvest.engine import claim_ahead_for

ROOT = Path(__file__).resolve().parents[2]
ENVELOPE = {"benchmark", "mode", "date", "machine", "versions", "seeds"}


def _run(args: list[str], out: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "APIDISTILL_BENCH_OUT": str(out),
        "APIDISTILL_PEERS_PYTHON": str(out / "no-peers-venv" / "python"),  # as in CI
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def _load(out: Path, name: str, envelope: bool = True) -> dict:
    doc = json.loads((out / f"{name}.json").read_text())
    if envelope:  # the benchmarks written on benchmarks/common.py
        assert doc.keys() >= ENVELOPE
        assert doc["machine"]["cores"] >= 1 and "load_avg_1_5_15" in doc["machine"]
    return doc


def test_peers_harvest_runs_own_arms_and_reports_missing_peers(tmp_path: Path) -> None:
    _run(
        [
            "benchmarks.peers_harvest",
            "--quick",
            "--n",
            "96",
            "--rounds",
            "1",
            "--fault-rounds",
            "0",
        ],
        tmp_path,
    )
    doc = _load(tmp_path, "peers_harvest")
    clean = doc["variants"]["clean"]
    for arm in ("apidistill", "raw_aiohttp", "raw_httpx2"):
        cell = clean["arms"][arm]
        assert cell["ok_min"] == 96, arm  # every request answered
        assert cell["duplicate_answers_max"] == 0
        assert cell["req_per_s"]["median"] > 0 and cell["cpu_s_per_1k"]["median"] > 0
    for peer in ("curator", "distilabel"):
        assert "peers venv missing" in clean["arms"][peer]["not_run"]
    assert clean["ratios"]["throughput_vs_curator"] is None
    assert 0 < clean["ratios"]["throughput_vs_fastest_raw"] < 5


@pytest.mark.slow  # ~1-2 minutes: two harvests killed and resumed
def test_resume_cost_counts_duplicates_from_the_server(tmp_path: Path) -> None:
    _run(
        ["benchmarks.resume_cost", "--quick", "--n", "160", "--arms", "apidistill",
         "apidistill_sigterm", "apidistill_store", "curator"],
        tmp_path,
    )  # fmt: skip
    doc = _load(tmp_path, "resume_cost")
    runs = {r["arm"]: r for r in doc["runs"]}
    kill9 = runs["apidistill"]
    own = kill9["own_report"]
    # kill -9: apidistill re-sends each outcome-unknown request at most once, and knows it;
    # the unknown ones are the 64 in flight plus at most claim_ahead that never left
    assert kill9["duplicate_requests"] <= 64
    assert kill9["duplicate_requests"] <= own["resent_that_may_have_been_billed"]
    assert own["resent_that_may_have_been_billed"] <= 64 + claim_ahead_for(64)
    assert own["outcome_unknown_found"] == own["resent_that_may_have_been_billed"]
    assert kill9["results_after_resume"] == 160 and kill9["never_sent"] == 0
    # with stored completions: what reached the server is recovered, nothing is paid twice
    stored = runs["apidistill_store"]
    assert stored["duplicate_requests"] == 0 and stored["results_after_resume"] == 160
    assert stored["own_report"]["recovered_from_store"] > 0
    graceful = doc["arms"]["apidistill_sigterm"]
    assert graceful["duplicate_requests"]["max"] == 0  # a drained stop re-sends nothing
    assert "peers venv missing" in doc["arms"]["curator"]["not_run"]


@pytest.mark.slow  # ~1 minute on a busy 2-core machine
def test_suite_writes_json_suite_record_and_results_md(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    _run(["benchmarks", "--quick", "--only", "storage", "--results", str(results)], tmp_path)
    suite = json.loads((tmp_path / "suite.json").read_text())
    assert suite["mode"] == "quick" and suite["benchmarks"]["storage"]["status"] == "ok"
    storage = _load(tmp_path, "storage", envelope=False)
    b20 = storage["k"]["20"]["store_fp16_ids"]["bytes_per_token"]
    text = results.read_text()
    row = next(x for x in text.splitlines() if x.startswith("| ≤ 130 B/token"))
    assert ("**met**" in row) == (b20 <= 130)
    assert "not run:" in next(x for x in text.splitlines() if "TRL SFTTrainer" in x)
    for heading in ("## Targets (issue 10)", "## Machine and versions", "## Suite run"):
        assert heading in text


@pytest.mark.parametrize("ratio, verdict", [(1.2, "**met**"), (0.8, "**not met**")])
def test_target_verdicts_follow_the_measured_ratio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ratio: float, verdict: str
) -> None:
    monkeypatch.setenv("APIDISTILL_BENCH_OUT", str(tmp_path))
    from benchmarks import report
    from benchmarks.common import spread, write_result

    def arm(rps: float, cpu: float) -> dict:
        return {"req_per_s": spread([rps]), "pct_ideal": spread([rps / 3.2]),
                "cpu_s_per_1k": spread([cpu]), "peak_rss_mb": spread([50.0]), "ok_min": 10,
                "duplicate_answers_max": 0}  # fmt: skip

    arms = {"apidistill": arm(100 * ratio, 2.0), "curator": arm(100.0, 3.0)}
    ratios = {"throughput_vs_curator": ratio, "cpu_per_request_vs_curator": 2.0 / 3.0}
    setting = {"requests": 10, "concurrency": 64, "latency_ms": 200.0, "rounds": 1,
               "fault_rounds": 0, "fault_mix": "none"}  # fmt: skip
    clean = {"arms": arms, "ratios": ratios}
    write_result("peers_harvest", {"setting": setting, "variants": {"clean": clean}}, mode="full")
    lines = report.render(tmp_path).splitlines()
    curator = next(x for x in lines if x.startswith("| harvest throughput ≥ 1.0× Curator"))
    assert verdict in curator and f"{ratio:.3f}" in curator
    cpu = next(x for x in lines if x.startswith("| CPU per request"))
    assert "**met**" in cpu
    kd = next(x for x in lines if x.startswith("| logprob KD beats"))
    assert "not run" in kd
    assert "Could not render" not in "\n".join(lines)


def test_report_only_rewrites_results_md_from_whatever_json_exists(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    _run(["benchmarks", "--report-only", "--results", str(results)], tmp_path, timeout=120)
    text = results.read_text()
    targets = [x for x in text.splitlines() if x.startswith("| ") and "not run:" in x]
    assert len(targets) >= 8  # every target, none measured: all say why
    assert text.rstrip().endswith("|---|---|---|---|---|")  # standalone appends land in a table


def test_kd_quality_verdict_needs_a_win_in_every_cell_and_a_tie_is_no_win() -> None:
    from benchmarks.kd_quality import subset, summarize

    def row(
        size: int,
        arm: str,
        kl: float,
        agree: float = 0.8,
        seed: int = 0,
        budget: str = "1 epoch",
    ) -> dict:
        return {"size": size, "seed": seed, "arm": arm, "budget": budget, "kl": kl,
                "top1_agreement": 0.9, "answer_agreement": agree, "exact_vs_gold": 0.7}  # fmt: skip

    rows = [row(64, "sequence_kd", 0.30, 0.5), row(64, "topk_tail", 0.20, 0.6),
            row(128, "sequence_kd", 0.10), row(128, "topk_tail", 0.12)]  # fmt: skip
    out = summarize(rows)
    assert out["logprob_vs_sequence"]["64/1 epoch"]["kl"]["beats"] is True
    assert out["logprob_vs_sequence"]["128/1 epoch"]["kl"]["beats"] is False
    assert out["logprob_vs_sequence"]["64/1 epoch"]["answer_agreement"]["beats"] is True
    tie = out["logprob_vs_sequence"]["128/1 epoch"]["answer_agreement"]
    assert tie["beats"] is False and tie["tie"] is True
    assert out["logprob_beats_sequence_in_every_cell"] == {
        "kl": False, "top1_agreement": False, "answer_agreement": False}  # fmt: skip
    # seeds: the median over seeds decides, and every arm of a cell trains on the same tickets
    rows += [row(128, "topk_tail", 0.05, 0.9, seed=1), row(128, "topk_tail", 0.06, 0.9, seed=2)]
    every = summarize(rows)["logprob_beats_sequence_in_every_cell"]
    assert every["kl"] is True and every["answer_agreement"] is True
    # a cell with another training budget is its own comparison, and can lose on its own
    rows += [row(64, "sequence_kd", 0.1, 0.9, budget="12 steps"),
             row(64, "topk_tail", 0.09, 0.9, budget="12 steps")]  # fmt: skip
    out = summarize(rows)
    assert set(out["logprob_vs_sequence"]) == {"64/1 epoch", "128/1 epoch", "64/12 steps"}
    assert out["logprob_beats_sequence_in_every_cell"]["kl"] is True
    assert out["logprob_beats_sequence_in_every_cell"]["answer_agreement"] is False
    assert subset(250, 64, 1) == subset(250, 64, 1) != subset(250, 64, 2)
    assert len(set(subset(250, 64, 0))) == 64


def test_kd_quality_report_explains_a_tie_from_the_tickets() -> None:
    """The missed-target note counts, from the per-ticket answers, how many disagreements
    are on tickets the teacher itself gets wrong (the cap), and names the unlearned cells."""
    from benchmarks import report
    from benchmarks.kd_quality import summarize

    def row(
        size: int,
        arm: str,
        kl: float,
        agree: float,
        disagree: list[int],
        miss: list[int],
        budget: str = "1 epoch",
    ) -> dict:
        return {"size": size, "seed": 0, "arm": arm, "budget": budget, "kl": kl,
                "top1_agreement": 0.9, "answer_agreement": agree, "exact_vs_gold": 0.7,
                "disagree": disagree, "miss_gold": miss}  # fmt: skip

    rows = [row(8, "sequence_kd", 0.5, 0.0, list(range(10)), list(range(10))),
            row(8, "topk_tail", 0.4, 0.0, list(range(10)), list(range(10))),
            row(32, "sequence_kd", 0.2, 0.8, [1, 2], [2]),
            row(32, "topk_tail", 0.1, 0.8, [1, 5], [])]  # fmt: skip
    doc = {"setting": {"teacher_wrong": [1, 2, 3], "held_out_tickets": 10}, "rows": rows,
           **summarize(rows)}  # fmt: skip
    target = next(t for t in report.TARGETS if "answer agreement" in t.text)
    _, ratio, met, note = target.measure(doc)
    assert met is False and ratio == 1.0 and "(tie)" in note
    text = report.missed_notes({"kd_quality": doc})
    assert "In 8/1 epoch neither arm has learned the answer format" in text
    # disagreements on teacher-wrong tickets: {1, 2} and {1}; gold-correct there: 1 and 1
    assert "3 of the students' 4 disagreements" in text
    assert "on 2 of them the student gives the gold answer" in text
    assert "In 0 of 1 (cell, seed) pairs the two arms disagree" in text  # {1, 2} vs {1, 5}
    kl = next(t for t in report.TARGETS if "held-out KL" in t.text)
    assert kl.measure(doc)[2] is True
