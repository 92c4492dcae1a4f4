"""Run the benchmark suite: ``python -m benchmarks [--quick] [--only NAME ...]``.

Each benchmark runs in its own process (a crash, a leaked thread or torch's thread settings
in one cannot touch the next), writes ``out/<name>.json``, and its output goes to
``out/logs/<name>.log``. At the end ``out/suite.json`` records what ran, how long it took and
the machine's load, and RESULTS.md is regenerated from the JSON files.

``--quick`` (CI, ~3 minutes) runs the cheap benchmarks in their quick sizes; the ones that
load the model run in quick mode only when named with ``--only``. The full suite is sized
for ≤ 30 minutes on a 2-core machine (see README.md for what was scaled down).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import report
from benchmarks.common import (
    HERE,
    ROOT,
    machine_info,
    out_dir,
    peer_versions,
    versions,
)


@dataclass(frozen=True)
class Bench:
    """One benchmark script: how to run it full and quick, and whether quick runs it."""

    name: str  # module under benchmarks/ and its JSON name
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] = ("--quick",)
    in_quick: bool = True  # part of a plain --quick run
    full_timeout_s: int = 2400  # generous: a shared machine can run several times slower
    about: str = ""


SUITE: tuple[Bench, ...] = (
    Bench(
        "harvest_throughput",
        ("--no-results-md",),
        ("--quick", "--no-results-md"),
        about="apidistill engine vs raw aiohttp / httpx2 / openai SDK loops",
    ),
    Bench("peers_harvest", about="apidistill vs Curator vs distilabel vs raw loops"),
    Bench("resume_cost", about="kill -9 at 50% and resume: duplicates and time"),
    Bench(
        "storage",
        ("--prompts", "20", "--no-results-md"),
        ("--source", "zipf", "--prompts", "8", "--no-results-md"),
        about="bytes per token of the logprob store vs provider JSON",
    ),
    Bench(
        "kd_overhead",
        ("--steps", "8", "--warmup", "2"),
        ("--steps", "2", "--warmup", "1"),
        in_quick=False,
        about="logprob-KD vs sequence-KD vs TRL step time",
    ),
    Bench(
        "kd_memory",
        ("--no-results-md",),
        ("--quick", "--no-results-md"),
        in_quick=False,
        about="peak memory and step time at V = 151,936 / 262,144: logprob vs sequence KD",
    ),
    Bench(
        "serve_batching",
        ("--requests", "16"),
        in_quick=False,
        about="apidistill serve: batching and prefix cache on the demo prompt",
    ),
    Bench(
        "proxy_overhead",
        in_quick=False,
        about="apidistill proxy vs the teacher called directly at 1/64/256 clients, capture on/off",
    ),
    Bench(
        "teacher_harvest_backends",
        ("--no-results-md",),
        ("--quick", "--no-results-md"),
        in_quick=False,
        about="the demo's teacher harvest (top-20 logprobs) on llama.cpp vs the transformers engine",
    ),
    Bench(
        "kd_quality",
        in_quick=False,
        full_timeout_s=4800,
        about="held-out KL / agreement: base vs seq KD vs top-20 KD vs unbiased",
    ),
    Bench(
        "export_gguf",
        (),
        in_quick=False,
        about="GGUF f16 / q8_0 / q4_k_m: size and greedy agreement with the student",
    ),
)
BY_NAME = {b.name: b for b in SUITE}


def _argv(bench: Bench, quick: bool, folder: Path) -> list[str]:
    args = list(bench.quick if quick else bench.full)
    if bench.name == "storage":  # takes its output folder as an option
        args += ["--out", str(folder)]
    return args


def run_one(bench: Bench, quick: bool, folder: Path, timeout_s: int) -> dict:
    """Run one benchmark module in a child process; never raises for its failures."""
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", f"benchmarks.{bench.name}", *_argv(bench, quick, folder)]
    env = {**os.environ, "APIDISTILL_BENCH_OUT": str(folder), "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    print(f"== {bench.name} ({'quick' if quick else 'full'}): {bench.about}", flush=True)
    with (logs / f"{bench.name}.log").open("w", encoding="utf-8") as log:
        try:
            rc = subprocess.run(
                cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s
            ).returncode
            status = "ok" if rc == 0 else f"failed (exit {rc}; see out/logs/{bench.name}.log)"
        except subprocess.TimeoutExpired:
            status = f"timed out after {timeout_s} s"
    wall = time.perf_counter() - t0
    print(f"   {status}, {wall:.0f} s", flush=True)
    return {
        "mode": "quick" if quick else "full",
        "status": status,
        "wall_s": round(wall, 1),
        "command": " ".join(cmd[1:]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized run (~3 minutes)")
    ap.add_argument(
        "--only", nargs="+", metavar="NAME", choices=list(BY_NAME), help="run only these benchmarks"
    )
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    ap.add_argument(
        "--results",
        type=Path,
        default=HERE / "RESULTS.md",
        help="where to write the markdown (default benchmarks/RESULTS.md)",
    )
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="regenerate RESULTS.md from the JSON files without running anything",
    )
    ap.add_argument("--timeout", type=int, help="per-benchmark limit in seconds")
    args = ap.parse_args(argv)
    if args.list:
        for b in SUITE:
            quick = "quick" if b.in_quick else "quick only with --only"
            print(f"{b.name:20s} {b.about} [{quick}]")
        return 0
    folder = out_dir()
    if args.report_only:
        print(f"wrote {report.write(folder, args.results)}")
        return 0
    chosen = (
        [BY_NAME[n] for n in args.only]
        if args.only
        else [b for b in SUITE if b.in_quick or not args.quick]
    )
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_start = [round(x, 2) for x in os.getloadavg()]
    t0 = time.perf_counter()
    previous = {}
    if args.only:  # keep the record of benchmarks not re-run now
        old = folder / "suite.json"
        if old.is_file():
            previous = json.loads(old.read_text()).get("benchmarks", {})
    ran = {}
    for bench in chosen:
        limit = args.timeout or (1200 if args.quick else bench.full_timeout_s)
        ran[bench.name] = run_one(bench, args.quick, folder, limit)
    suite = {
        "benchmark": "suite",
        "mode": "quick" if args.quick else "full",
        "only": args.only,
        "started": started,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_s": round(time.perf_counter() - t0, 1),
        "load_start": load_start,
        "load_end": [round(x, 2) for x in os.getloadavg()],
        "machine": machine_info(),
        "versions": versions(),
        "peer_versions": peer_versions(),
        "benchmarks": {**previous, **{k: {**v, "started": started} for k, v in ran.items()}},
    }
    (folder / "suite.json").write_text(json.dumps(suite, indent=2), encoding="utf-8")
    path = report.write(folder, args.results)
    failed = [n for n, r in ran.items() if r["status"] != "ok"]
    print(
        f"suite: {len(ran) - len(failed)}/{len(ran)} ok in {suite['wall_s'] / 60:.1f} min; "
        f"wrote {path}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
