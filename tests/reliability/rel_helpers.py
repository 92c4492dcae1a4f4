"""Shared pieces of the reliability suite: run files, CLI runs, journal and server reads.

Everything talks to 127.0.0.1 only; every subprocess has a timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from apidistill.records import GenerationParams, Message, TeacherRequest
from apidistill.testing.fault_server import FaultConfig, FaultServerProcess, request_digest
from apidistill.testing.tiny_tokenizer import char_tokenizer

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FAULT_MODEL = "fault-model"


# --------------------------------------------------------------------------- requests


def make_requests(n: int, *, tag: str = "p", max_tokens: int = 16) -> list[TeacherRequest]:
    """``n`` distinct chat requests (distinct inputs: one server digest per request)."""
    params = GenerationParams(max_tokens=max_tokens)
    return [
        TeacherRequest(
            messages=[Message(role="user", content=f"{tag} ticket {i}: where is my order?")],
            params=params,
            prompt_id=f"{tag}{i}",
        )
        for i in range(n)
    ]


def digest_of(teacher: Any, request: TeacherRequest) -> str:
    """The fault server's name (sha256 of model + input text) for one of our requests."""
    from apidistill.teachers.openai import build_openai_body

    _, body = build_openai_body(request, model=teacher.model, profile=teacher.profile)
    return request_digest(body)


def configure(srv: FaultServerProcess, **overrides: Any) -> FaultServerProcess:
    """Reset the server's counters and apply a full fresh configuration."""
    srv.reset()
    srv.configure(**{**asdict(FaultConfig()), **overrides})
    return srv


# --------------------------------------------------------------------------- run files


def write_run(
    folder: Path,
    *,
    base_url: str,
    n_prompts: int,
    key_env: str | None = None,
    concurrency: int = 16,
    extra: str = "",
    name: str = "rel",
) -> Path:
    """A prompts file and a run file for an OpenAI-compatible loopback teacher."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "prompts.jsonl").open("w", encoding="utf-8") as fh:
        for i in range(n_prompts):
            label = ("refund", "shipping", "other")[i % 3]
            row = {"id": f"t{i}", "text": f"ticket {i}: order {1000 + i} is late", "label": label}
            fh.write(json.dumps(row) + "\n")
    key_line = f"  api_key_env: {key_env}\n" if key_env else ""
    text = (
        f"name: {name}\n"
        "run_dir: runs/{name}\n"
        "teacher:\n"
        "  provider: openai_compatible\n"
        f"  model: {FAULT_MODEL}\n"
        f"  base_url: {base_url}\n"
        f"{key_line}"
        "  price: {input_per_mtok: 1, output_per_mtok: 2}\n"
        "prompts: {path: prompts.jsonl, id_field: id, label_field: label}\n"
        "policy: {use: internal, acknowledge_unknown: 'reliability suite: loopback fake'}\n"
        "budget: {usd: 10}\n"
        f"harvest: {{concurrency: {concurrency}, max_tokens: 16, timeout_s: 5, max_retries: 3}}\n"
        f"{extra}"
    )
    path = folder / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
    )
    env.update(extra)
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "apidistill", *args]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli(*args),
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


# --------------------------------------------------------------------------- journal reads


def _read(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """One query on a journal, read-only, the connection closed at once (an idle connection
    left open keeps the WAL index pinned and can show a crashed writer's file as stale)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return conn.execute(sql).fetchall()


def journal_errors(path: Path) -> list[str]:
    """Every error message the journal holds for a request."""
    return [r[0] for r in _read(path, "SELECT error FROM requests WHERE error IS NOT NULL")]


def journal_counts(path: Path) -> dict[str, int]:
    """Rows per state (safe while nothing writes)."""
    return dict(_read(path, "SELECT state, COUNT(*) FROM requests GROUP BY state"))


def run_end_summaries(path: Path) -> list[dict[str, Any]]:
    """The summary each finished run noted in the journal (oldest first)."""
    rows = _read(path, "SELECT detail FROM events WHERE event='run_end' ORDER BY seq")
    return [json.loads(r[0]) for r in rows]


def integrity(path: Path) -> list[str]:
    return [r[0] for r in _read(path, "PRAGMA integrity_check")]


# --------------------------------------------------------------------------- tiny model


def save_tiny_llama(folder: Path, *, hidden: int = 32, layers: int = 2) -> Path:
    """A random-init Llama + the char tokenizer saved as a model folder (loads offline)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    folder.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def proc_rss_kb(pid: int) -> int | None:
    """Resident set size of a process from /proc (kB), or None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None
