"""Overhead of ``apidistill proxy`` against calling the loopback teacher directly.

Two loopback teachers (each its own process), each measured with three arms in the same run:
``instant`` answers at once, so the proxy's own CPU cost is what differs (client, proxy and
teacher compete for the same cores: this is the proxy's worst case); ``api_like`` answers
after a fixed ``--latency-ms`` (300 ms by default, stated in the JSON and markdown), as a real
teacher API does and as the issue's anchor (a Python gateway's 12 ms median against a fake
OpenAI endpoint with latency) measured. Arms: ``direct`` (client → teacher), ``capture_on``
(client → proxy → teacher, every exchange journaled, redacted and committed to SQLite before
the answer's end reaches the client) and ``capture_off`` (``capture.enabled: false``, no
budget: pure forwarding). Concurrency 1, 64 and 256 closed-loop clients (one aiohttp
session, a pool as large as the concurrency); arms are interleaved round by round so load
on this shared machine hits them alike. Requests are non-streaming chat completions with a
unique user turn each; a quarter are ``stream: true``.

Per teacher, arm and concurrency: p50 / p99 latency, throughput, and the proxy process's CPU
seconds per request (from /proc: far less sensitive to other load on the machine than wall
latency); overhead = proxy p50/p99 − direct p50/p99 at the same concurrency; throughput
ratio = proxy / direct. Goal (issue 22): p50 overhead ≤ 2 ms and p99 ≤ 10 ms at 256
concurrent, throughput ≥ 0.95 × direct; ``goals`` says which teacher and arm meets which.
The load average is recorded before and after: absolute numbers depend on the machine and
whatever else runs on it; only the ratios of one run compare.

Two layouts (``--layout``): ``shared`` (the default) runs the Python load generator, the
teacher and the proxy wherever the OS puts them on this machine's cores, so the proxy competes
with the fleet that loads it; ``isolated`` pins the proxy to the last CPU and the teacher and
the load generator, `wrk <https://github.com/wg/wrk>`_ (C, closed-loop connections, the same
requests through ``benchmarks/proxy_overhead.lua``), to the others — the proxy on a core of its
own as a gateway runs on its own host, and a load generator that costs ~1/20 of the Python
one's CPU per request. Each run says which it used.

Usage: python -m benchmarks.proxy_overhead [--quick] [--requests N] [--latency-ms MS]
       [--jitter F] [--layout shared|isolated] [--duration-s S]
Writes out/proxy_overhead.json and out/proxy_overhead.md ($APIDISTILL_BENCH_OUT when set).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.common import fmt, md_table, out_dir, write_result

CONCURRENCY = (1, 64, 256)
ARMS = ("direct", "capture_on", "capture_off")
GOALS = {"p50_overhead_ms": 2.0, "p99_overhead_ms": 10.0, "throughput_ratio": 0.95}
PROXY_ARMS = ("capture_on", "capture_off")


def _cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc; None elsewhere)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


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
                head = {"authorization": "Bearer sk-bench", "x-bench-seq": str(i)}
                async with session.post(url, json=body, headers=head) as r:
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


LUA = Path(__file__).with_name("proxy_overhead.lua")


@dataclass(frozen=True)
class Layout:
    """Where the processes run and what loads them (see the module docstring)."""

    name: str  # "shared" | "isolated"
    duration_s: float = 8.0  # per wrk measurement (isolated)
    proxy_cpus: frozenset[int] = frozenset()
    fleet_cpus: frozenset[int] = frozenset()  # teacher + load generator

    @classmethod
    def make(cls, name: str, duration_s: float) -> Layout:
        if name == "shared":
            return cls("shared")
        if shutil.which("wrk") is None:
            raise SystemExit(
                "--layout isolated needs wrk on PATH (Debian/Ubuntu: apt-get install wrk)"
            )
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit(f"--layout isolated needs 2 CPUs or more, this process has {cpus}")
        return cls("isolated", duration_s, frozenset(cpus[-1:]), frozenset(cpus[:-1]))

    def pin(self, pid: int | None, cpus: frozenset[int]) -> None:
        """Every thread of ``pid`` onto ``cpus`` (threads started later inherit it)."""
        if pid is None or not cpus:
            return
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(tid), cpus)

    def describe(self) -> dict[str, Any]:
        if self.name == "shared":
            return {"name": "shared", "load_generator": "aiohttp (Python, this process)"}
        version = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
        return {"name": "isolated",
                "load_generator": (version.stdout or version.stderr).split("[")[0].strip(),
                "duration_s": self.duration_s, "proxy_cpus": sorted(self.proxy_cpus),
                "teacher_and_load_generator_cpus": sorted(self.fleet_cpus)}  # fmt: skip


def _wrk(url: str, concurrency: int, duration_s: float, tag: str, cpus: frozenset[int]) -> dict:
    """One closed-loop wrk run (one thread, ``concurrency`` connections) pinned to ``cpus``."""
    cmd = ["taskset", "-c", ",".join(map(str, sorted(cpus))), "wrk", "-t1",
           f"-c{concurrency}", f"-d{duration_s:g}s", "--timeout", "30s", "-s", str(LUA), url]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "BENCH_TAG": tag})
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(
            f"wrk failed ({done.returncode}): {done.stdout[-500:]}{done.stderr[-500:]}"
        )
    w = json.loads(line.removeprefix("WRKJSON "))
    return {
        "requests": w["requests"],
        "errors": w["status_errors"] + w["socket_errors"],
        "p50_ms": round(w["p50_us"] / 1000, 3),
        "p99_ms": round(w["p99_us"] / 1000, 3),
        "mean_ms": round(w["mean_us"] / 1000, 3),
        "throughput_rps": round(w["requests"] / (w["duration_us"] / 1e6), 1),
    }


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each number over the rounds; CPU per request over all of them."""
    keys = ("p50_ms", "p99_ms", "mean_ms", "throughput_rps")
    out: dict[str, Any] = {k: round(statistics.median(r[k] for r in runs), 3) for k in keys}
    out["requests"] = sum(r["requests"] for r in runs)
    out["errors"] = sum(r["errors"] for r in runs)
    out["rounds"] = len(runs)
    cpu = [r["proxy_cpu_s"] for r in runs if r.get("proxy_cpu_s") is not None]
    out["proxy_cpu_ms_per_request"] = (
        round(1000 * sum(cpu) / out["requests"], 3) if len(cpu) == len(runs) else None
    )
    return out


def _measure(url: str, pid: int | None, c: int, n: int, tag: str, layout: Layout) -> dict[str, Any]:
    before = _cpu_s(pid)
    if layout.name == "isolated":
        got = _wrk(url, c, layout.duration_s, tag, layout.fleet_cpus)
    else:
        got = asyncio.run(_load(url, c, n, tag))
    after = _cpu_s(pid)
    got["proxy_cpu_s"] = None if before is None or after is None else after - before
    return got


def _teacher_arms(
    tmp: Path, teacher: Any, name: str, requests: dict[int, int], rounds: int, layout: Layout
) -> dict[str, Any]:
    """The three arms against one teacher, interleaved round by round."""
    from apidistill.testing.proxy_process import ProxyProcess, write_proxy_config

    base = {
        "teacher": {"provider": "openai", "model": "gpt-4o-mini", "base_url": teacher.base_url,
                    "price": {"input_per_mtok": 0.15, "output_per_mtok": 0.6}},
        "policy": {"use": "internal"},
    }  # fmt: skip
    on = write_proxy_config(
        tmp / f"{name}-on.yaml", {**base, "capture": {"path": str(tmp / f"{name}.sqlite")}}
    )
    off = write_proxy_config(tmp / f"{name}-off.yaml", {**base, "capture": {"enabled": False}})
    with (
        ProxyProcess(on, tmp / f"{name}-on.log") as p_on,
        ProxyProcess(off, tmp / f"{name}-off.log") as p_off,
    ):
        urls = {
            "direct": teacher.base_url + "/chat/completions",
            "capture_on": p_on.base_url + "/chat/completions",
            "capture_off": p_off.base_url + "/chat/completions",
        }
        pids = {
            "direct": None,
            "capture_on": p_on.proc.pid if p_on.proc else None,
            "capture_off": p_off.proc.pid if p_off.proc else None,
        }
        layout.pin(teacher.proc.pid if teacher.proc else None, layout.fleet_cpus)
        for arm in PROXY_ARMS:
            layout.pin(pids[arm], layout.proxy_cpus)
        for arm, url in urls.items():  # warm up pools and code paths
            asyncio.run(_load(url, 8, 64, f"warm-{arm}"))
        raw: dict[str, dict[int, list[dict[str, Any]]]] = {
            a: {c: [] for c in CONCURRENCY} for a in ARMS
        }
        for rnd in range(rounds):
            for c in CONCURRENCY:
                order = ARMS if rnd % 2 == 0 else tuple(reversed(ARMS))
                for arm in order:
                    tag = f"{name}-{arm}-{rnd}-{c}"
                    raw[arm][c].append(_measure(urls[arm], pids[arm], c, requests[c], tag, layout))
        started = p_on.log().splitlines()
    results = {arm: {str(c): _merge(raw[arm][c]) for c in CONCURRENCY} for arm in ARMS}
    overhead: dict[str, dict[str, Any]] = {}
    for arm in PROXY_ARMS:
        for c in CONCURRENCY:
            d, p = results["direct"][str(c)], results[arm][str(c)]
            overhead.setdefault(arm, {})[str(c)] = {
                "p50_overhead_ms": round(p["p50_ms"] - d["p50_ms"], 3),
                "p99_overhead_ms": round(p["p99_ms"] - d["p99_ms"], 3),
                "throughput_ratio": round(p["throughput_rps"] / d["throughput_rps"], 3),
            }
    goals = {
        arm: {
            "p50_overhead_ms<=2": overhead[arm]["256"]["p50_overhead_ms"]
            <= GOALS["p50_overhead_ms"],
            "p99_overhead_ms<=10": overhead[arm]["256"]["p99_overhead_ms"]
            <= GOALS["p99_overhead_ms"],
            "throughput_ratio>=0.95": overhead[arm]["256"]["throughput_ratio"]
            >= GOALS["throughput_ratio"],
        }
        for arm in PROXY_ARMS
    }
    runtime = next((ln.split(": ", 1)[1] for ln in started if "event loop" in ln), None)
    return {"results": results, "overhead": overhead, "goals_at_256": goals,
            "p50_overhead_1_client_ms": {a: overhead[a]["1"]["p50_overhead_ms"]
                                         for a in PROXY_ARMS},
            "proxy_runtime": runtime,
            "requests_per_round": {str(c): n for c, n in requests.items()}}  # fmt: skip


def run(
    requests: dict[int, int],
    api_requests: dict[int, int],
    rounds: int,
    latency_ms: float,
    jitter: float = 0.0,
    layout: Layout | None = None,
) -> dict[str, Any]:
    from apidistill.testing.proxy_teacher import ProxyTeacherProcess

    layout = layout or Layout("shared")
    if layout.name == "isolated":  # this process only warms up; the rest is wrk's
        os.sched_setaffinity(0, layout.fleet_cpus)
    tmp = Path(tempfile.mkdtemp(prefix="proxy-bench-"))
    load_before = _load_avg()
    teachers: dict[str, Any] = {}
    with ProxyTeacherProcess() as instant:
        teachers["instant"] = {"latency_ms": 0, **_teacher_arms(tmp, instant, "instant",
                                                                requests, rounds, layout)}  # fmt: skip
    with ProxyTeacherProcess(latency_ms=latency_ms, jitter=jitter) as slow:
        teachers["api_like"] = {"latency_ms": latency_ms, "jitter": jitter, **_teacher_arms(
            tmp, slow, "api_like", api_requests, rounds, layout)}  # fmt: skip
    return {"teachers": teachers, "rounds": rounds, "layout": layout.describe(),
            "load_avg_before": load_before, "load_avg_after": _load_avg()}  # fmt: skip


def _layout_line(layout: dict[str, Any]) -> str:
    if layout["name"] == "isolated":
        return (f"Layout **isolated**: the proxy pinned to CPU {layout['proxy_cpus']}, the teacher "
                f"and the load generator ({layout['load_generator']}, {layout['duration_s']:g} s "
                f"per measurement) to CPU {layout['teacher_and_load_generator_cpus']}.")  # fmt: skip
    return ("Layout **shared**: the Python load generator, the proxy and the teacher share "
            "these cores.")  # fmt: skip


def markdown(doc: dict[str, Any]) -> str:
    m = doc.get("machine", {})
    parts = [
        f"# proxy overhead ({doc['mode']}, {doc['date']})\n\n"
        f"Machine: {m.get('cpu')}, {m.get('usable_cores')} usable cores, load average "
        f"{doc.get('load_avg_before')} before and {doc.get('load_avg_after')} after the run. "
        + _layout_line(doc.get("layout") or {"name": "shared"})
        + " Other work on the machine moves the wall numbers (CPU per request much less).\n"
    ]
    head = ["arm", "clients", "p50 ms", "p99 ms", "req/s", "p50 overhead ms",
            "p99 overhead ms", "throughput × direct", "proxy CPU ms/req", "errors"]  # fmt: skip
    for name, t in doc["teachers"].items():
        rows = []
        for arm in ARMS:
            for c in CONCURRENCY:
                r = t["results"][arm][str(c)]
                o = t["overhead"].get(arm, {}).get(str(c), {})
                rows.append([arm, c, fmt(r["p50_ms"]), fmt(r["p99_ms"]),
                             fmt(r["throughput_rps"], 1), fmt(o.get("p50_overhead_ms")),
                             fmt(o.get("p99_overhead_ms")), fmt(o.get("throughput_ratio"), 3),
                             fmt(r.get("proxy_cpu_ms_per_request")), r["errors"]])  # fmt: skip
        goals = "; ".join(
            f"{arm}: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in g.items())
            for arm, g in t["goals_at_256"].items()
        )
        parts.append(
            f"\n## teacher `{name}` (answers after {t['latency_ms']} ms"
            + (f" ± {t['jitter']:.0%}, uniform" if t.get("jitter") else "")
            + "; proxy runs "
            f"{t.get('proxy_runtime')})\n\n" + md_table(head, rows)
            + f"\n\nGoals at 256 clients: {goals}.\n"
        )  # fmt: skip
    return "".join(parts)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI size: a few hundred requests")
    ap.add_argument(
        "--requests", type=int, default=None, help="requests per arm per round at 64/256"
    )
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument(
        "--latency-ms", type=float, default=300.0, help="the api_like teacher's answer delay"
    )
    ap.add_argument(
        "--jitter",
        type=float,
        default=0.0,
        help="spread of that delay, 0-1 (uniform ±, seeded): closed-loop clients against a "
        "fixed delay move in lockstep and reach the proxy in bursts of the whole fleet",
    )
    ap.add_argument(
        "--layout",
        choices=("shared", "isolated"),
        default="shared",
        help="shared: everything on every core, Python load generator; isolated: the proxy "
        "on a CPU of its own, the teacher and wrk on the others (needs wrk)",
    )
    ap.add_argument(
        "--duration-s", type=float, default=None, help="seconds per wrk measurement (isolated)"
    )
    args = ap.parse_args(argv)
    started = time.perf_counter()
    n = args.requests or (256 if args.quick else 2048)
    requests = {1: max(20, n // 16), 64: n, 256: max(n, 512) if not args.quick else n}
    # the api_like teacher: a whole wave of clients per latency, so fewer requests at 1 client
    api_requests = {1: max(5, n // 64), 64: n, 256: requests[256]}
    rounds = args.rounds or (1 if args.quick else 3)
    if not 0.0 <= args.jitter < 1.0:
        ap.error("--jitter must be in [0, 1)")
    layout = Layout.make(args.layout, args.duration_s or (2.0 if args.quick else 8.0))
    payload = run(requests, api_requests, rounds, args.latency_ms, args.jitter, layout)
    mode = "quick" if args.quick else "full"
    path = write_result("proxy_overhead", payload, mode=mode, started=started)
    doc = json.loads(path.read_text(encoding="utf-8"))
    md = out_dir() / "proxy_overhead.md"
    md.write_text(markdown(doc), encoding="utf-8")
    print(md.read_text(encoding="utf-8"))
    return doc


if __name__ == "__main__":
    main()
