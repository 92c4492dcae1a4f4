"""Teacher targets for the KD-quality benchmark: generated once with apidistill itself, cached.

The teacher is the demo's: SmolLM2-135M-Instruct with the prototype prompt (system
instruction + 16 few-shot turns, apidistill/demo_data/prototype_prompt.yaml) in front of each
ticket of apidistill/demo_data/tickets.jsonl. It runs behind ``apidistill serve`` (started with
:func:`apidistill.serve.launcher.launch_server`) and is harvested over HTTP by apidistill's
own ``harvest`` with top-20 logprobs, exactly as the demo pipeline does; records are built
by the pipeline's ``record_from_result``, so the student sees only the ticket.

Two target sets, both cached under ``out/kd_targets/`` (the harvest journal plus one JSONL
per set; a later run asks the server only for what is missing, and starts no server at all
when nothing is):

- ``greedy``: temperature 0, for sequence KD, top-k KD and every held-out record;
- ``sampled``: temperature 1 with a per-ticket seed, for the unbiased sampled-token target,
  which is only unbiased for a teacher that sampled at T = 1.

Tickets: the last ``TEST_TICKETS`` of the file are the held-out set; training draws from
the ones before them.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, out_dir

DEMO = ROOT / "examples" / "demo"
MODEL = "smollm2-135m-instruct"
TEST_TICKETS = 64
MAX_TOKENS = 40
TOP_K = 20


def _demo_task() -> Any:
    """examples/demo/task.py (prompt layouts and the field scorer); not a package."""
    if str(DEMO) not in sys.path:
        sys.path.insert(0, str(DEMO))
    import task

    return task


DEMO_FILES = ("prototype_prompt.yaml", "tickets.jsonl", "student_prompt.txt")
# The generated inputs ship inside the package (apidistill/demo_data); the rest is examples/demo.
_PACKAGED = ("prototype_prompt.yaml", "tickets.jsonl")


@functools.cache
def _snapshot() -> dict[str, bytes]:
    """The demo's files, read once per process: if they are edited while a run is going,
    every target, prompt and fingerprint of this run still comes from one version."""
    from apidistill.resources import demo_data_dir

    return {
        name: ((demo_data_dir() if name in _PACKAGED else DEMO) / name).read_bytes()
        for name in DEMO_FILES
    }


def load_tickets() -> list[dict[str, Any]]:
    lines = _snapshot()["tickets.jsonl"].decode("utf-8").splitlines()
    return [json.loads(x) for x in lines if x.strip()]


def prototype_prompt() -> dict[str, Any]:
    import yaml

    return yaml.safe_load(_snapshot()["prototype_prompt.yaml"].decode("utf-8"))


def instruction() -> str:
    """The student's one-line instruction (examples/demo/student_prompt.txt)."""
    return _snapshot()["student_prompt.txt"].decode("utf-8").strip()


def split_tickets(pool_size: int, test_size: int = TEST_TICKETS) -> tuple[list, list]:
    """``(train pool, held-out)``: the held-out set is fixed whatever the pool size."""
    tickets = load_tickets()
    held_out = tickets[-test_size:]
    pool = tickets[: len(tickets) - test_size][:pool_size]
    return pool, held_out


def fingerprint() -> str:
    """Changes whenever the prompt, the tickets or the generation settings change."""
    h = hashlib.sha256()
    for name in DEMO_FILES:
        h.update(_snapshot()[name])
    h.update(f"{MODEL}|{MAX_TOKENS}|{TOP_K}".encode())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    path = out_dir() / "kd_targets" / fingerprint()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _requests(tickets: list[dict[str, Any]], kind: str) -> list[Any]:
    from apidistill.records import GenerationParams, Message, TeacherRequest

    task = _demo_task()
    prompt, student_line = prototype_prompt(), instruction()
    out = []
    for t in tickets:
        seed = int(hashlib.sha256(t["id"].encode()).hexdigest()[:8], 16)  # stable per ticket
        params = GenerationParams(
            max_tokens=MAX_TOKENS,
            temperature=0.0 if kind == "greedy" else 1.0,
            seed=None if kind == "greedy" else seed,
            logprobs=True,
            top_logprobs=TOP_K,
        )
        student = task.student_messages(t["text"], student_line)[1:]  # the ticket only
        out.append(
            TeacherRequest(
                messages=[Message(**m) for m in task.teacher_messages(t["text"], prompt)],
                params=params,
                prompt_id=f"{t['id']}-{kind}",
                metadata={  # the keys pipeline.stages.record_from_result reads
                    "prompt_id": f"{t['id']}-{kind}",
                    "student_messages": student,
                    "gold": t.get("gold"),
                    "label": t.get("label"),
                    "ticket_id": t["id"],
                    "target_kind": kind,
                },
            )
        )
    return out


async def _harvest(requests: list[Any], base_url: str, journal: Path) -> list[Any]:
    from apidistill.config import HarvestConfig, TeacherConfig
    from apidistill.harvest import harvest
    from apidistill.pipeline.stages import record_from_result
    from apidistill.teachers import make_teacher

    cfg = TeacherConfig(
        provider="openai_compatible",
        profile="apidistill",
        model=MODEL,
        tokenizer=MODEL,
        base_url=base_url,
    )
    teacher = make_teacher(cfg, base_url=base_url, timeout_s=600)
    records, failed = [], []
    try:
        async for res in harvest(
            requests,
            teacher=teacher,
            journal=journal,
            config=HarvestConfig(concurrency=16, timeout_s=600),
            progress=False,
        ):
            if res.completion is None:
                failed.append(f"{res.request.prompt_id}: {res.reason} {res.error}")
            else:
                records.append(record_from_result(res, None, cfg))
    finally:
        await teacher.aclose()
    if failed:
        raise RuntimeError(f"{len(failed)} teacher requests failed, e.g. {failed[0]}")
    return records


def _read(path: Path) -> dict[str, Any]:
    from apidistill.records import Record

    if not path.is_file():
        return {}
    recs = [Record.model_validate_json(x) for x in path.read_text().splitlines() if x.strip()]
    return {r.metadata["ticket_id"]: r for r in recs}


def targets(tickets: list[dict[str, Any]], kind: str) -> tuple[list[Any], dict[str, Any]]:
    """Records (in ticket order) of teacher targets ``kind`` for ``tickets``, plus how they
    were obtained: from the cache, or harvested now (seconds, requests)."""
    folder = cache_dir()
    path = folder / f"{kind}.jsonl"
    have = _read(path)
    missing = [t for t in tickets if t["id"] not in have]
    info: dict[str, Any] = {"cached": len(tickets) - len(missing), "harvested": len(missing)}
    if missing:
        from apidistill.serve.launcher import launch_server

        t0 = time.perf_counter()
        with launch_server(MODEL, max_batch_size=16, startup_timeout=600) as srv:
            new = asyncio.run(
                _harvest(_requests(missing, kind), srv.base_url, folder / "journal.sqlite")
            )
        info["harvest_s"] = round(time.perf_counter() - t0, 1)
        with path.open("a", encoding="utf-8") as fh:
            for r in new:
                fh.write(r.model_dump_json() + "\n")
        have.update({r.metadata["ticket_id"]: r for r in new})
    return [have[t["id"]] for t in tickets], info
