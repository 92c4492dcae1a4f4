"""examples/migrate_finetune_proxy.yaml: the capture proxy in front of the fine-tune while
traffic moves to the student (docs/migrate-openai-finetune.md, "Move traffic gradually").

The file runs as written except for the addresses: the fine-tune is a loopback server in
OpenAI's documented shapes (tests/importers/store_server.py), the student a loopback OpenAI
server, the capture store a temp file. Clients are the official ``openai`` SDK. Checked: the
terms line at start, share 0 at start (every answer from the fine-tune, captured), ``promote``
moves a sticky share of users to the student (not captured: not teacher data), ``rollback``
moves them back, the client's key is replaced by the proxy's own, and ``apidistill import
captures`` turns the captured exchanges into a dataset attributed to the fine-tune.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import openai
import yaml

from apidistill.data.store import load_records
from apidistill.proxy.config import load_proxy_config
from apidistill.testing.proxy_process import ProxyProcess, write_proxy_config
from apidistill.testing.proxy_teacher import ProxyTeacherProcess
from tests.importers.store_server import StoreServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "migrate_finetune_proxy.yaml"
FT = "ft:gpt-4.1-mini-2025-04-14:YOUR_ORG::YOUR_JOB"
APP_KEY = "sk-app-0c1d2e3f4a5b6c7d8e9f0a1b"  # the app's own key: must go nowhere


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "apidistill", *args], capture_output=True,
                          text=True, timeout=180, env=os.environ.copy(), cwd=cwd)  # fmt: skip


def test_the_example_file_is_valid_as_shipped() -> None:
    cfg = load_proxy_config(EXAMPLE)
    assert cfg.teacher.model == FT and cfg.teacher.api_key_env == "OPENAI_API_KEY"
    assert cfg.split is not None and cfg.split.share == 0.0 and cfg.split.model == "student"
    assert cfg.budget is not None and cfg.budget.at_cap == "student"
    # the student the split and the budget fall back to is the one `apidistill serve` starts
    # from examples/migrate_finetune.yaml
    run = yaml.safe_load((ROOT / "examples" / "migrate_finetune.yaml").read_text())
    student = f"http://{run['serve']['host']}:{run['serve']['port']}/v1"
    assert cfg.split.student_url == student and cfg.budget.student_url == student


def test_split_moves_users_to_the_student_and_captures_only_the_finetune(
    tmp_path: Path,
) -> None:
    finetune = StoreServer()
    with ProxyTeacherProcess() as student:
        settings = yaml.safe_load(EXAMPLE.read_text())
        settings["teacher"]["base_url"] = finetune.base_url
        settings["capture"]["path"] = str(tmp_path / "captures.sqlite")
        settings["split"]["student_url"] = student.base_url
        settings["budget"]["student_url"] = student.base_url
        cfg = write_proxy_config(tmp_path / "proxy.yaml", settings)
        env = {"OPENAI_API_KEY": finetune.key}
        with ProxyProcess(cfg, tmp_path / "proxy.log", env=env) as proxy:
            # the terms decision, with OpenAI's clause, said at start
            said = " ".join(proxy.log().split())
            assert "capturing 100% of exchanges" in said
            assert "OpenAI Services Agreement, effective 2026-01-01, §3.3(e), exception (a)" in said
            app = openai.OpenAI(base_url=proxy.base_url, api_key=APP_KEY, max_retries=0)

            def ask(user: str, text: str) -> str:
                before = len(finetune.chat_bodies)
                app.chat.completions.create(
                    model=FT, max_tokens=16, extra_headers={"X-Apidistill-User": user},
                    messages=[{"role": "user", "content": f"{text} (mail me: {user}@example.com)"}],
                )  # fmt: skip
                return "finetune" if len(finetune.chat_bodies) > before else "student"

            users = [f"user{i}" for i in range(12)]
            assert {ask(u, "first") for u in users} == {"finetune"}  # share 0 at start
            done = _cli("proxy", "promote", "--share", "0.5", "--url", proxy.root, cwd=tmp_path)
            assert done.returncode == 0 and "50%" in done.stdout, done.stderr
            side = {u: ask(u, "second") for u in users}
            assert set(side.values()) == {"finetune", "student"}
            assert all(ask(u, "third") == side[u] for u in users)  # sticky per user
            assert student.last()["body"]["model"] == "student"
            done = _cli("proxy", "rollback", "--url", proxy.root, cwd=tmp_path)
            assert done.returncode == 0, done.stderr
            assert {ask(u, "fourth") for u in users} == {"finetune"}
        on_finetune = list(side.values()).count("finetune")
        assert {b["model"] for b in finetune.chat_bodies} == {FT}
    finetune.close()

    # the app's key went nowhere: not upstream (the proxy's own key replaced it), not on disk
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert APP_KEY.encode() not in written
    assert b"@example.com" not in written  # the built-in email rule masked it before writing

    imported = _cli("import", "captures", str(tmp_path / "captures.sqlite"),
                    "--out", str(tmp_path / "traffic"), cwd=tmp_path)  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    recs = load_records(tmp_path / "traffic")
    # rounds 1 and 4 went to the fine-tune for every user, rounds 2 and 3 for its half
    assert len(recs) == 2 * len(users) + 2 * on_finetune
    assert all(r.provenance and r.provenance.model == FT for r in recs)
    assert all(r.metadata["import"]["source"] == "proxy_capture" for r in recs)


def test_a_dead_student_falls_back_to_the_finetune(tmp_path: Path) -> None:
    """Promoted all the way, with the student down: every answer still comes (from the
    fine-tune), and is captured."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    finetune = StoreServer()
    try:
        settings = yaml.safe_load(EXAMPLE.read_text())
        settings["teacher"]["base_url"] = finetune.base_url
        settings["capture"]["path"] = str(tmp_path / "captures.sqlite")
        settings["split"].update(student_url=dead, share=1.0)
        settings["budget"]["student_url"] = dead
        cfg = write_proxy_config(tmp_path / "proxy.yaml", settings)
        with ProxyProcess(cfg, tmp_path / "proxy.log",
                          env={"OPENAI_API_KEY": finetune.key}) as proxy:  # fmt: skip
            app = openai.OpenAI(base_url=proxy.base_url, api_key=APP_KEY, max_retries=0)
            out = app.chat.completions.create(
                model=FT, max_tokens=8, messages=[{"role": "user", "content": "hello"}]
            )
            assert out.choices[0].message.content and len(finetune.chat_bodies) == 1
    finally:
        finetune.close()
