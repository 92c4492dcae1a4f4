"""Overhead of ``apidistill proxy`` against calling the loopback teacher directly.

Arms, all in the same run against one loopback teacher (its own process, no added latency,
so the proxy's own cost is what differs): ``direct`` (client → teacher), ``capture_on``
(client → proxy → teacher, every exchange journaled, redacted and committed to SQLite before
the answer's end reaches the client) and ``capture_off`` (``capture.enabled: false``, no
budget: pure forwarding). Concurrency 1, 64 and 256 closed-loop clients (one aiohttp
session, a pool as large as the concurrency); arms are interleaved round by round so load
on this shared machine hits them alike. Requests are non-streaming chat completions with a
unique user turn each; a quarter are ``stream: true``.

Per arm and concurrency: p50 / p99 latency, throughput; overhead = proxy p50/p99 − direct
p50/p99 at the same concurrency; throughput ratio = proxy / direct. Goal (issue 22): p50
overhead ≤ 2 ms and p99 ≤ 10 ms at 256 concurrent, throughput ≥ 0.95 × direct. The client,
the proxy and the teacher share the machine's cores, so absolute numbers depend on it;
only the ratios of one run compare.

Usage: python -m benchmarks.proxy_overhead [--quick] [--requests N]
Writes out/proxy_overhead.json and out/proxy_overhead.md ($APIDISTILL_BENCH_OUT when set).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.common import fmt, md_table, out_dir, write_result

CONCURRENCY = (1, 64, 256)
ARMS = ("direct", "capture_on", "capture_off")
GOALS = {"p50_overhead_ms": 2.0, "p99_overhead_ms": 10.0, "throughput_ratio": 0.95}


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


async def _load(url: str, concurrency: int, n: int, tag: str) -> dict[str, Any]:
    """``n`` requests from ``concurrency`` closed-loop workers; latency of each."""
    lat: list[float] = []
    errors = 0
    counter = iter(range(n))
    conn = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def worker() -> None:
            nonlocal errors
            for i in counter:
                body = {"model": "gpt-4o-mini", "max_tokens": 8,
                        "messages": [{"role": "user", "content": f"{tag} request {i}"}]}  # fmt: skip
                if i % 4 == 3:
                    body["stream"] = True
                t0 = time.perf_counter()
                async with session.post(url, json=body,
                                        headers={"authorization": "Bearer sk-bench"}) as r:  # fmt: skip
                    await r.read()
                    if r.status != 200:
                        errors += 1
                lat.append((time.perf_counter() - t0) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {
        "requests": len(lat),
        "errors": errors,
        "p50_ms": round(_pct(lat, 0.5), 3),
        "p99_ms": round(_pct(lat, 0.99), 3),
        "mean_ms": round(statistics.fmean(lat), 3),
        "throughput_rps": round(len(lat) / wall, 1),
    }


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each number over the rounds."""
    keys = ("p50_ms", "p99_ms", "mean_ms", "throughput_rps")
    out = {k: round(statistics.median(r[k] for r in runs), 3) for k in keys}
    out["requests"] = sum(r["requests"] for r in runs)
    out["errors"] = sum(r["errors"] for r in runs)
    out["rounds"] = len(runs)
    return out


def run(requests: dict[int, int], rounds: int) -> dict[str, Any]:
    from apidistill.testing.proxy_process import ProxyProcess, write_proxy_config
    from apidistill.testing.proxy_teacher import ProxyTeacherProcess

    tmp = Path(tempfile.mkdtemp(prefix="proxy-bench-"))
    with ProxyTeacherProcess() as teacher:
        base = {
            "teacher": {"provider": "openai", "model": "gpt-4o-mini", "base_url": teacher.base_url,
                        "price": {"input_per_mtok": 0.15, "output_per_mtok": 0.6}},
            "policy": {"use": "internal"},
        }  # fmt: skip
        on = write_proxy_config(
            tmp / "on.yaml", {**base, "capture": {"path": str(tmp / "captures.sqlite")}}
        )
        off = write_proxy_config(tmp / "off.yaml", {**base, "capture": {"enabled": False}})
        with ProxyProcess(on, tmp / "on.log") as p_on, ProxyProcess(off, tmp / "off.log") as p_off:
            urls = {
                "direct": teacher.base_url + "/chat/completions",
                "capture_on": p_on.base_url + "/chat/completions",
                "capture_off": p_off.base_url + "/chat/completions",
            }
            for arm, url in urls.items():  # warm up pools and code paths
                asyncio.run(_load(url, 8, 64, f"warm-{arm}"))
            raw: dict[str, dict[int, list[dict[str, Any]]]] = {
                a: {c: [] for c in CONCURRENCY} for a in ARMS
            }
            for rnd in range(rounds):
                for c in CONCURRENCY:
                    order = ARMS if rnd % 2 == 0 else tuple(reversed(ARMS))
                    for arm in order:
                        raw[arm][c].append(
                            asyncio.run(_load(urls[arm], c, requests[c], f"{arm}-{rnd}-{c}"))
                        )
    results = {arm: {str(c): _merge(raw[arm][c]) for c in CONCURRENCY} for arm in ARMS}
    ratios: dict[str, dict[str, Any]] = {}
    for arm in ("capture_on", "capture_off"):
        for c in CONCURRENCY:
            d, p = results["direct"][str(c)], results[arm][str(c)]
            ratios.setdefault(arm, {})[str(c)] = {
                "p50_overhead_ms": round(p["p50_ms"] - d["p50_ms"], 3),
                "p99_overhead_ms": round(p["p99_ms"] - d["p99_ms"], 3),
                "throughput_ratio": round(p["throughput_rps"] / d["throughput_rps"], 3),
            }
    at256 = ratios["capture_on"]["256"]
    goals = {
        "p50_overhead_ms<=2": at256["p50_overhead_ms"] <= GOALS["p50_overhead_ms"],
        "p99_overhead_ms<=10": at256["p99_overhead_ms"] <= GOALS["p99_overhead_ms"],
        "throughput_ratio>=0.95": at256["throughput_ratio"] >= GOALS["throughput_ratio"],
    }
    return {"results": results, "overhead": ratios, "goals_at_256_capture_on": goals,
            "requests_per_round": {str(c): n for c, n in requests.items()}, "rounds": rounds}  # fmt: skip


def markdown(doc: dict[str, Any]) -> str:
    rows = []
    for arm in ARMS:
        for c in CONCURRENCY:
            r = doc["results"][arm][str(c)]
            o = doc["overhead"].get(arm, {}).get(str(c), {})
            rows.append([arm, c, fmt(r["p50_ms"]), fmt(r["p99_ms"]), fmt(r["throughput_rps"], 1),
                         fmt(o.get("p50_overhead_ms")), fmt(o.get("p99_overhead_ms")),
                         fmt(o.get("throughput_ratio"), 3), r["errors"]])  # fmt: skip
    head = ["arm", "clients", "p50 ms", "p99 ms", "req/s", "p50 overhead ms",
            "p99 overhead ms", "throughput × direct", "errors"]  # fmt: skip
    goals = ", ".join(
        f"{k}: {'met' if v else 'NOT met'}" for k, v in doc["goals_at_256_capture_on"].items()
    )
    m = doc.get("machine", {})
    return (
        f"# proxy overhead ({doc['mode']}, {doc['date']})\n\n"
        f"Machine: {m.get('cpu')}, {m.get('usable_cores')} usable cores, load "
        f"{m.get('load_avg_1_5_15')}. Client, proxy and teacher share these cores.\n\n"
        + md_table(head, rows)
        + f"\n\nGoals at 256 clients, capture on: {goals}.\n"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI size: a few hundred requests")
    ap.add_argument(
        "--requests", type=int, default=None, help="requests per arm per round at 64/256"
    )
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args(argv)
    started = time.perf_counter()
    n = args.requests or (256 if args.quick else 2048)
    requests = {1: max(20, n // 16), 64: n, 256: max(n, 512) if not args.quick else n}
    rounds = args.rounds or (1 if args.quick else 3)
    payload = run(requests, rounds)
    mode = "quick" if args.quick else "full"
    path = write_result("proxy_overhead", payload, mode=mode, started=started)
    doc = json.loads(path.read_text(encoding="utf-8"))
    md = out_dir() / "proxy_overhead.md"
    md.write_text(markdown(doc), encoding="utf-8")
    print(md.read_text(encoding="utf-8"))
    return doc


if __name__ == "__main__":
    main()
