"""The demo's payoff row (#23 item 5): after training and eval the demo exports the student's
GGUF and measures it against the prompted teacher through llama.cpp; without llama-cpp-python
it prints the one command that adds the row and the run still finishes.

The slow test is the demo's run file scaled down (4 tickets, 2 training steps, 2 tickets per
payoff side): the teacher really is `apidistill serve` on the embedded model, the student's
q8_0 GGUF is really made by llama.cpp, and both sides are served by
`apidistill serve --backend llamacpp`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apidistill.config import SplitConfig, load_config
from apidistill.resources import demo_run_file


def test_the_demo_run_file_asks_for_the_payoff():
    cfg = load_config(demo_run_file())
    assert cfg.export.payoff is True
    assert cfg.teacher.launch is not None  # the teacher side needs a self-hosted teacher


def test_without_llamacpp_the_demo_says_the_one_command(tmp_path, monkeypatch, capsys):
    import sys

    from apidistill.cli.run import print_summary
    from apidistill.pipeline.layout import RunLayout
    from apidistill.pipeline.payoff import BUILD_MINUTES, INSTALL_COMMAND, payoff_stage

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` fails
    cfg = load_config(demo_run_file())
    cfg.run_dir = str(tmp_path / "run")
    got = payoff_stage(cfg, RunLayout(cfg.run_path), str(tmp_path / "no-student"))
    assert (
        got["command"]
        == INSTALL_COMMAND
        == 'pip install "llama-cpp-python==0.3.36" && apidistill demo'
    )
    assert got["build_minutes"] == BUILD_MINUTES
    out = capsys.readouterr().out
    assert "llama-cpp-python is not installed" in out
    assert INSTALL_COMMAND in out and f"{BUILD_MINUTES} min on 2 cores" in out
    assert not (tmp_path / "run" / "export").exists()  # nothing half-written
    print_summary({"teacher_gold": 0.9, "payoff": got}, None, None)
    assert INSTALL_COMMAND in capsys.readouterr().out


def test_the_printed_command_pins_the_llamacpp_extra_version():
    import tomllib

    from apidistill.pipeline.payoff import INSTALL_COMMAND

    root = Path(__file__).resolve().parents[2]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    (pin,) = extras["llamacpp"]
    assert f'pip install "{pin}"' in INSTALL_COMMAND
    assert pin.replace("llama-cpp-python", "llama-cpp-python[server]") in extras["dev"]


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_the_demo_writes_the_payoff_row(tmp_path, capsys):
    pytest.importorskip("llama_cpp", reason="the payoff row runs in llama.cpp")
    from apidistill.cli.run import print_summary
    from apidistill.pipeline.run import run_pipeline

    cfg = load_config(demo_run_file())
    cfg.run_dir = str(tmp_path / "run")
    cfg.prompts.limit = 4
    cfg.dataset.splits = SplitConfig(train=0.5, test=0.5, stratify_by=None)
    cfg.training.max_steps = 2
    cfg.export.payoff_requests = 2
    cfg.teacher.launch.threads = 1  # OpenMP threads spin on a shared test machine
    summary = run_pipeline(cfg, progress=False)
    run = Path(cfg.run_dir)
    written = json.loads((run / "summary.json").read_text())
    payoff = written["payoff"]
    assert payoff == summary.numbers["payoff"]
    student_gguf = run / "export" / "gguf" / "demo-q8_0.gguf"
    assert student_gguf.is_file()
    assert payoff["tickets"] == 2 and payoff["requests_per_arm"] == 5
    for side in ("student", "teacher"):
        row = payoff[side]
        assert row["n"] == 2 and row["gguf_mb"] > 0
        assert row["latency_s_median"] > 0 and row["output_tokens_median"] > 0
        assert row["requests_per_s_c1"] > 0 and row["requests_per_s_c8"] > 0
    assert payoff["student"]["gguf"] == str(student_gguf)
    assert payoff["student"]["gguf_mb"] == round(student_gguf.stat().st_size / 2**20, 1)
    assert set(payoff["ratios"]) == {
        "teacher_vs_student_latency",
        "student_vs_teacher_rps_c1",
        "student_vs_teacher_rps_c8",
        "student_vs_teacher_gguf_size",
    }
    md = (run / "report" / "payoff.md").read_text()
    assert "| GGUF size (MB) |" in md and "| requests/s, concurrency 8 |" in md
    assert json.loads((run / "report" / "payoff.json").read_text())["ratios"] == payoff["ratios"]
    capsys.readouterr()
    print_summary(summary.numbers, summary.report_path, summary.student_dir)
    assert "payoff through llama.cpp: student GGUF" in capsys.readouterr().out


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
