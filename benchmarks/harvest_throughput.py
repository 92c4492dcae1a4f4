"""Harvest throughput: the apidistill engine against the fastest raw loops, same run.

A loopback OpenAI-compatible server (``apidistill.testing.fault_server``, one process)
answers every request after a fixed 200 ms; 2,000 requests (``--quick``: 500) at 64 in
flight, so the ideal is 64 / 0.2 s = 320 req/s. Every client runs in its own process, arms
shuffled within each round so background load on this shared machine hits all alike.

Arms: ``raw_aiohttp`` and ``raw_httpx2`` (hand-written loops, from
``benchmarks/harvest_clients.py``), ``openai_sdk`` (an ``AsyncOpenAI`` loop, the SDK's own
retries), ``apidistill`` (``harvest_sync`` with its durable journal: an fsync per group
commit), ``apidistill_nofsync`` (``durable=False``: crash-safe, not power-loss-safe) and
``apidistill_httpx2`` (the openai SDK on httpx2 instead of the default aiohttp transport). Variants: ``clean`` and
``faults10`` (10% of requests answered 429 or 500, retried by each client's own policy).

Per arm: req/s (answers / wall), % of ideal, the ratio to raw httpx2 in the same round, CPU
s per 1k requests, peak RSS, and the server's own counters (lost = asked − answered,
duplicated = prompts answered twice).

Usage: python -m benchmarks.harvest_throughput [--quick] [--n 2000] [--rounds 1]
Writes benchmarks/out/harvest_throughput.json and appends a row to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import HERE, ROOT, fmt, spread, write_result

LATENCY_MS = 200.0
CONCURRENCY = 64
ARMS = (
    "raw_aiohttp", "raw_httpx2", "openai_sdk", "apidistill", "apidistill_nofsync",
    "apidistill_httpx2",
)  # fmt: skip
FAULT_ARMS = ("raw_httpx2", "openai_sdk", "apidistill")
DELEGATED = frozenset({"raw_aiohttp", "raw_httpx2", "apidistill_httpx2"})
BASELINE = "raw_httpx2"


# ----------------------------------------------------------------- one client


def _run_openai_sdk(base_url: str, texts: list[str], concurrency: int) -> dict[str, Any]:
    import openai

    from benchmarks.harvest_clients import MAX_TOKENS, MODEL

    async def main() -> int:
        client = openai.AsyncOpenAI(api_key="sk-loopback", base_url=base_url, max_retries=10)
        it, ok = iter(texts), 0

        async def worker() -> None:
            nonlocal ok
            for text in it:
                try:
                    await client.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": text}],
                        max_tokens=MAX_TOKENS, temperature=0.0,
                    )  # fmt: skip
                except openai.OpenAIError:
                    continue
                ok += 1

        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            await client.close()
        return ok

    return {"ok": asyncio.run(main())}


def _run_apidistill(
    base_url: str, texts: list[str], concurrency: int, durable: bool
) -> dict[str, Any]:
    from apidistill.config import HarvestConfig
    from apidistill.harvest import HarvestOptions, harvest_sync
    from apidistill.records import GenerationParams, Message, TeacherRequest
    from apidistill.teachers.openai import OpenAITeacher
    from benchmarks.harvest_clients import MAX_TOKENS, MODEL

    params = GenerationParams(max_tokens=MAX_TOKENS, temperature=0.0)
    reqs = [
        TeacherRequest(messages=[Message(role="user", content=t)], params=params) for t in texts
    ]
    teacher = OpenAITeacher(MODEL, base_url=base_url)
    journal = Path(tempfile.mkdtemp(prefix="bench-harvest-")) / "journal.sqlite"
    t0 = time.perf_counter()
    summary = harvest_sync(reqs, teacher=teacher, journal=journal, config=HarvestConfig(concurrency=concurrency),
                           progress=False, options=HarvestOptions(durable=durable))  # fmt: skip
    return {"ok": summary.done + summary.cached, "engine_wall_s": time.perf_counter() - t0,
            "report": summary.as_dict()}  # fmt: skip


def client_main(args: argparse.Namespace) -> None:
    """Child process: run one arm, print ``RESULT {json}`` (imports are not timed)."""
    from benchmarks.harvest_clients import prompt_texts

    texts = prompt_texts(args.n, args.tag)
    if args.arm == "openai_sdk":
        import openai  # noqa: F401  (import outside the timed part)

        run = lambda: _run_openai_sdk(args.base_url, texts, args.concurrency)  # noqa: E731
    else:
        import apidistill.harvest
        import apidistill.teachers.openai  # noqa: F401

        durable = args.arm == "apidistill"
        run = lambda: _run_apidistill(args.base_url, texts, args.concurrency, durable)  # noqa: E731
    import resource

    cpu0, t0 = os.times(), time.perf_counter()
    result = run()
    wall, cpu1 = time.perf_counter() - t0, os.times()
    out = {
        "arm": args.arm,
        "n": args.n,
        "wall_s": round(wall, 4),
        "cpu_s": round(sum(cpu1[i] - cpu0[i] for i in range(4)), 4),
        "peak_rss_self_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **result,
    }
    print("RESULT " + json.dumps(out, default=str), flush=True)


# ----------------------------------------------------------------- orchestration


def _spawn(arm: str, base_url: str, n: int, tag: str) -> dict[str, Any]:
    if arm in DELEGATED:
        cmd = [sys.executable, "-m", "benchmarks.harvest_clients", arm]
    else:
        cmd = [sys.executable, "-m", "benchmarks.harvest_throughput", "--client", arm]
    cmd += ["--base-url", base_url, "--n", str(n), "--concurrency", str(CONCURRENCY), "--tag", tag]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=1800)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"arm": arm, "error": (done.stderr or done.stdout)[-2000:]}


def _measure(srv: Any, arm: str, n: int, tag: str) -> dict[str, Any]:
    srv.reset()
    res = _spawn(arm, srv.base_url, n, tag)
    stats = srv.stats()
    answered = [d["answered"] for d in stats["digests"].values()]
    res["server"] = {
        "received": stats["received"],
        "answered": stats["answered"],
        "lost": n - sum(1 for a in answered if a),
        "duplicated": sum(1 for a in answered if a > 1),
    }
    if "error" not in res:
        ideal = CONCURRENCY / (LATENCY_MS / 1000)
        res["req_per_s"] = res["ok"] / res["wall_s"]
        res["pct_ideal"] = 100 * res["req_per_s"] / ideal
        res["cpu_s_per_1k"] = 1000 * res["cpu_s"] / n
    return res


def run_benchmark(n: int, rounds: int, arms: tuple[str, ...], seed: int) -> dict[str, Any]:
    from apidistill.testing.fault_server import FaultServerProcess

    variants = {
        "clean": ({"fault_rate": 0.0}, arms),
        "faults10": (
            {"fault_rate": 0.1, "faults": {"429": 1, "500": 1}, "retry_after_ms": 20},
            tuple(a for a in arms if a in FAULT_ARMS),
        ),
    }
    rng = random.Random(seed)
    out: dict[str, Any] = {}
    with FaultServerProcess(latency_ms=LATENCY_MS) as srv:
        for variant, (settings, variant_arms) in variants.items():
            runs: dict[str, list[dict[str, Any]]] = {a: [] for a in variant_arms}
            for r in range(rounds):
                srv.configure(latency_ms=LATENCY_MS, seed=seed + r, **settings)
                order = list(variant_arms)
                rng.shuffle(order)
                for arm in order:
                    res = _measure(srv, arm, n, f"{variant}-{r}-{arm}")
                    print(f"[{variant} round {r + 1}] {arm}: "
                          f"{fmt(res.get('req_per_s'), 1)} req/s, "
                          f"{fmt(res.get('cpu_s_per_1k'))} CPU s/1k, server {res['server']}"
                          + (f" ERROR {res['error'][-300:]}" if "error" in res else ""),
                          flush=True)  # fmt: skip
                    runs[arm].append(res)
            out[variant] = _summarize(runs)
    return out


def _summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    base = [r.get("req_per_s") for r in runs.get(BASELINE, [])]
    table: dict[str, Any] = {}
    for arm, rs in runs.items():
        good = [r for r in rs if "error" not in r]
        ratios = [
            r["req_per_s"] / b for r, b in zip(rs, base, strict=False)
            if "error" not in r and b
        ]  # fmt: skip
        table[arm] = {
            "req_per_s": spread([r["req_per_s"] for r in good], 1),
            "pct_ideal": spread([r["pct_ideal"] for r in good], 1),
            "vs_raw_httpx2": spread(ratios, 3),
            "cpu_s_per_1k": spread([r["cpu_s_per_1k"] for r in good], 3),
            "peak_rss_mb": spread([r["peak_rss_self_mb"] for r in good], 1),
            "lost": sum(r["server"]["lost"] for r in rs),
            "duplicated": sum(r["server"]["duplicated"] for r in rs),
            "errors": [r["error"][-500:] for r in rs if "error" in r],
            "runs": rs,
        }
    return table


def _median(cell: dict[str, Any]) -> float | None:
    return cell.get("median") if cell else None


def markdown(results: dict[str, Any], n: int, rounds: int, load: list[float]) -> str:
    head = "| arm | variant | req/s | % of ideal | × raw httpx2 | CPU s / 1k | peak RSS MB | lost / dup |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for variant, table in results.items():
        for arm, row in table.items():
            lines.append(
                f"| {arm} | {variant} | {fmt(_median(row['req_per_s']), 1)} "
                f"| {fmt(_median(row['pct_ideal']), 0)} | {fmt(_median(row['vs_raw_httpx2']), 2)} "
                f"| {fmt(_median(row['cpu_s_per_1k']))} | {fmt(_median(row['peak_rss_mb']), 0)} "
                f"| {row['lost']} / {row['duplicated']} |"
            )
    note = (f"{n} requests, concurrency {CONCURRENCY}, {LATENCY_MS:.0f} ms loopback latency "
            f"(ideal 320 req/s), median of {rounds} round(s), load average {load}")  # fmt: skip
    return note + "\n\n" + "\n".join(lines)


def append_results_md(results: dict[str, Any], n: int, rounds: int, load: list[float]) -> None:
    """One row in the shared table of benchmarks/RESULTS.md (created if missing)."""
    path = HERE / "RESULTS.md"
    if not path.is_file():
        path.write_text(
            "# Benchmark results\n\nRows are appended by the scripts in benchmarks/; "
            "numbers are measured on the machine named in each row's notes.\n\n"
            "| date | benchmark | setting | result | notes |\n|---|---|---|---|---|\n",
            encoding="utf-8",
        )
    cells = []
    for variant, table in results.items():
        for arm, row in table.items():
            cells.append(
                f"{variant} {arm}: {fmt(_median(row['req_per_s']), 0)} req/s "
                f"({fmt(_median(row['pct_ideal']), 0)}%, {fmt(_median(row['vs_raw_httpx2']), 2)}× "
                f"raw httpx2), {fmt(_median(row['cpu_s_per_1k']))} CPU s/1k, "
                f"{fmt(_median(row['peak_rss_mb']), 0)} MB, lost/dup {row['lost']}/{row['duplicated']}"
            )
    row = (
        f"| {datetime.now(UTC).date()} | harvest_throughput.py | {n} requests, concurrency "
        f"{CONCURRENCY}, {LATENCY_MS:.0f} ms loopback, median of {rounds} | {'<br>'.join(cells)} "
        f"| {os.cpu_count()} cores, load average {load} (shared machine: compare ratios "
        f"within the row) |\n"
    )
    with path.open("a", encoding="utf-8") as fh:
        fh.write(row)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="500 requests, one round")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-results-md", action="store_true")
    # child-process mode
    ap.add_argument("--client", choices=[a for a in ARMS if a not in DELEGATED])
    ap.add_argument("--base-url")
    ap.add_argument("--concurrency", type=int, default=CONCURRENCY)
    ap.add_argument("--tag", default="bench")
    args = ap.parse_args(argv)
    if args.client:
        args.arm = args.client
        client_main(args)
        return {}
    n = 500 if args.quick else args.n
    rounds = 1 if args.quick else args.rounds
    arms = tuple(a for a in args.arms.split(",") if a)
    unknown = set(arms) - set(ARMS)
    if unknown:
        ap.error(f"unknown arms {sorted(unknown)}; known: {', '.join(ARMS)}")
    started = time.perf_counter()
    load0 = [round(x, 2) for x in os.getloadavg()]
    results = run_benchmark(n, rounds, arms, args.seed)
    load = [load0[0], round(os.getloadavg()[0], 2)]
    md = markdown(results, n, rounds, load)
    print(md)
    path = write_result(
        "harvest_throughput",
        {"n": n, "rounds": rounds, "concurrency": CONCURRENCY, "latency_ms": LATENCY_MS,
         "ideal_req_per_s": CONCURRENCY / (LATENCY_MS / 1000), "load_avg_start_end": load,
         "results": results, "table_md": md},
        mode="quick" if args.quick else "full", seeds=[args.seed], started=started,
    )  # fmt: skip
    if not args.no_results_md:
        append_results_md(results, n, rounds, load)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
