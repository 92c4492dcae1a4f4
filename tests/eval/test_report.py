"""The HTML report: content, self-containment, report.json, and a headless-Chromium render."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import pytest
from eval_kit import answer_by_ticket, chromium_binary, make_record, render_in_chromium

from apidistill.cli.eval import report as report_cmd
from apidistill.config import EvalConfig, EvalThresholds
from apidistill.errors import EvalError
from apidistill.eval.report import render_html, write_report
from apidistill.eval.runner import run_eval
from apidistill.eval.types import EvalResult, StudentEndpoint

LABELS = ["billing", "shipping", "billing", "returns", "shipping", "billing"]
HISTORY = [
    {"step": 5, "loss": 2.1, "learning_rate": 1e-4},
    {"step": 10, "loss": 1.4},
    {"step": 10, "eval_loss": 1.6},
    {"step": 15, "loss": 0.9},
    {"step": 15, "train_loss": 1.5, "train_runtime": 30.0},
]


@pytest.fixture
async def label_result(fake_server, tmp_path: Path) -> EvalResult:
    recs = [make_record(f"r{i}", f"ticket {i}", lab, lab) for i, lab in enumerate(LABELS)]
    good = {f"ticket {i}": lab for i, lab in enumerate(LABELS)}
    good["ticket 5"] = "returns"
    with (
        fake_server(answer_by_ticket(good)) as s1,
        fake_server(answer_by_ticket(dict.fromkeys(good, "no idea"))) as s2,
    ):
        students = {
            "seq-kd": StudentEndpoint(base_url=s1.base_url, model="a", usd_per_hour=Decimal("1.2")),
            "base": StudentEndpoint(base_url=s2.base_url, model="b", kind="base"),
        }
        cfg = EvalConfig(
            scorer="label",
            bootstrap_samples=200,
            thresholds=EvalThresholds(agreement=0.9, relative_task_score=0.8),
        )
        return await run_eval(
            recs,
            students,
            cfg,
            out_dir=tmp_path / "eval",
            teacher_latency_ms={r.id: 600.0 for r in recs},
        )


def test_report_has_verdict_tables_plots_and_json(label_result: EvalResult, tmp_path: Path) -> None:
    path = write_report(
        label_result,
        tmp_path / "report",
        title="Ticket router <migration>",
        training_history=HISTORY,
        extra_sections={"Data card": "<p>250 tickets</p>"},
    )
    html = path.read_text()
    # seq-kd agrees on 5/6 = 0.833 < 0.9: NO-GO with that reason.
    assert "NO-GO" in html and "agreement with the teacher 0.833" in html
    assert "Ticket router &lt;migration&gt;" in html  # titles are escaped
    assert html.count("<table>") == 3
    imgs = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    # bars, 3 confusion matrices, latency, cost, prompt tokens, training curves
    assert len(imgs) == 8
    assert "<p>250 tickets</p>" in html
    assert not re.search(r"(src|href)=\"(https?:|//)", html)  # nothing from outside
    payload = json.loads((tmp_path / "report" / "report.json").read_text())
    assert payload["verdict"]["go"] is False
    assert payload["result"]["students"]["seq-kd"]["metrics"]["agreement"][
        "value"
    ] == pytest.approx(5 / 6)
    assert (
        EvalResult.model_validate(payload["result"]).students.keys() == label_result.students.keys()
    )


def test_moving_the_threshold_flips_the_banner(label_result: EvalResult) -> None:
    lenient = render_html(
        label_result, title="t", thresholds=EvalThresholds(agreement=0.8, relative_task_score=0.8)
    )
    strict = render_html(
        label_result, title="t", thresholds=EvalThresholds(agreement=0.9, relative_task_score=0.8)
    )
    assert "class='verdict go'" in lenient and "class='verdict nogo'" in strict


def test_report_command_prints_the_path_or_says_what_to_run(
    label_result: EvalResult, tmp_path: Path, capsys
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(EvalError, match="run `apidistill eval"):
        report_cmd(run_dir)
    with pytest.raises(EvalError, match="no such run directory"):
        report_cmd(tmp_path / "missing")
    write_report(label_result, run_dir / "report", title="t")
    report_cmd(run_dir)
    assert capsys.readouterr().out.strip() == str((run_dir / "report" / "report.html").resolve())


@pytest.mark.skipif(
    chromium_binary() is None, reason="chromium is not installed (apt-get install chromium)"
)
def test_report_renders_in_headless_chromium(label_result: EvalResult, tmp_path: Path) -> None:
    path = write_report(
        label_result, tmp_path / "report", title="Ticket router", training_history=HISTORY
    )
    shown = render_in_chromium(path, tmp_path)
    probe = re.search(r'<div id="probe" data-img-widths="([^"]*)" data-errors="([^"]*)"', shown.dom)
    assert probe, "the page did not finish loading"
    widths = [int(w) for w in probe.group(1).split(",")]
    assert len(widths) == 8 and all(w > 100 for w in widths), widths  # no broken image
    assert probe.group(2) == ""  # no script or resource errors
    assert "NO-GO" in shown.dom and shown.dom.count("<table>") == 3
    assert "Refused to" not in shown.stderr  # no content-security-policy violation
    assert shown.screenshot.stat().st_size > 20_000  # a real rendered page, not a blank one
