"""``--skip-invalid`` on the commands that read a prompt file (issue #7).

A prompt file with a line that is not JSON (line 2) and a row without its input field
(line 4): without the flag a command stops at line 2 with the file and line and a hint naming
both the flag and ``prompts.skip_invalid``; with it the command goes on with the three good
rows and reports how many it skipped. Every run goes through ``apidistill.cli.main``, the
console script's entry point, so exit codes and messages are the ones users see.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import apidistill.cli as cli
from apidistill.testing.fault_server import FaultServerProcess

GOOD_IDS = ("t1", "t3", "t5")


def _write_run(folder: Path, *, base_url: str, skip_invalid: bool = False) -> Path:
    lines = [
        json.dumps({"id": "t1", "text": "order 1001 is late"}),
        '{"id": "t2", "text": "order 1002 never came"',  # line 2: not JSON (unclosed)
        json.dumps({"id": "t3", "text": "order 1003 is broken"}),
        json.dumps({"id": "t4", "body": "order 1004: no text field"}),  # line 4: missing field
        json.dumps({"id": "t5", "text": "order 1005 was refunded"}),
    ]
    (folder / "prompts.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = folder / "run.yaml"
    run.write_text(
        "name: skip\n"
        f"run_dir: {folder / 'runs' / 'skip'}\n"
        "teacher:\n"
        "  provider: openai_compatible\n"
        "  model: fault-model\n"
        f"  base_url: {base_url}\n"
        "  price: {input_per_mtok: 1, output_per_mtok: 2}\n"
        "prompts:\n"
        "  path: prompts.jsonl\n"
        "  id_field: id\n"
        f"  skip_invalid: {str(skip_invalid).lower()}\n"
        "policy: {use: internal, acknowledge_unknown: 'skip-invalid test: loopback fake'}\n"
        "budget: {usd: 10}\n"
        "harvest: {concurrency: 4, max_tokens: 8, timeout_s: 5, max_retries: 1}\n",
        encoding="utf-8",
    )
    return run


def _main(monkeypatch: pytest.MonkeyPatch, capsys, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["apidistill", *argv])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exc:
        cli.main()
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def _assert_stopped_at_line_2(code: int, err: str, folder: Path) -> None:
    assert code == 2, err
    assert f"{folder / 'prompts.jsonl'}:2:" in err  # file and line of the first bad row
    assert "--skip-invalid" in err and "prompts.skip_invalid" in err  # both ways out
    assert "Traceback" not in err


def _assert_reports_two_skipped(err: str, folder: Path) -> None:
    assert "skipped 2 invalid rows" in err, err
    assert f"{folder / 'prompts.jsonl'}:2:" in err and f"{folder / 'prompts.jsonl'}:4:" in err
    assert "missing input field 'text'" in err


def test_estimate_stops_at_the_first_bad_line_or_skips_with_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    run = _write_run(tmp_path, base_url="http://127.0.0.1:9/v1")  # estimate sends nothing
    code, _, err = _main(monkeypatch, capsys, "estimate", str(run), "--json")
    _assert_stopped_at_line_2(code, err, tmp_path)

    code, out, err = _main(monkeypatch, capsys, "estimate", str(run), "--json", "--skip-invalid")
    assert code == 0, err
    assert json.loads(out)["requests"] == len(GOOD_IDS)  # stdout stays pure JSON
    _assert_reports_two_skipped(err, tmp_path)

    # The flag overrides the run file both ways: prompts.skip_invalid: true, --no-skip-invalid.
    run = _write_run(tmp_path, base_url="http://127.0.0.1:9/v1", skip_invalid=True)
    code, out, err = _main(monkeypatch, capsys, "estimate", str(run), "--json")
    assert code == 0 and json.loads(out)["requests"] == len(GOOD_IDS), err
    code, _, err = _main(monkeypatch, capsys, "estimate", str(run), "--no-skip-invalid")
    _assert_stopped_at_line_2(code, err, tmp_path)


def test_run_reports_the_skipped_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    run = _write_run(tmp_path, base_url="http://127.0.0.1:9/v1")
    argv = ("run", str(run), "--stop-after", "policy", "--no-progress")  # offline stages only
    code, _, err = _main(monkeypatch, capsys, *argv)
    _assert_stopped_at_line_2(code, err, tmp_path)
    code, _, err = _main(monkeypatch, capsys, *argv, "--skip-invalid")
    assert code == 0, err
    assert "skipped 2 invalid rows" in err


def test_harvest_against_the_fault_server_sends_only_the_good_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    with FaultServerProcess(latency_ms=0, fault_rate=0.0) as srv:
        run = _write_run(tmp_path, base_url=srv.base_url)
        code, _, err = _main(monkeypatch, capsys, "harvest", str(run), "--no-progress")
        _assert_stopped_at_line_2(code, err, tmp_path)
        assert srv.stats()["received"] == 0  # stopped before a single request

        code, _, err = _main(
            monkeypatch, capsys, "harvest", str(run), "--no-progress", "--skip-invalid"
        )
        assert code == 0, err
        _assert_reports_two_skipped(err, tmp_path)
        assert f"harvest: {len(GOOD_IDS)} answers, 0 failed" in err
        assert srv.stats()["answered"] == len(GOOD_IDS)
