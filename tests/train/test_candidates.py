"""Several student sizes against a latency budget (issue 20, item 7), scaled down: two tiny
random-init students of different sizes are listed in ``student:``; ``run_pipeline`` trains
both, serves and evaluates both on the same test split, and exports the smallest that meets
``eval.thresholds``; with a latency budget nobody meets, nothing is exported."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from apidistill.config import RunConfig, parse_config
from apidistill.model_loading import count_params
from apidistill.pipeline.run import run_pipeline
from apidistill.testing.fault_server import FaultServerProcess

from .helpers import save_tiny_llama

PROMPTS = 16


@pytest.fixture(scope="module")
def big_chat_dir(tmp_path_factory) -> Path:
    """A second tiny Llama, twice as wide, on the same tokenizer."""
    return save_tiny_llama(tmp_path_factory.mktemp("big_chat"), hidden=64, seed=2)


def _cfg(root: Path, base_url: str, students: list[str], p95_ms: float) -> RunConfig:
    prompts = root / "prompts.jsonl"
    rows = [{"id": f"p{n}", "text": f"order {n} item {chr(97 + n)}"} for n in range(PROMPTS)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return RunConfig.model_validate(
        {
            "name": "sizes",
            "run_dir": str(root / "run"),
            "teacher": {
                "provider": "openai_compatible",
                "model": "fault-model",
                "base_url": base_url,
                "price": {"input_per_mtok": 0, "output_per_mtok": 0},
            },
            "prompts": {"path": str(prompts), "id_field": "id"},
            "policy": {"use": "internal", "acknowledge_unknown": "test: loopback teacher"},
            "budget": {"usd": 1},
            "harvest": {"concurrency": 4, "max_tokens": 12, "max_retries": 0},
            "dataset": {
                "dedupe": "none",
                "splits": {"train": 0.5, "validation": 0.0, "test": 0.5, "stratify_by": None},
            },
            "student": students,
            "training": {"method": "sequence_kd", "max_steps": 2, "batch_size": 4},
            "eval": {
                "max_tokens": 8,
                "bootstrap_samples": 100,
                "thresholds": {
                    "agreement": None,
                    "relative_task_score": None,
                    "max_latency_ms_p95": p95_ms,
                },
            },
        }
    )


@pytest.fixture(scope="module")
def sizes_run(tiny_chat_dir, big_chat_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("sizes")
    students = [str(big_chat_dir), str(tiny_chat_dir)]  # the larger one listed first
    with FaultServerProcess() as teacher, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        generous = run_pipeline(_cfg(root, teacher.base_url, students, 600_000.0), progress=False)
        chosen = json.loads((root / "run" / "candidates.json").read_text(encoding="utf-8"))
        impossible = run_pipeline(_cfg(root, teacher.base_url, students, 1e-6), progress=False)
        none = json.loads((root / "run" / "candidates.json").read_text(encoding="utf-8"))
        received = teacher.stats()["received"]
    return root / "run", generous, chosen, impossible, none, received


@pytest.mark.slow
def test_every_candidate_is_trained_and_evaluated_on_the_same_split(sizes_run, big_chat_dir):
    run, _, chosen, _, _, received = sizes_run
    assert received == PROMPTS  # the second run answers from the journal
    rows = {Path(r["model"]).name: r for r in chosen["candidates"]}
    assert len(rows) == 2
    for row in rows.values():
        assert (Path(row["train_dir"]) / "adapter" / "adapter_model.safetensors").is_file()
        assert row["p95_ms"] is not None and row["p95_ms"] > 0
    report = json.loads((run / "report" / "report.json").read_text(encoding="utf-8"))
    evals = report["students"] if "students" in report else report["result"]["students"]
    assert {e["n_examples"] for e in evals.values()} == {PROMPTS // 2}
    assert rows[big_chat_dir.name]["params"] == count_params(str(big_chat_dir))


@pytest.mark.slow
def test_the_smallest_within_the_budget_is_exported(sizes_run, tiny_chat_dir, big_chat_dir):
    _, generous, chosen, _, _, _ = sizes_run
    rows = {r["model"]: r for r in chosen["candidates"]}
    assert rows[str(tiny_chat_dir)]["params"] < rows[str(big_chat_dir)]["params"]
    assert rows[str(tiny_chat_dir)]["chosen"] and rows[str(big_chat_dir)]["passes"]
    assert not rows[str(big_chat_dir)]["chosen"]
    assert generous.numbers["chosen_student"] == str(tiny_chat_dir)
    base = (Path(generous.student_dir) / "base_model.txt").read_text().strip()
    assert base == str(tiny_chat_dir)


@pytest.mark.slow
def test_no_candidate_within_the_budget_exports_nothing(sizes_run):
    _, _, _, impossible, none, _ = sizes_run
    assert none["chosen"] is None
    assert not any(r["passes"] or r["chosen"] for r in none["candidates"])
    assert all("p95 latency" in r["checks"][0] for r in none["candidates"])
    assert impossible.numbers["chosen_student"] is None and impossible.student_dir is None


@pytest.mark.slow
def test_train_command_trains_every_candidate(sizes_run, tiny_chat_dir, big_chat_dir):
    from typer.testing import CliRunner

    from apidistill.cli import app

    run = sizes_run[0]
    cfg = _cfg(run.parent, "http://127.0.0.1:9/v1", [str(big_chat_dir), str(tiny_chat_dir)], 1.0)
    path = run.parent / "sizes.yaml"
    path.write_text(json.dumps(cfg.model_dump(mode="json")), encoding="utf-8")  # JSON is YAML
    out = CliRunner().invoke(app, ["train", str(path)])
    assert out.exit_code == 0, out.output
    trained = [line for line in out.output.splitlines() if line.startswith("trained: ")]
    assert [Path(t.split(": ", 1)[1]).parent.name for t in trained] == [
        f"1-{big_chat_dir.name}",
        f"2-{tiny_chat_dir.name}",
    ]


def test_student_list_is_shorthand_for_candidates():
    head = (
        "teacher: {provider: openai_compatible, model: m, base_url: 'http://127.0.0.1:1/v1'}\n"
        "prompts: {path: p.jsonl}\npolicy: {use: internal}\nbudget: {usd: 1}\n"
    )
    cfg = parse_config(head + "student: [./small, ./large]\n", "r.yaml")
    assert cfg.student.candidates == ["./small", "./large"] and cfg.student.model == "./small"
    cfg = parse_config(
        head + "student: {system_prompt: Be brief., candidates: [a/b, c/d]}\n", "r.yaml"
    )
    assert cfg.student.model == "a/b" and cfg.student.system_prompt == "Be brief."
    with pytest.raises(Exception, match="listed twice"):
        parse_config(head + "student: [a/b, a/b]\n", "r.yaml")
