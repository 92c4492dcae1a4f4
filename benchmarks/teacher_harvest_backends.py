"""The demo's teacher harvest on llama.cpp against today's transformers engine (issue #23 item 3:
"the teacher harvest at least as fast as today's engine with its prefix cache").

Both arms run the same harvest through the project's front door (``apidistill.harvest``): the
demo's run file (its 1,580-token prototype prompt + a ticket, greedy, 40 new tokens, top-20
logprobs, 16 concurrent requests) against ``apidistill serve`` started as the demo starts its
teacher (``teacher.launch``), once with ``--backend transformers`` (the batching engine with
its prefix KV cache) and once with ``--backend llamacpp`` (the same embedded SmolLM2 as GGUF,
llama.cpp's prompt cache on). Each arm harvests into a fresh journal, so nothing is answered
from a cache; the server's start (model load) is outside the timed part. Arms alternate
(transformers, llama.cpp, then the reverse) so load changes on a shared machine hit both.

Reported per arm: answers/s, output tokens/s, share of answered tokens with 20 alternatives
(the harvest needs them), and the ratio llama.cpp / transformers (goal ≥ 1.0). Also how often
the two greedy answers agree: a quantized llama.cpp model and fp32 transformers are different
numerics, so they need not (docs/export.md).

    python -m benchmarks.teacher_harvest_backends --quick     # 8 tickets, one round
    python -m benchmarks.teacher_harvest_backends             # 48 tickets, two rounds

Writes out/teacher_harvest_backends.json and .md ($APIDISTILL_BENCH_OUT when set).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import fmt, md_table, out_dir, write_result
from benchmarks.serve_batching import append_results_md

NAME = "teacher_harvest_backends"
BACKENDS = ("transformers", "llamacpp")
GOAL = 1.0  # llama.cpp answers/s ≥ transformers answers/s


def _demo(n: int, run_dir: Path) -> tuple[Any, list[Any]]:
    from apidistill.config import load_config
    from apidistill.pipeline.teacher_requests import build_requests
    from apidistill.resources import demo_run_file

    cfg = load_config(demo_run_file())
    cfg.run_dir = str(run_dir)
    return cfg, build_requests(cfg)[:n]


async def _harvest(cfg: Any, requests: list[Any], base_url: str, journal: Path) -> list[Any]:
    from apidistill.config import TeacherConfig
    from apidistill.harvest.api import harvest

    teacher = TeacherConfig(
        provider="openai_compatible", base_url=base_url, model=cfg.teacher.model,
        price={"input_per_mtok": 0, "output_per_mtok": 0},
    )  # fmt: skip
    out = [r async for r in harvest(requests, teacher=teacher, journal=journal,
                                     config=cfg.harvest, progress=False)]  # fmt: skip
    failed = [r for r in out if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} request(s) failed, first: {failed[0].error}")
    return out


def run_arm(backend: str, cfg: Any, requests: list[Any], work: Path, threads: int) -> dict:
    from apidistill.serve.launcher import launch_server

    s = cfg.teacher.launch
    t0 = time.perf_counter()
    with launch_server(s.model, max_batch_size=s.max_batch_size, backend=backend,
                       served_model_name=cfg.teacher.model, threads=threads) as srv:  # fmt: skip
        start_s = time.perf_counter() - t0
        journal = work / f"{backend}-{time.monotonic_ns()}.sqlite"
        t1 = time.perf_counter()
        results = asyncio.run(_harvest(cfg, requests, srv.base_url, journal))
        wall = time.perf_counter() - t1
    # the journal key includes the teacher's address, which differs between the two servers:
    # answers are matched on the request itself
    done = sorted(results, key=lambda r: r.request.model_dump_json())
    out_tokens = sum(r.completion.usage.output_tokens or 0 for r in done)
    toks = [t for r in done for t in (r.completion.logprobs or [])]
    return {
        "backend": backend,
        "server_start_s": round(start_s, 2),
        "harvest_s": round(wall, 2),
        "answers_per_s": round(len(done) / wall, 3),
        "output_tokens_per_s": round(out_tokens / wall, 2),
        "output_tokens": out_tokens,
        "top20_share": round(sum(len(t.top) >= 20 for t in toks) / max(1, len(toks)), 4),
        "answers": {r.request.model_dump_json(): r.completion.text for r in done},
    }


def run(n: int, rounds: int, threads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="thb-") as tmp:
        work = Path(tmp)
        cfg, requests = _demo(n, work / "run")
        arms: dict[str, list[dict[str, Any]]] = {b: [] for b in BACKENDS}
        for rnd in range(rounds):
            for backend in BACKENDS if rnd % 2 == 0 else BACKENDS[::-1]:
                arms[backend].append(run_arm(backend, cfg, requests, work, threads))
    per: dict[str, dict[str, Any]] = {}
    for b, runs in arms.items():
        per[b] = {
            "answers_per_s": round(statistics.median(r["answers_per_s"] for r in runs), 3),
            "output_tokens_per_s": round(statistics.median(r["output_tokens_per_s"] for r in runs), 2),
            "harvest_s": [r["harvest_s"] for r in runs],
            "server_start_s": [r["server_start_s"] for r in runs],
            "top20_share": min(r["top20_share"] for r in runs),
        }  # fmt: skip
    a, b = arms["transformers"][0]["answers"], arms["llamacpp"][0]["answers"]
    agree = sum(a[k].strip() == b.get(k, "").strip() for k in a) / max(1, len(a))
    ratio = per["llamacpp"]["answers_per_s"] / per["transformers"]["answers_per_s"]
    return {
        "settings": {
            "tickets": n,
            "rounds": rounds,
            "threads": threads,
            "concurrency": cfg.harvest.concurrency,
            "max_tokens": cfg.harvest.max_tokens,
            "top_logprobs": cfg.harvest.top_logprobs,
            "temperature": cfg.harvest.temperature,
        },
        "arms": per,
        "ratio_llamacpp_vs_transformers": round(ratio, 3),
        "goal": GOAL,
        "goal_met": ratio >= GOAL,
        "greedy_agreement": round(agree, 4),
        "answers_compared": len(a),
    }


def markdown(doc: dict[str, Any]) -> str:
    s, arms = doc["settings"], doc["arms"]
    rows = [
        [b, fmt(arms[b]["answers_per_s"], 3), fmt(arms[b]["output_tokens_per_s"], 1),
         ", ".join(fmt(x, 1) for x in arms[b]["harvest_s"]), fmt(arms[b]["top20_share"], 3)]
        for b in BACKENDS
    ]  # fmt: skip
    return (
        f"# Teacher harvest: llama.cpp vs transformers ({doc['mode']})\n\n"
        f"The demo's harvest, {s['tickets']} tickets × {s['rounds']} round(s), "
        f"concurrency {s['concurrency']}, {s['max_tokens']} new tokens, top-{s['top_logprobs']} "
        f"logprobs, {s['threads']} thread(s); load average "
        f"{doc['machine'].get('load_avg_1_5_15')}.\n\n"
        + md_table(["backend", "answers/s", "output tok/s", "harvest s", "top-20 share"], rows)
        + f"\n\nllama.cpp / transformers answers/s: **{doc['ratio_llamacpp_vs_transformers']}×** "
        f"(goal ≥ {GOAL}: {'met' if doc['goal_met'] else 'not met'}); greedy answers equal on "
        f"{doc['greedy_agreement']:.0%} of tickets.\n"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 tickets, one round")
    ap.add_argument("--tickets", type=int, help="tickets per arm (default 48, quick 8)")
    ap.add_argument("--rounds", type=int, help="rounds (default 2, quick 1)")
    ap.add_argument("--threads", type=int, default=2, help="engine threads (both arms)")
    ap.add_argument("--no-results-md", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    n = args.tickets or (8 if args.quick else 48)
    rounds = args.rounds or (1 if args.quick else 2)
    payload = run(n, rounds, args.threads)
    mode = "quick" if args.quick else "full"
    path = write_result(NAME, payload, mode=mode, started=started)
    import json

    doc = json.loads(path.read_text(encoding="utf-8"))
    (out_dir() / f"{NAME}.md").write_text(markdown(doc), encoding="utf-8")
    print(markdown(doc))
    if not args.no_results_md:
        append_results_md(results_row(doc))
    return doc


def results_row(doc: dict[str, Any]) -> str:
    """One row of RESULTS.md's appendix."""
    s, arms = doc["settings"], doc["arms"]
    setting = (
        f"the demo's harvest, {s['tickets']} tickets × {s['rounds']} rounds, concurrency "
        f"{s['concurrency']}, {s['max_tokens']} new tokens, top-{s['top_logprobs']}, greedy, "
        f"{s['threads']} thread(s)"
    )
    result = (
        f"transformers {arms['transformers']['answers_per_s']} answers/s, llama.cpp "
        f"{arms['llamacpp']['answers_per_s']} answers/s: "
        f"{doc['ratio_llamacpp_vs_transformers']}× (goal ≥ {GOAL}: "
        f"{'met' if doc['goal_met'] else 'not met'}); greedy answers equal "
        f"{doc['greedy_agreement']:.0%}"
    )
    load = doc["machine"].get("load_avg_1_5_15")
    return f"| {doc['date'][:10]} | {NAME}.py | {setting} | {result} | load average {load} |"


if __name__ == "__main__":
    main()
