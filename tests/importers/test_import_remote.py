"""Remote sources through the official openai SDK against a loopback server that follows the
API reference: a fine-tuning file by id (Files API content), stored completions (list with
metadata/model filters and has_more/after pagination, plus each one's messages)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from apidistill.config import ImportConfig
from apidistill.data.store import load_records
from apidistill.errors import TeacherError
from apidistill.importers import load_source

from .store_server import StoreServer

FIX = Path(__file__).parent / "fixtures"
FT = "ft:gpt-4.1-mini-2025-04-14:acme::B1x2y3"


@pytest.fixture
def server() -> Iterator[StoreServer]:
    s = StoreServer()
    yield s
    s.close()


def _client(s: StoreServer, key: str | None = None) -> OpenAI:
    return OpenAI(base_url=s.base_url, api_key=key or s.key, max_retries=0)


def test_finetune_file_by_id_is_downloaded_once(server: StoreServer, tmp_path: Path) -> None:
    server.files["file-abc123"] = (FIX / "finetune.jsonl").read_bytes()
    src = ImportConfig(kind="openai_finetune", path="file-abc123", model=FT)
    load = load_source(src, client=_client(server), cache_dir=tmp_path)
    assert len(load.items) == 5 and {x.ref for x in load.items} == {"file-abc123"}
    assert (tmp_path / "file-abc123.jsonl").read_bytes() == server.files["file-abc123"]
    server.files.clear()  # a re-import reads the kept copy
    assert len(load_source(src, client=_client(server), cache_dir=tmp_path).items) == 5


def test_unknown_file_id_is_a_clear_error(server: StoreServer, tmp_path: Path) -> None:
    src = ImportConfig(kind="openai_finetune", path="file-missing", model=FT)
    with pytest.raises(TeacherError, match=r"file-missing: HTTP 404"):
        load_source(src, client=_client(server), cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def _fill(server: StoreServer, n: int = 7) -> None:
    for i in range(n):
        tag = "prod" if i % 2 == 0 else "dev"
        server.add_stored(
            f"chatcmpl-{i:03d}",
            FT if i != 4 else "gpt-4.1-mini",
            [
                {"role": "developer", "content": "Extract the order."},
                {"role": "user", "content": f"ticket {i}"},
            ],
            f"order_id: {i}",
            metadata={"env": tag},
        )


def test_stored_completions_filtered_and_paged(server: StoreServer) -> None:
    _fill(server)
    src = ImportConfig(kind="openai_stored", model=FT, metadata={"env": "prod"})
    load = load_source(src.model_copy(), client=_client(server))
    # prod = 0, 2, 4, 6; 4 was answered by another model and is filtered out by the server
    assert [x.item_id for x in load.items] == ["chatcmpl-000", "chatcmpl-002", "chatcmpl-006"]
    ex = load.items[1]
    assert [(m.role, m.content) for m in ex.messages] == [
        ("system", "Extract the order."),
        ("user", "ticket 2"),
    ]
    assert ex.completion == "order_id: 2" and ex.model == FT
    assert ex.metadata["stored_metadata"] == {"env": "prod"}
    assert ex.usage.input_tokens == 12
    sent = server.list_calls[0]
    assert sent["model"] == FT and sent["metadata[env]"] == "prod"


def test_stored_completions_pagination_follows_has_more(server: StoreServer) -> None:
    _fill(server, 7)
    from apidistill.importers.openai_stored import import_stored_completions

    load = import_stored_completions(_client(server), page_size=3)
    assert len(load.items) == 7
    assert [c.get("after") for c in server.list_calls] == [None, "chatcmpl-002", "chatcmpl-005"]
    assert {c["limit"] for c in server.list_calls} == {"3"}
    load = import_stored_completions(_client(server), after="chatcmpl-004")
    assert [x.item_id for x in load.items] == ["chatcmpl-005", "chatcmpl-006"]


def test_stored_message_pages_are_followed(server: StoreServer) -> None:
    long = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(151)
    ]
    server.add_stored("chatcmpl-long", FT, long, "done")
    from apidistill.importers.openai_stored import import_stored_completions

    (ex,) = import_stored_completions(_client(server)).items
    assert [m.content for m in ex.messages] == [f"turn {i}" for i in range(151)]
    assert [c.get("after") for c in server.message_calls] == [None, "chatcmpl-long-99"]


def test_stored_logprobs_are_kept(server: StoreServer) -> None:
    lp = {"content": [{"token": "ok", "logprob": -0.1, "bytes": [111, 107],
                       "top_logprobs": [{"token": "ok", "logprob": -0.1, "bytes": [111, 107]}]}],
          "refusal": None}  # fmt: skip
    server.add_stored("chatcmpl-lp", FT, [{"role": "user", "content": "q"}], "ok", logprobs=lp)
    from apidistill.importers.openai_stored import import_stored_completions

    (ex,) = import_stored_completions(_client(server)).items
    assert ex.logprobs is not None and ex.logprobs[0].token == "ok"


def test_wrong_key_is_a_clear_error(server: StoreServer) -> None:
    from apidistill.importers.openai_stored import import_stored_completions

    with pytest.raises(TeacherError, match="HTTP 401"):
        import_stored_completions(_client(server, key="sk-wrong"))


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "apidistill", "import", *args],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=120,
    )  # fmt: skip


def test_cli_imports_stored_completions(server: StoreServer, tmp_path: Path) -> None:
    _fill(server)
    env = {"IMPORT_KEY": server.key}
    out = tmp_path / "ds"
    proc = _cli(
        "openai_stored", "--model", FT, "--metadata", "env=prod", "--base-url", server.base_url,
        "--api-key-env", "IMPORT_KEY", "--out", str(out), env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "3 records" in proc.stdout and "§3.3(e)" in proc.stdout
    recs = load_records(out)
    assert sorted(r.id for r in recs) == [
        "openai_stored-chatcmpl-000", "openai_stored-chatcmpl-002", "openai_stored-chatcmpl-006",
    ]  # fmt: skip
    assert server.key not in "".join(p.read_text(errors="ignore") for p in out.rglob("*.json"))


def test_cli_bad_line_exit_code_and_skip_invalid(tmp_path: Path) -> None:
    bad = tmp_path / "train.jsonl"
    good = (FIX / "finetune.jsonl").read_text().splitlines()[0]
    bad.write_text(f"{good}\n{{oops\n")
    proc = _cli("openai_finetune", str(bad), "--model", FT, "--out", str(tmp_path / "a"), env={})
    assert proc.returncode == 2
    assert f"{bad}:2" in proc.stderr and "--skip-invalid" in proc.stderr
    proc = _cli(
        "openai_finetune", str(bad), "--model", FT, "--out", str(tmp_path / "b"), "--skip-invalid",
        env={},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "skipped 1 invalid row" in proc.stdout and f"{bad}:2" in proc.stdout
    summary = json.loads((tmp_path / "b" / "import.json").read_text())
    assert summary["records"] == 1 and summary["skipped_invalid"] == 1


def test_cli_terms_refusal_exits_2_with_the_clause(tmp_path: Path) -> None:
    proc = _cli(
        "chat", str(FIX / "chat.jsonl"), "--provider", "xai", "--model", "grok-4",
        "--out", str(tmp_path / "x"), env={},
    )  # fmt: skip
    assert proc.returncode == 2 and "deny" in proc.stderr
    assert not (tmp_path / "x").exists()
