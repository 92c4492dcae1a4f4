"""Harvest throughput side by side: apidistill vs Curator vs distilabel vs raw loops.

Every client harvests the same N requests from the same loopback OpenAI-compatible server
(``apidistill.testing.fault_server``: 200 ms fixed latency, one process) with 64 requests in
flight, each client in its own process (``benchmarks/harvest_clients.py``), arms shuffled
within each round so background load on this shared machine hits all arms alike. Curator,
distilabel and plain httpx run under the separate peers venv (see benchmarks/README.md).

Why the raw loops run here too, and not only in ``harvest_throughput.py``: the targets are
ratios (apidistill ≥ 1.0× Curator and ≥ 0.95× the fastest raw loop), and ratios are only
worth something when both sides are measured in the same rounds.

Per run: req/s (answers / wall), % of ideal (concurrency / latency), CPU s per 1k requests
(the client's own process and its workers, imports excluded), peak RSS of the client's
process tree (sampled every 100 ms), and the server's counters (received, answered,
duplicates). Variants: ``clean`` and ``faults10`` (10% of requests answered 429 or 500,
then retried by each client's own policy).

Usage: python -m benchmarks.peers_harvest [--quick] [--n 2000] [--rounds 3] [--fault-rounds 1]
Writes out/peers_harvest.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, peer_versions, peers_python, spread, write_result

LATENCY_MS = 200.0
CONCURRENCY = 64
# Every round: the arms the targets compare. distilabel (3-4x slower than the rest here, so
# its spread decides nothing) and the informative rows run in the first clean round only.
TARGET_ARMS = ("apidistill", "raw_aiohttp", "raw_httpx2", "curator")
CORE_ARMS = (*TARGET_ARMS, "distilabel")
EXTRA_ARMS = ("distilabel", "apidistill_httpx2", "raw_httpx")  # clean variant, first round only
PEER_ARMS = frozenset({"curator", "distilabel", "raw_httpx"})


class _TreeRss:
    """Peak resident memory of a process and all its descendants, sampled in a thread."""

    def __init__(self, pid: int, every_s: float = 0.1) -> None:
        self.peak_mb = 0.0
        self._pid, self._every = pid, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            import psutil
        except ImportError:
            return
        try:
            root = psutil.Process(self._pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        total += p.memory_info().rss
            except psutil.Error:
                return
            self.peak_mb = max(self.peak_mb, total / 1024**2)
            self._stop.wait(self._every)


def interpreter(arm: str) -> Path | None:
    """Which Python runs ``arm`` (``None``: its venv is missing on this machine)."""
    return peers_python() if arm in PEER_ARMS else Path(sys.executable)


def run_client(
    arm: str,
    base_url: str,
    n: int,
    *,
    tag: str,
    state: Path | None = None,
    concurrency: int = CONCURRENCY,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Run one client process to the end; its RESULT line plus the tree's peak RSS."""
    py = interpreter(arm)
    if py is None:
        return {"arm": arm, "skipped": "peers venv missing (see benchmarks/README.md)"}
    cmd = [
        str(py),
        "-m",
        "benchmarks.harvest_clients",
        arm,
        "--base-url",
        base_url,
        "--n",
        str(n),
        "--concurrency",
        str(concurrency),
        "--tag",
        tag,
    ]
    if state is not None:
        cmd += ["--state", str(state)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    with _TreeRss(proc.pid) as rss:
        try:
            out, err = proc.communicate(timeout=timeout_s or 120 + n / 5)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            return {"arm": arm, "error": f"timed out; stderr tail: {err[-600:]}"}
    line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        return {"arm": arm, "error": f"exit {proc.returncode}; stderr tail: {err[-600:]}"}
    result = json.loads(line[len("RESULT ") :])
    result["peak_rss_tree_mb"] = round(rss.peak_mb, 1) or result.get("peak_rss_self_mb")
    return result


def server_counts(stats: dict[str, Any]) -> dict[str, int]:
    """Received / answered / billed requests and answered duplicates, from the server."""
    digests = stats["digests"].values()
    return {
        "received": stats["received"],
        "answered": stats["answered"],
        "billed": stats["billed"],
        "duplicate_answers": sum(max(0, d["answered"] - 1) for d in digests),
    }


def _measure(srv: Any, arm: str, n: int, tag: str) -> dict[str, Any]:
    srv.reset()
    res = run_client(arm, srv.base_url, n, tag=tag)
    if "wall_s" in res:
        res["server"] = server_counts(srv.stats())
        res["req_per_s"] = round(res["ok"] / res["wall_s"], 2)
        res["cpu_s_per_1k"] = round(res["cpu_s"] / n * 1000, 3)
    res.pop("report", None)
    return res


def summarize(runs: list[dict[str, Any]], ideal: float) -> dict[str, Any]:
    """Per arm: min/median/max of req/s, % of ideal, CPU s per 1k, peak RSS; or why not run."""
    out: dict[str, Any] = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        mine = [r for r in runs if r["arm"] == arm]
        good = [r for r in mine if "req_per_s" in r]
        if not good:
            out[arm] = {"not_run": mine[0].get("skipped") or mine[0].get("error", "unknown")}
            continue
        rps = spread([r["req_per_s"] for r in good], 2)
        out[arm] = {
            "req_per_s": rps,
            "pct_ideal": spread([100 * r["req_per_s"] / ideal for r in good], 1),
            "cpu_s_per_1k": spread([r["cpu_s_per_1k"] for r in good], 3),
            "peak_rss_mb": spread([r["peak_rss_tree_mb"] for r in good], 1),
            "ok_min": min(r["ok"] for r in good),
            "duplicate_answers_max": max(r["server"]["duplicate_answers"] for r in good),
            "failed_runs": len(mine) - len(good),
        }
    return out


def ratios(summary: dict[str, Any]) -> dict[str, float | None]:
    """Target ratios from medians of the same rounds (``None`` when an arm did not run)."""

    def med(arm: str, key: str) -> float | None:
        a = summary.get(arm, {})
        return a[key]["median"] if key in a else None

    def div(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    api = med("apidistill", "req_per_s")
    raw = [v for v in (med("raw_aiohttp", "req_per_s"), med("raw_httpx2", "req_per_s")) if v]
    return {
        "throughput_vs_curator": div(api, med("curator", "req_per_s")),
        "throughput_vs_distilabel": div(api, med("distilabel", "req_per_s")),
        "throughput_vs_fastest_raw": div(api, max(raw) if raw else None),
        "throughput_vs_raw_aiohttp": div(api, med("raw_aiohttp", "req_per_s")),
        "throughput_vs_raw_httpx2": div(api, med("raw_httpx2", "req_per_s")),
        "cpu_per_request_vs_curator": div(
            med("apidistill", "cpu_s_per_1k"), med("curator", "cpu_s_per_1k")
        ),
    }


def run_variant(
    srv: Any,
    name: str,
    arms: list[str],
    n: int,
    rounds: int,
    seed: int,
    extras: tuple[str, ...] = (),
) -> dict:
    """``rounds`` rounds of ``arms`` in a shuffled order; ``extras`` join the first round only
    (informative rows that no target depends on)."""
    rng = random.Random(seed)
    runs: list[dict[str, Any]] = []
    for r in range(rounds):
        order = list(arms) + (list(extras) if r == 0 else [])
        rng.shuffle(order)
        for arm in order:
            res = _measure(srv, arm, n, tag=f"{name}-r{r}-{arm}")
            res["round"] = r
            runs.append(res)
            brief = res.get("req_per_s", res.get("error") or res.get("skipped"))
            print(f"[{name} r{r}] {arm}: {brief}", flush=True)
    ideal = CONCURRENCY / (LATENCY_MS / 1000)
    summary = summarize(runs, ideal)
    return {"runs": runs, "arms": summary, "ratios": ratios(summary), "ideal_req_per_s": ideal}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="400 requests, 1 clean round")
    ap.add_argument("--n", type=int, help="requests per run (default 2000; quick 400)")
    ap.add_argument("--rounds", type=int, help="rounds of the clean variant (default 3)")
    ap.add_argument("--fault-rounds", type=int, help="rounds of the 10%%-faults variant")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    started = time.perf_counter()
    n = args.n or (400 if args.quick else 2000)
    rounds = args.rounds or (1 if args.quick else 3)
    fault_rounds = args.fault_rounds if args.fault_rounds is not None else 0 if args.quick else 1
    from apidistill.testing.fault_server import FaultServerProcess

    variants: dict[str, Any] = {}
    with FaultServerProcess(latency_ms=LATENCY_MS, seed=args.seed) as srv:
        arms, extras = (CORE_ARMS, ()) if args.quick else (TARGET_ARMS, EXTRA_ARMS)
        variants["clean"] = run_variant(srv, "clean", list(arms), n, rounds, args.seed, extras)
        if fault_rounds:
            srv.configure(fault_rate=0.1, faults={"429": 1.0, "500": 1.0})
            variants["faults10"] = run_variant(
                srv, "faults10", list(CORE_ARMS), n, fault_rounds, args.seed + 1
            )
    payload = {
        "setting": {
            "requests": n,
            "concurrency": CONCURRENCY,
            "latency_ms": LATENCY_MS,
            "rounds": rounds,
            "fault_rounds": fault_rounds,
            "fault_mix": "10%: 429 or 500",
            "server": "apidistill.testing.fault_server (aiohttp, one process)",
        },
        "variants": variants,
    }
    path = write_result(
        "peers_harvest",
        payload,
        mode="quick" if args.quick else "full",
        seeds=[args.seed],
        started=started,
        extra_versions=peer_versions(),
    )
    print(json.dumps({k: v["ratios"] for k, v in variants.items()}, indent=2))
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
