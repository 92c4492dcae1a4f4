"""Resume cost: kill -9 a harvest at ~50%, re-run it on the same cache, count what was paid twice.

For apidistill (``harvest_sync`` with its SQLite journal) and Curator (``curator.LLM`` with
its cache folder): one client process harvests N requests (64 in flight) from the loopback
server with 200 ms latency; when the server has answered half of them the process gets
SIGKILL; then the same command runs again on the same journal / cache to the end.

Measured: time to finish (the resume process, start to exit, and its harvest alone), and
**duplicate requests** from the server's own per-request counters (every receipt past the
first of a request; the server injects no faults here, so each one was billed). Next to
it, apidistill's own report on resume: how many requests it found with an unknown outcome
(sent, never answered in the journal) and how many it re-sent. HARVEST-NOTES explains why
the floor after kill -9 is the requests in flight, not zero, without provider help; the
``apidistill_store`` arm is that help (OpenAI ``store: true``, which the loopback server
implements: lost answers are listed by their metadata key and recovered, not re-sent).

Usage: python -m benchmarks.resume_cost [--quick] [--n 2000] [--rounds 2]
Writes out/resume_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, peer_versions, spread, write_result
from benchmarks.peers_harvest import interpreter, run_client

LATENCY_MS = 200.0
CONCURRENCY = 64
# arm -> (client arm, signal at 50%)
ARMS: dict[str, tuple[str, signal.Signals]] = {
    "apidistill": ("apidistill", signal.SIGKILL),
    "apidistill_no_resend": ("apidistill_no_resend", signal.SIGKILL),
    "apidistill_store": ("apidistill_store", signal.SIGKILL),
    "apidistill_sigterm": ("apidistill", signal.SIGTERM),
    "curator": ("curator", signal.SIGKILL),
}


def _kill_at_half(
    srv: Any, cmd: list[str], n: int, sig: signal.Signals, timeout_s: float
) -> dict[str, Any]:
    """Start ``cmd``; send it ``sig`` once the server has answered n/2 requests; wait."""
    with tempfile.TemporaryFile() as err:  # a pipe nobody reads would block a chatty client
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        t0 = time.perf_counter()
        answered = 0
        try:
            while time.perf_counter() - t0 < timeout_s:
                if proc.poll() is not None:
                    err.seek(0)
                    tail = err.read().decode(errors="replace")[-500:]
                    raise RuntimeError(
                        f"client ended before the kill (exit {proc.returncode}): {tail}"
                    )
                answered = srv.stats()["answered"]
                if answered >= n // 2:
                    break
                time.sleep(0.05)
            else:
                raise RuntimeError("the client never reached 50% before the timeout")
            stopped_at = time.perf_counter() - t0
            os.kill(proc.pid, sig)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
    time.sleep(LATENCY_MS / 1000 * 2)  # let the server finish what was in flight
    stats = srv.stats()
    return {
        "signal": sig.name,
        "signalled_after_s": round(stopped_at, 2),
        "answered_at_signal": answered,
        "received_by_server_before_resume": stats["received"],
        "answered_by_server_before_resume": stats["answered"],
    }


def expected_digests(n: int, tag: str) -> list[str]:
    """The server's names for this run's requests (model + rendered user turn), so probes a
    client sends on its own (Curator asks once per process) are not counted as duplicates."""
    from apidistill.testing.fault_server import request_digest
    from benchmarks.harvest_clients import MODEL, prompt_texts

    return [
        request_digest({"model": MODEL, "messages": [{"role": "user", "content": t}]})
        for t in prompt_texts(n, tag)
    ]


def one_round(srv: Any, arm: str, n: int, tag: str) -> dict[str, Any]:
    client, sig = ARMS[arm]
    py = interpreter(client)
    if py is None:
        return {"arm": arm, "skipped": "peers venv missing (see benchmarks/README.md)"}
    srv.reset()
    state = Path(tempfile.mkdtemp(prefix=f"resume-{arm}-"))
    cmd = [
        str(py),
        "-m",
        "benchmarks.harvest_clients",
        client,
        "--base-url",
        srv.base_url,
        "--n",
        str(n),
        "--concurrency",
        str(CONCURRENCY),
        "--tag",
        tag,
        "--state",
        str(state),
    ]
    first = _kill_at_half(srv, cmd, n, sig, timeout_s=120 + n / 5)
    t0 = time.perf_counter()
    resumed = run_client(client, srv.base_url, n, tag=tag, state=state)
    process_s = time.perf_counter() - t0
    if "wall_s" not in resumed:
        return {"arm": arm, "error": resumed.get("error", "resume failed"), **first}
    seen = srv.stats()["digests"]
    ours = [seen.get(d, {"received": 0, "billed": 0}) for d in expected_digests(n, tag)]
    report = resumed.get("report") or {}
    return {
        "arm": arm,
        **first,
        "resume_process_s": round(process_s, 2),
        "resume_harvest_s": resumed["wall_s"],
        "results_after_resume": resumed["ok"],
        "never_sent": sum(1 for d in ours if d["received"] == 0),
        "other_requests_seen": len(seen) - sum(1 for d in ours if d["received"]),
        "duplicate_requests": sum(max(0, d["received"] - 1) for d in ours),
        "duplicate_billed": sum(max(0, d["billed"] - 1) for d in ours),
        "own_report": {
            "outcome_unknown_found": report.get("unknown_found"),
            "left_in_flight_by_killed_process": report.get("crashed_found"),
            "resent_that_may_have_been_billed": report.get("resent"),
            "recovered_from_store": report.get("recovered"),
            "from_cache": report.get("cached"),
            "sent_this_run": report.get("done"),
        }
        if report
        else None,
    }


def summarize(runs: list[dict[str, Any]], n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        mine = [r for r in runs if r["arm"] == arm]
        good = [r for r in mine if "duplicate_requests" in r]
        if not good:
            out[arm] = {"not_run": mine[0].get("skipped") or mine[0].get("error", "unknown")}
            continue
        own = [r["own_report"] for r in good if r["own_report"]]
        out[arm] = {
            "duplicate_requests": spread([r["duplicate_requests"] for r in good], 0),
            "resume_process_s": spread([r["resume_process_s"] for r in good], 2),
            "resume_harvest_s": spread([r["resume_harvest_s"] for r in good], 2),
            "unanswered_after_resume": spread([n - r["results_after_resume"] for r in good], 0),
            "reported_outcome_unknown": spread([o["outcome_unknown_found"] or 0 for o in own], 0)
            if own
            else None,
            "reported_resent": spread([o["resent_that_may_have_been_billed"] or 0 for o in own], 0)
            if own
            else None,
            "reported_recovered": spread([o.get("recovered_from_store") or 0 for o in own], 0)
            if own
            else None,
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="400 requests, 1 round, 2 arms")
    ap.add_argument("--n", type=int)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), help="default: all; quick: 2")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    n = args.n or (400 if args.quick else 2000)
    rounds = args.rounds or (1 if args.quick else 2)
    arms = args.arms or (["apidistill", "curator"] if args.quick else list(ARMS))
    from apidistill.testing.fault_server import FaultServerProcess

    runs: list[dict[str, Any]] = []
    with FaultServerProcess(latency_ms=LATENCY_MS) as srv:
        for r in range(rounds):
            for arm in arms if r % 2 == 0 else reversed(arms):
                try:
                    res = one_round(srv, arm, n, tag=f"resume-r{r}-{arm}")
                except RuntimeError as exc:  # one arm failing must not lose the others
                    res = {"arm": arm, "error": str(exc)}
                res["round"] = r
                runs.append(res)
                print(
                    f"[r{r}] {arm}: duplicates {res.get('duplicate_requests')} "
                    f"{res.get('error') or res.get('skipped') or ''}",
                    flush=True,
                )
    payload = {
        "setting": {
            "requests": n,
            "concurrency": CONCURRENCY,
            "latency_ms": LATENCY_MS,
            "rounds": rounds,
            "kill": "SIGKILL once the server answered n/2",
        },
        "runs": runs,
        "arms": summarize(runs, n),
    }
    path = write_result(
        "resume_cost",
        payload,
        mode="quick" if args.quick else "full",
        started=started,
        extra_versions=peer_versions(),
    )
    print(json.dumps(payload["arms"], indent=2))
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
